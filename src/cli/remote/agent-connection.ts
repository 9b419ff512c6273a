// How the CLI reaches a node agent (SPEC §8.1): `--node HOST:PORT` over mTLS with the caller's certificate, else the
// local agent's Unix socket under the data root when an agent answers on it. Commands that only make sense against
// a running agent (`instance watch`) fail with one clear line when there is none.

import { readFile } from "node:fs/promises";
import { lstat } from "node:fs/promises";
import net from "node:net";
import { join } from "node:path";
import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { Argv } from "yargs";
import { invalid, MvmError, type FieldViolation } from "../../core/errors.js";
import { createMtlsClientOptions } from "../../platform/pki/tls-context.js";
import { resolveDataRoot } from "../../runtime/store/data-root.js";
import { SOCKET_NAME } from "../commands/agent-serve.js";

const SOCKET_PROBE_TIMEOUT_MS = 1_000;
export const NO_AGENT_MESSAGE = "no agent: start mvm agent serve, or pass --node";

/** The flags every agent-backed command takes. */
export interface AgentConnectionFlags {
  dataDir?: string;
  node?: string;
  ca?: string;
  cert?: string;
  key?: string;
}

export interface AgentConnection {
  transport: Transport;
  /** What the user would call it: `HOST:PORT` or the socket path. */
  target: string;
  /** Ends the HTTP/2 session, so that the process can exit. */
  close(): void;
}

export function withAgentConnectionOptions<T>(y: Argv<T>): Argv<T & Omit<AgentConnectionFlags, "dataDir">> {
  return y
    .option("node", { type: "string", describe: "agent to talk to, HOST:PORT over mTLS (default: the local agent's socket)" })
    .option("ca", { type: "string", describe: "with --node: CA certificate (PEM) the agent's certificate must chain to (default $MVM_CA)" })
    .option("cert", { type: "string", describe: "with --node: client certificate (PEM) (default $MVM_CERT)" })
    .option("key", { type: "string", describe: "with --node: client private key (PEM) (default $MVM_KEY)" }) as unknown as Argv<
    T & Omit<AgentConnectionFlags, "dataDir">
  >;
}

/** `host:port` or `[v6]:port`, with an explicit host and a port of 1-65535. */
export function parseNodeAddress(value: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  const host = m ? (m[1] ?? m[2] ?? "") : "";
  if (!m || port < 1 || port > 65535 || (m[1] !== undefined && net.isIP(host) !== 6)) {
    throw invalid([{ field: "--node", rule: `must be HOST:PORT or [IPV6]:PORT with a port of 1-65535 (got ${JSON.stringify(value)})` }]);
  }
  return { host, port };
}

async function readPem(path: string, field: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (e) {
    throw invalid([{ field, rule: `must name a readable PEM file (${(e as NodeJS.ErrnoException).code ?? String(e)}: ${path})` }]);
  }
}

function sessionTransport(baseUrl: string, nodeOptions: ConstructorParameters<typeof Http2SessionManager>[2]): AgentConnection & { baseUrl: string } {
  const sessionManager = new Http2SessionManager(baseUrl, {}, nodeOptions);
  return {
    baseUrl,
    transport: createGrpcTransport({ baseUrl, sessionManager }),
    target: baseUrl,
    close: () => sessionManager.abort(),
  };
}

async function connectRemote(flags: AgentConnectionFlags, env: NodeJS.ProcessEnv): Promise<AgentConnection> {
  const { host, port } = parseNodeAddress(flags.node as string);
  const paths = { ca: flags.ca ?? env.MVM_CA, cert: flags.cert ?? env.MVM_CERT, key: flags.key ?? env.MVM_KEY };
  const missing: FieldViolation[] = [];
  for (const [name, value] of Object.entries(paths)) {
    if (value === undefined || value === "") missing.push({ field: `--${name}`, rule: `is required with --node (or set $MVM_${name.toUpperCase()})` });
  }
  if (missing.length > 0) throw invalid(missing);
  const [caPem, certPem, keyPem] = await Promise.all([
    readPem(paths.ca as string, "--ca"),
    readPem(paths.cert as string, "--cert"),
    readPem(paths.key as string, "--key"),
  ]);
  const tls = createMtlsClientOptions({ caPem, certPem, keyPem, servername: host });
  const authority = net.isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
  const connection = sessionTransport(`https://${authority}`, tls);
  return { ...connection, target: authority };
}

/** True when something accepts connections on the socket (a live agent); false for a missing or stale socket. */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(path);
    const done = (answer: boolean) => {
      probe.destroy();
      resolve(answer);
    };
    probe.setTimeout(SOCKET_PROBE_TIMEOUT_MS, () => done(false));
    probe.once("connect", () => done(true));
    probe.once("error", () => done(false));
  });
}

async function connectLocal(flags: AgentConnectionFlags, env: NodeJS.ProcessEnv): Promise<AgentConnection> {
  const socketPath = join(resolveDataRoot({ dataDir: flags.dataDir, env }), SOCKET_NAME);
  const isSocket = await lstat(socketPath).then(
    (st) => st.isSocket(),
    () => false,
  );
  if (!isSocket || !(await socketAnswers(socketPath))) throw new MvmError("unavailable", `${NO_AGENT_MESSAGE} (nothing answers on ${socketPath})`);
  const connection = sessionTransport("http://localhost", { createConnection: () => net.connect(socketPath) });
  return { ...connection, target: socketPath };
}

/** The agent named by `--node`, else the local one; throws an `unavailable` MvmError when there is none. */
export function connectToAgent(flags: AgentConnectionFlags, env: NodeJS.ProcessEnv): Promise<AgentConnection> {
  const named = flags.node !== undefined && flags.node !== "";
  if (!named && (flags.ca !== undefined || flags.cert !== undefined || flags.key !== undefined)) {
    return Promise.reject(invalid([{ field: "--node", rule: "is required when --ca, --cert or --key is given" }]));
  }
  return named ? connectRemote(flags, env) : connectLocal(flags, env);
}
