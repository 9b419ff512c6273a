// The composition root of `mvm coordinator serve` (SPEC §10.1): reads the fleet file, opens one HTTP/2 session per
// node, keeps a merged watch of every node running (reconnecting with backoff, resuming from each node's last
// token), and serves FleetService over mTLS with the same certificate it presents to the agents (issue it with
// `mvm agent certs issue --identity coordinator --server --san <host>`). Built unstarted, so tests bind port 0.

import { X509Certificate } from "node:crypto";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import type { TLSSocket } from "node:tls";
import { createContextValues, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { failedPrecondition } from "../core/errors.js";
import { certificateUris, identityFromPeerCertificate, type Identity } from "../platform/pki/identity.js";
import { createMtlsServerOptions } from "../platform/pki/tls-context.js";
import { FleetService } from "../../gen/mvm/v1/fleet_service_pb.js";
import type { FanOutOptions } from "./fan-out.js";
import { FleetEventLog } from "./fleet-event-log.js";
import type { Fleet } from "./fleet-file.js";
import { FLEET_CALLER_KEY, fleetService } from "./fleet-service.js";
import { DEFAULT_KEEPALIVE, NodeConnections, readFleetCredentials, type KeepaliveOptions } from "./node-connections.js";
import { watchFleet } from "./node-watch.js";
import { FleetWatchMerger } from "./watch-merge.js";

export interface CoordinatorServiceOptions {
  fleet: Fleet;
  /** Where FleetService listens; port 0 picks a free one. */
  listen: { host: string; port: number };
  /** Concurrency, deadline and retries of pushes and wake searches. Default: the fan-out defaults. */
  fanOut?: Omit<FanOutOptions, "classify" | "signal">;
  /** Heartbeat asked of each agent's watch, ms. Default 5000. */
  nodeHeartbeatMs?: number;
  keepalive?: KeepaliveOptions;
  /** Told about every node going up or down (the log). */
  onNodeStatus?: (node: string, health: string, reason: string) => void;
}

export interface CoordinatorService {
  start(): Promise<{ host: string; port: number }>;
  /** Ends every stream and session. Idempotent. */
  stop(): Promise<void>;
  readonly merger: FleetWatchMerger;
  readonly events: FleetEventLog;
}

/** The trust domain of the coordinator's own certificate (`spiffe://<td>/coordinator`); callers must share it. */
export function trustDomainOfCertificate(certPem: string): string {
  const uri = certificateUris(new X509Certificate(certPem).raw).find((u) => u.toLowerCase().startsWith("spiffe://"));
  const domain = uri === undefined ? "" : (uri.slice("spiffe://".length).split("/")[0] ?? "");
  if (domain === "") throw failedPrecondition("credentials.cert carries no spiffe:// identity: issue it with mvm agent certs issue --identity coordinator --server");
  return domain;
}

export async function openCoordinatorService(options: CoordinatorServiceOptions): Promise<CoordinatorService> {
  const tls = await readFleetCredentials(options.fleet.credentials);
  const trustDomain = trustDomainOfCertificate(tls.certPem);
  const nodes = options.fleet.nodes;
  const connections = new NodeConnections(tls, options.keepalive ?? DEFAULT_KEEPALIVE);
  const shutdown = new AbortController();
  let events: FleetEventLog | null = null;
  const merger = new FleetWatchMerger(
    nodes.map((n) => n.name),
    (body) => {
      if (body.kind === "node_status") options.onNodeStatus?.(body.node, body.health, body.reason);
      events?.publish(body);
    },
  );
  events = new FleetEventLog({ view: () => merger.instances(), nodes: () => merger.status() });
  const sessions = new Set<http2.ServerHttp2Session>();
  let server: http2.Http2SecureServer | null = null;
  let watching: Promise<void> | null = null;
  let stopping: Promise<void> | null = null;

  const routes = (router: ConnectRouter) =>
    router.service(
      FleetService,
      fleetService({ nodes, connections, merger, events: events!, fanOut: options.fanOut ?? {}, nodeIds: new Map(), shutdownSignal: shutdown.signal }),
    );

  async function start(): Promise<{ host: string; port: number }> {
    watching = watchFleet({ nodes, connections, merger, signal: shutdown.signal, heartbeatIntervalMs: options.nodeHeartbeatMs });
    const identities = new WeakMap<object, Identity | null>();
    const handler = connectNodeAdapter({
      routes,
      contextValues: (req) => {
        const socket = ("stream" in req ? req.stream.session?.socket : req.socket) as TLSSocket | undefined;
        let identity = socket === undefined ? undefined : identities.get(socket);
        if (identity === undefined) {
          identity = identityFromPeerCertificate(socket?.getPeerCertificate?.() ?? null, trustDomain);
          if (socket !== undefined) identities.set(socket, identity);
        }
        return createContextValues().set(FLEET_CALLER_KEY, identity);
      },
    });
    const serverOptions = await createMtlsServerOptions({ serverMaterial: async () => tls });
    server = http2.createSecureServer(serverOptions, handler);
    server.on("session", (s) => {
      sessions.add(s);
      s.once("close", () => sessions.delete(s));
    });
    await new Promise<void>((resolve, reject) => {
      server!.once("error", reject);
      server!.listen(options.listen.port, options.listen.host, () => {
        server!.off("error", reject);
        resolve();
      });
    });
    const a = server.address() as AddressInfo;
    return { host: a.address, port: a.port };
  }

  function stop(): Promise<void> {
    stopping ??= (async () => {
      shutdown.abort();
      events?.close();
      await watching;
      connections.close();
      if (server) {
        const closed = new Promise<void>((resolve) => server!.close(() => resolve()));
        for (const s of sessions) s.close();
        const hard = setTimeout(() => sessions.forEach((s) => s.destroy()), 1_000);
        await closed;
        clearTimeout(hard);
      }
    })();
    return stopping;
  }

  return { start, stop, merger, events };
}
