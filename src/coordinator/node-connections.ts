// One HTTP/2 session per node (SPEC §10.1): mTLS with the coordinator's certificate, keepalive pings so a dead peer
// is noticed even while a stream is quiet, and a fresh connection on the next call after one is lost (connect-node's
// session manager reconnects on demand). Also turns an RPC failure into a NodeFailure for the per-node table.

import { readFile } from "node:fs/promises";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { kindOfCode } from "../api/errors.js";
import { invalid } from "../core/errors.js";
import { createMtlsClientOptions } from "../platform/pki/tls-context.js";
import type { FleetCredentials, FleetNode } from "./fleet-file.js";
import type { NodeFailure, NodeFailureKind } from "./node-failure.js";

/** The PEM texts of the fleet's credentials. */
export interface FleetTlsMaterial {
  caPem: string;
  certPem: string;
  keyPem: string;
}

export interface KeepaliveOptions {
  /** Ping after this long without a frame from the peer, ms. Default 10000. */
  pingIntervalMs: number;
  /** Close the connection when a ping is not answered within this, ms. Default 5000. */
  pingTimeoutMs: number;
}

export const DEFAULT_KEEPALIVE: KeepaliveOptions = { pingIntervalMs: 10_000, pingTimeoutMs: 5_000 };

export async function readFleetCredentials(credentials: FleetCredentials): Promise<FleetTlsMaterial> {
  const read = async (path: string, field: string) => {
    try {
      return await readFile(path, "utf8");
    } catch (e) {
      throw invalid([{ field, rule: `must name a readable PEM file (${(e as NodeJS.ErrnoException).code ?? String(e)}: ${path})` }]);
    }
  };
  const [caPem, certPem, keyPem] = await Promise.all([
    read(credentials.ca, "credentials.ca"),
    read(credentials.cert, "credentials.cert"),
    read(credentials.key, "credentials.key"),
  ]);
  return { caPem, certPem, keyPem };
}

export class NodeConnections {
  private readonly sessions = new Map<string, { manager: Http2SessionManager; transport: Transport }>();

  constructor(
    private readonly tls: FleetTlsMaterial,
    private readonly keepalive: KeepaliveOptions = DEFAULT_KEEPALIVE,
  ) {}

  /** The node's transport; its session is opened on the first call and reopened after it is lost. */
  transport(node: FleetNode): Transport {
    let entry = this.sessions.get(node.name);
    if (entry === undefined) {
      const authority = node.address;
      const baseUrl = `https://${authority}`;
      const nodeOptions = createMtlsClientOptions({ ...this.tls, servername: node.host });
      const manager = new Http2SessionManager(baseUrl, { pingIntervalMs: this.keepalive.pingIntervalMs, pingTimeoutMs: this.keepalive.pingTimeoutMs, pingIdleConnection: true }, nodeOptions);
      entry = { manager, transport: createGrpcTransport({ baseUrl, sessionManager: manager }) };
      this.sessions.set(node.name, entry);
    }
    return entry.transport;
  }

  /** Drops the node's session (after it failed), so the next call connects afresh. */
  reset(node: FleetNode): void {
    const entry = this.sessions.get(node.name);
    if (entry === undefined) return;
    this.sessions.delete(node.name);
    entry.manager.abort();
  }

  /** Ends every session so that the process can exit. */
  close(): void {
    for (const { manager } of this.sessions.values()) manager.abort();
    this.sessions.clear();
  }
}

/** A node's refusal keeps the domain kind; these codes are the coordinator's own outcomes instead. */
const FLEET_KIND_OF_CODE: Partial<Record<Code, NodeFailureKind>> = {
  [Code.DeadlineExceeded]: "timeout",
  [Code.Canceled]: "cancelled",
  [Code.Unimplemented]: "unimplemented",
};

/** A failed call to an agent as a NodeFailure: connection failures and Unavailable answers are `unavailable`. */
export function classifyRpcFailure(error: unknown): NodeFailure {
  if (!(error instanceof ConnectError)) return { kind: "internal", message: error instanceof Error ? error.message : String(error) };
  const cause: unknown = error.cause;
  const nodeCode = cause instanceof Error ? (cause as NodeJS.ErrnoException).code : undefined;
  if (typeof nodeCode === "string") return { kind: "unavailable", message: `connection failed: ${(cause as Error).message} (${nodeCode})` };
  const domainKind = kindOfCode(error.code);
  const kind = FLEET_KIND_OF_CODE[error.code] ?? (domainKind === undefined || domainKind === "terminal" ? "internal" : domainKind);
  return { kind, message: error.rawMessage };
}
