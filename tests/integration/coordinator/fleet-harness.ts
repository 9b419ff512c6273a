// Real `mvm agent serve` processes on loopback for the coordinator tests, each with its own data root and port,
// all with certificates from `mvm agent certs` under one CA (the first node's, imported by the others), and the
// coordinator's certificate from `mvm agent certs issue --identity coordinator --server`. No VM is ever started:
// records are created through the API.

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import tls from "node:tls";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InstanceService } from "../../../gen/mvm/v1/instance_service_pb.js";
import { PoolService } from "../../../gen/mvm/v1/pool_service_pb.js";
import { TenantService } from "../../../gen/mvm/v1/tenant_service_pb.js";
import { createMtlsClientOptions } from "../../../src/platform/pki/tls-context.js";
import { REPO_ROOT } from "../../helpers/mvm-cli.js";

export const BIN = join(REPO_ROOT, "bin/mvm");

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The CLI as a child process, asynchronously (agents in other processes must keep answering meanwhile). */
export function mvm(args: string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<CliRun> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...options.env } });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 60_000);
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function mustRun(args: string[]): Promise<string> {
  const r = await mvm(args);
  if (r.code !== 0) throw new Error(`mvm ${args.join(" ")}: exit ${r.code}: ${r.stderr}`);
  return r.stdout;
}

/** Runs `work` over `items` with at most `limit` at once. */
export async function inParallel<T>(items: readonly T[], limit: number, work: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        await work(items[i] as T, i);
      }
    }),
  );
}

export interface AgentProcess {
  name: string;
  dataDir: string;
  port: number;
  child: ChildProcess | null;
}

export interface Fleet {
  root: string;
  agents: AgentProcess[];
  /** PEM paths of the coordinator's certificate (client and server). */
  coordinator: { ca: string; cert: string; key: string };
  /** An mTLS transport to an agent with the coordinator's certificate. */
  transport(agent: AgentProcess): Transport;
  /** Writes a fleet file naming `agents` (plus extra raw entries) and returns its path. */
  fleetFile(name: string, agents: readonly AgentProcess[], extra?: Array<{ name: string; address: string }>): string;
  start(agent: AgentProcess): Promise<void>;
  kill(agent: AgentProcess): Promise<void>;
  stop(): Promise<void>;
}

const SERVING = /serving mTLS on 127\.0\.0\.1:(\d+)/;

export async function startFleet(count: number): Promise<Fleet> {
  const root = mkdtempSync(join(tmpdir(), "mvm-coordinator-"));
  const agents: AgentProcess[] = Array.from({ length: count }, (_, i) => ({ name: `node-${String(i).padStart(2, "0")}`, dataDir: join(root, `agent-${i}`), port: 0, child: null }));
  const first = agents[0] as AgentProcess;
  await mustRun(["--data-dir", first.dataDir, "agent", "certs", "init"]);
  const caCert = join(first.dataDir, "certs/ca.pem");
  const caKey = join(first.dataDir, "certs/ca-key.pem");
  const coordDir = join(root, "coordinator");
  await mustRun(["--data-dir", first.dataDir, "agent", "certs", "issue", "--identity", "coordinator", "--server", "--san", "127.0.0.1", "--out", coordDir]);
  await inParallel(agents.slice(1), 4, async (a) => {
    await mustRun(["--data-dir", a.dataDir, "agent", "certs", "init", "--ca-cert", caCert, "--ca-key", caKey]);
  });
  const coordinator = { ca: join(coordDir, "ca.pem"), cert: join(coordDir, "coordinator.pem"), key: join(coordDir, "coordinator-key.pem") };
  const clientTls = createMtlsClientOptions({ caPem: readFileSync(coordinator.ca, "utf8"), certPem: readFileSync(coordinator.cert, "utf8"), keyPem: readFileSync(coordinator.key, "utf8"), servername: "127.0.0.1" });
  const transports = new Map<string, Transport>();

  function start(agent: AgentProcess): Promise<void> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [BIN, "--data-dir", agent.dataDir, "agent", "serve", "--listen", `127.0.0.1:${agent.port}`, "--metrics-listen", "none", "--socket", "none", "--shutdown-grace-ms", "200"], {
        stdio: ["ignore", "ignore", "pipe"],
      });
      agent.child = child;
      let stderr = "";
      const timer = setTimeout(() => reject(new Error(`${agent.name} did not start: ${stderr}`)), 60_000);
      child.stderr!.setEncoding("utf8").on("data", (c: string) => {
        stderr += c;
        const m = SERVING.exec(stderr);
        if (m && agent.port === 0) agent.port = Number(m[1]);
        if (m) {
          clearTimeout(timer);
          resolve();
        }
        if (stderr.length > 100_000) stderr = stderr.slice(-10_000);
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`${agent.name} exited ${code}: ${stderr}`));
      });
    });
  }

  async function kill(agent: AgentProcess): Promise<void> {
    const child = agent.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
    agent.child = null;
  }

  const fleet: Fleet = {
    root,
    agents,
    coordinator,
    transport(agent) {
      let t = transports.get(agent.name);
      if (!t) {
        t = createGrpcTransport({ baseUrl: `https://127.0.0.1:${agent.port}`, nodeOptions: clientTls });
        transports.set(agent.name, t);
      }
      return t;
    },
    fleetFile(name, selected, extra = []) {
      const path = join(root, `${name}.yaml`);
      const nodes = [...selected.map((a) => ({ name: a.name, address: `127.0.0.1:${a.port}`, labels: { index: a.name.slice(5) } })), ...extra];
      writeFileSync(path, JSON.stringify({ credentials: { ca: "coordinator/ca.pem", cert: "coordinator/coordinator.pem", key: "coordinator/coordinator-key.pem" }, nodes }));
      return path;
    },
    start,
    kill,
    async stop() {
      await Promise.all(agents.map((a) => kill(a)));
      rmSync(root, { recursive: true, force: true });
    },
  };
  try {
    await inParallel(agents, 8, (a) => start(a));
  } catch (e) {
    await fleet.stop();
    throw e;
  }
  return fleet;
}

export const POOL_SPEC = { image: { source: { case: "debian" as const, value: { suite: "bookworm" } } }, resources: { vcpus: 1, memMib: 256 } };

/** Tenant `acme`, pool `web` and one instance on the agent; returns the instance ID. */
export async function seedAgent(transport: Transport): Promise<string> {
  await createClient(TenantService, transport).createTenant({ tenantId: "acme" });
  await createClient(PoolService, transport).createPool({ pool: { tenantId: "acme", poolId: "web" }, spec: POOL_SPEC });
  return createInstance(transport);
}

export async function createInstance(transport: Transport): Promise<string> {
  const res = await createClient(InstanceService, transport).createInstance({ pool: { tenantId: "acme", poolId: "web" } });
  return res.instance!.instanceId;
}

/** A loopback TLS server that completes the handshake and then never says anything (an agent that hangs). */
export function startSilentServer(pems: { cert: string; key: string; ca: string }): Promise<{ port: number; openSockets: () => number; close: () => Promise<void> }> {
  const sockets = new Set<tls.TLSSocket>();
  const server = tls.createServer({ cert: readFileSync(pems.cert), key: readFileSync(pems.key), ca: readFileSync(pems.ca), requestCert: true, ALPNProtocols: ["h2"] }, (socket) => {
    sockets.add(socket);
    socket.on("error", () => undefined);
    // Read (and drop) what the client sends, so that its close is noticed.
    socket.resume();
    socket.once("close", () => sockets.delete(socket));
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        port: (server.address() as { port: number }).port,
        openSockets: () => sockets.size,
        close: () =>
          new Promise<void>((r) => {
            for (const s of sockets) s.destroy();
            server.close(() => r());
          }),
      }),
    ),
  );
}
