// The node agent's servers (SPEC §8.1, §8.4), built unstarted so that tests bind ephemeral ports:
// - the mvm.v1 API, grpc.health.v1 and reflection over HTTP/2 with TLS 1.3 and mandatory client certificates
//   (gRPC, gRPC-Web and Connect protocols);
// - the same API over a local Unix socket (plain HTTP/2, mode 0600) for the CLI on the host;
// - Prometheus metrics over plain HTTP on a separate port, bound to 127.0.0.1 by default.
// Stopping ends open streams with Unavailable, closes every session (GOAWAY, then a hard close after a grace
// period) and removes the socket. VMs are not touched: they keep running and are re-adopted by the next agent.

import { lstat, unlink, chmod } from "node:fs/promises";
import http from "node:http";
import http2 from "node:http2";
import net, { type AddressInfo } from "node:net";
import type { TLSSocket } from "node:tls";
import { createContextValues, type ConnectRouter, type ContextValues } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Logger } from "pino";
import { failedPrecondition, MvmError } from "../core/errors.js";
import type { Instance } from "../core/model.js";
import { WatchHub } from "../core/watch-hub.js";
import { createMetrics, type Metrics } from "../platform/metrics.js";
import { renewalDue } from "../platform/pki/certificate-info.js";
import type { CertStore } from "../platform/pki/cert-store.js";
import { DEFAULT_TRUST_DOMAIN } from "../platform/pki/identity.js";
import { isPkiError } from "../platform/pki/pki-error.js";
import { createMtlsServerOptions, reloadServerCertificate, tlsClientRefusalReason } from "../platform/pki/tls-context.js";
import { file_mvm_v1_errors } from "../../gen/mvm/v1/errors_pb.js";
import type { ApiDeps, AuditReader, NodeFacts } from "../api/api-deps.js";
import { PEER_KEY, type PeerInfo } from "../api/auth.js";
import { HealthStatusBoard, registerHealth } from "../api/health/index.js";
import { IdempotencyCache } from "../api/idempotency.js";
import { registerReflection } from "../api/reflection/index.js";
import { createGrpcUnaryLane, dispatchStream, type RegisteredService } from "../api/grpc-unary-lane.js";
import { apiInterceptors, apiServices, MVM_SERVICES, registerApiServices } from "../api/routes.js";
import { agentVersion, type AgentVersion } from "./agent-version.js";
import { createHostNodeFacts } from "./host-node-facts.js";
import type { ReconcileController } from "../core/use-cases/reconcile.js";
import type { NodeRuntime } from "./node-runtime-types.js";

export const DEFAULT_LISTEN = { host: "0.0.0.0", port: 7443 };
export const DEFAULT_METRICS_LISTEN = { host: "127.0.0.1", port: 9469 };
const DEFAULT_SHUTDOWN_GRACE_MS = 5_000;
const DEFAULT_CERT_CHECK_MS = 3_600_000;
const SOCKET_PROBE_TIMEOUT_MS = 1_000;

export interface ListenAddress {
  host: string;
  port: number;
}

export interface AgentServerOptions {
  runtime: NodeRuntime;
  /** The node's certificates; required when `listen` is set. */
  certStore?: CertStore;
  /** The mTLS API. Port 0 picks a free port. Null or absent: no TLS listener. */
  listen?: ListenAddress | null;
  /** The local Unix socket. Null or absent: none. */
  socketPath?: string | null;
  /** The Prometheus endpoint. Null or absent: none. */
  metricsListen?: ListenAddress | null;
  logger: Logger;
  /** Default: `runtime.events`, which must then be a WatchHub. */
  watchHub?: WatchHub;
  /** Default: `runtime.audit`, which must then be readable (FsAuditLog is). */
  auditReader?: AuditReader;
  /** Default: a fresh registry (createMetrics()). */
  metrics?: Metrics;
  /** Default: probed from the host and the runtime's adapters. */
  nodeFacts?: NodeFacts;
  /** Default: package.json's version and $MVM_GIT_COMMIT. */
  version?: AgentVersion;
  /** How long open sessions get to finish after stop() before they are closed hard, ms. Default 5000. */
  shutdownGraceMs?: number;
  /** WatchInstances heartbeat when the request names none, ms. Default 15000. */
  defaultHeartbeatMs?: number;
  /** How often the node certificate is checked for renewal, ms; 0 disables. Default 3600000 (hourly). */
  certificateCheckIntervalMs?: number;
  /** The reconcile controller the agent's loop uses, so that the API shares its passes. Default: the API's own. */
  reconciler?: ReconcileController;
}

export interface AgentAddresses {
  /** The mTLS API, with the port actually bound. */
  api: ListenAddress | null;
  socketPath: string | null;
  metrics: ListenAddress | null;
}

export interface AgentServer {
  start(): Promise<AgentAddresses>;
  /** Idempotent. */
  stop(): Promise<void>;
  readonly addresses: AgentAddresses | null;
  readonly health: HealthStatusBoard;
  readonly metrics: Metrics;
}

/** A PKI error as the MvmError of the same kind (platform may not depend on core); anything else unchanged. */
function toMvmError(error: unknown): unknown {
  return isPkiError(error) ? new MvmError(error.kind, error.message, error.violations, { cause: error }) : error;
}

function isAuditReader(value: unknown): value is AuditReader {
  const v = value as Partial<AuditReader> | null;
  return typeof v?.watch === "function" && typeof v.tail === "function" && typeof v.verify === "function" && typeof v.logs === "function";
}

async function allInstances(runtime: NodeRuntime): Promise<Instance[]> {
  const out: Instance[] = [];
  for (const tenant of await runtime.store.listTenants()) {
    for (const pool of await runtime.store.listPools(tenant.tenantId)) out.push(...(await runtime.store.listInstances(tenant.tenantId, pool.poolId)));
  }
  return out;
}

/**
 * Clears the way for the socket: a stale socket file (its agent died) is removed, but a live agent answering on it
 * is not displaced, and a path that is not a socket is never deleted.
 */
export async function prepareSocketPath(path: string): Promise<void> {
  let st;
  try {
    st = await lstat(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw e;
  }
  if (!st.isSocket()) throw failedPrecondition(`${path} exists and is not a socket: remove it or choose another --socket`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path);
    const done = (answer: boolean) => {
      probe.destroy();
      resolve(answer);
    };
    probe.setTimeout(SOCKET_PROBE_TIMEOUT_MS, () => done(true));
    probe.once("connect", () => done(true));
    probe.once("error", () => done(false));
  });
  if (live) throw failedPrecondition(`another mvm agent is listening on ${path}: stop it first (or choose another --socket)`);
  await unlink(path);
}

function listen(server: net.Server, address: ListenAddress | string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    const done = () => {
      server.off("error", reject);
      resolve();
    };
    if (typeof address === "string") server.listen(address, done);
    else server.listen(address.port, address.host, done);
  });
}

function boundAddress(server: net.Server, fallbackHost: string): ListenAddress {
  const a = server.address() as AddressInfo;
  return { host: a.address ?? fallbackHost, port: a.port };
}

export function buildAgentServer(options: AgentServerOptions): AgentServer {
  const { runtime, logger } = options;
  const metrics = options.metrics ?? createMetrics();
  const health = new HealthStatusBoard([["", "NOT_SERVING"]]);
  const shutdown = new AbortController();
  const idempotency = new IdempotencyCache();
  const sessions = new Set<http2.ServerHttp2Session>();
  let tlsServer: http2.Http2SecureServer | null = null;
  let socketServer: http2.Http2Server | null = null;
  let metricsServer: http.Server | null = null;
  let certTimer: NodeJS.Timeout | null = null;
  let addresses: AgentAddresses | null = null;
  let stopping: Promise<void> | null = null;

  const watchHub = options.watchHub ?? (runtime.events instanceof WatchHub ? runtime.events : null);
  if (watchHub === null) throw new TypeError("buildAgentServer: runtime.events is not a WatchHub; pass options.watchHub");
  const auditReader = options.auditReader ?? (isAuditReader(runtime.audit) ? runtime.audit : null);
  if (auditReader === null) throw new TypeError("buildAgentServer: runtime.audit cannot be read back; pass options.auditReader");
  if (options.listen && !options.certStore) throw new TypeError("buildAgentServer: listen needs certStore");

  function trackSessions(server: http2.Http2Server | http2.Http2SecureServer): void {
    server.on("session", (session) => {
      sessions.add(session);
      session.once("close", () => sessions.delete(session));
    });
  }

  function routes(deps: ApiDeps, services: readonly RegisteredService[]) {
    return (router: ConnectRouter) => {
      registerApiServices(router, deps, { idempotency }, services);
      registerHealth(router, health, { shutdownSignal: shutdown.signal });
      // Last, so that it lists every service above; the error details travel with it for clients to decode.
      registerReflection(router, { extraFiles: [file_mvm_v1_errors] });
    };
  }

  async function renewCertificateIfDue(deps: ApiDeps, store: CertStore): Promise<void> {
    const status = await store.status();
    const node = status.certificates.find((c) => c.role === "node");
    if (!node || !renewalDue(new Date(node.notBefore), new Date(node.notAfter), new Date())) return;
    const nodeId = (await runtime.store.node()).nodeId;
    const actor = { kind: "system" as const, id: "agent:certificate-renewal" };
    try {
      const rotated = await store.rotate();
      await deps.certificates?.reload();
      await runtime.audit.append({
        tenantId: "",
        actor,
        action: "certificate_rotate",
        target: `node/${nodeId}`,
        outcome: "success",
        reason: "",
        details: { previous_serial: rotated.previousSerialNumber.toLowerCase(), serial: rotated.serialNumber.toLowerCase(), trigger: "renewal due" },
      });
      logger.info({ serial: rotated.serialNumber, notAfter: rotated.notAfter.toISOString() }, "node certificate renewed");
    } catch (e) {
      const error = toMvmError(e) as Error;
      await runtime.audit
        .append({ tenantId: "", actor, action: "certificate_rotate", target: `node/${nodeId}`, outcome: "failure", reason: error.message, details: {} })
        .catch(() => undefined);
      logger.error({ err: error }, "node certificate renewal failed");
    }
  }

  async function start(): Promise<AgentAddresses> {
    if (addresses !== null) return addresses;
    const trustDomain = options.certStore ? await options.certStore.trustDomain().catch((e: unknown) => { throw toMvmError(e); }) : DEFAULT_TRUST_DOMAIN;
    watchHub!.seed(await allInstances(runtime));
    const deps: ApiDeps = {
      runtime,
      watchHub: watchHub!,
      auditReader: auditReader!,
      node:
        options.nodeFacts ??
        createHostNodeFacts({
          runtime,
          revisionsDir: (t, p) => runtime.revisionsDir(t, p),
          agentVersion: (options.version ?? agentVersion()).version,
          agentStartedAt: new Date(),
        }),
      metrics,
      logger,
      version: options.version ?? agentVersion(),
      shutdownSignal: shutdown.signal,
      defaultHeartbeatMs: options.defaultHeartbeatMs,
      reconciler: options.reconciler,
    };
    const interceptors = apiInterceptors(deps, { trustDomain });
    const protocols = { grpc: true, grpcWeb: true, connect: true } as const;
    const services = apiServices(deps, { idempotency });
    /** Unary gRPC calls take the direct lane (grpc-unary-lane.ts); every other stream goes to Connect's adapter. */
    const serveStreams = (
      server: http2.Http2Server | http2.Http2SecureServer,
      connectHandler: (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void,
      contextValues: (stream: http2.ServerHttp2Stream) => ContextValues,
    ) => {
      const lane = createGrpcUnaryLane({ services, interceptors, contextValues, shutdownSignal: shutdown.signal });
      server.on("stream", dispatchStream(lane, connectHandler));
    };

    try {
      if (options.listen) {
        const store = options.certStore as CertStore;
        const serverOptions = await createMtlsServerOptions(store).catch((e: unknown) => { throw toMvmError(e); });
        deps.certificates = { store, reload: () => reloadServerCertificate(tlsServer as http2.Http2SecureServer, store) };
        // TLS 1.3 without post-handshake authentication: a connection's peer certificate never changes.
        const peers = new WeakMap<object, PeerInfo>();
        const peerContext = (socket: TLSSocket | undefined) => {
          let peer = socket === undefined ? undefined : peers.get(socket);
          if (peer === undefined) {
            peer = { transport: "mtls", certificate: socket?.getPeerCertificate?.() ?? null };
            if (socket !== undefined) peers.set(socket, peer);
          }
          return createContextValues().set(PEER_KEY, peer);
        };
        const handler = connectNodeAdapter({
          routes: routes(deps, services),
          interceptors,
          ...protocols,
          contextValues: (req) => peerContext(("stream" in req ? req.stream.session?.socket : req.socket) as TLSSocket | undefined),
        });
        tlsServer = http2.createSecureServer(serverOptions);
        serveStreams(tlsServer, handler, (stream) => peerContext(stream.session?.socket as TLSSocket | undefined));
        tlsServer.on("tlsClientError", (error, socket) => logger.warn({ reason: tlsClientRefusalReason(error, socket), remote: socket.remoteAddress }, "tls handshake refused"));
        trackSessions(tlsServer);
        await listen(tlsServer, options.listen);
      }
      if (options.socketPath) {
        await prepareSocketPath(options.socketPath);
        const uid = process.getuid?.() ?? null;
        const contextValues = () => createContextValues().set(PEER_KEY, { transport: "local", uid });
        const handler = connectNodeAdapter({ routes: routes(deps, services), interceptors, ...protocols, contextValues });
        socketServer = http2.createServer();
        serveStreams(socketServer, handler, contextValues);
        trackSessions(socketServer);
        // The socket is created 0600 (umask), not chmod'ed afterwards only, so no other user can ever connect.
        const previousUmask = process.umask(0o177);
        try {
          await listen(socketServer, options.socketPath);
        } finally {
          process.umask(previousUmask);
        }
        await chmod(options.socketPath, 0o600);
      }
      if (options.metricsListen) {
        metricsServer = http.createServer((req, res) => {
          if (req.method !== "GET" || (req.url ?? "").split("?")[0] !== "/metrics") {
            res.writeHead(404, { "content-type": "text/plain" }).end("not found: the metrics are at /metrics\n");
            return;
          }
          metrics.setInstanceCounts(watchHub!.snapshot());
          metrics.render().then(
            (text) => res.writeHead(200, { "content-type": metrics.contentType }).end(text),
            (e: unknown) => {
              logger.error({ err: e }, "rendering metrics failed");
              res.writeHead(500, { "content-type": "text/plain" }).end("metrics unavailable\n");
            },
          );
        });
        await listen(metricsServer, options.metricsListen);
      }
    } catch (e) {
      await stop();
      throw e;
    }

    const interval = options.certificateCheckIntervalMs ?? DEFAULT_CERT_CHECK_MS;
    if (options.listen && options.certStore && interval > 0) {
      const store = options.certStore;
      certTimer = setInterval(() => void renewCertificateIfDue(deps, store), interval);
      certTimer.unref();
    }
    health.set("", "SERVING");
    for (const service of MVM_SERVICES) health.set(service.typeName, "SERVING");
    addresses = {
      api: tlsServer ? boundAddress(tlsServer, options.listen?.host ?? "") : null,
      socketPath: socketServer ? (options.socketPath ?? null) : null,
      metrics: metricsServer ? boundAddress(metricsServer, options.metricsListen?.host ?? "") : null,
    };
    logger.info(addresses, "mvm agent serving");
    return addresses;
  }

  function closeServer(server: net.Server | null): Promise<void> {
    if (server === null || !server.listening) return Promise.resolve();
    return new Promise((resolve) => server.close(() => resolve()));
  }

  async function stopOnce(): Promise<void> {
    health.shutdown();
    if (certTimer) clearInterval(certTimer);
    // Streams see the abort and end with Unavailable; then every session gets a GOAWAY and may finish its calls.
    shutdown.abort();
    const closed = Promise.all([closeServer(tlsServer), closeServer(socketServer), closeServer(metricsServer)]);
    for (const session of sessions) session.close();
    const grace = setTimeout(() => {
      for (const session of sessions) session.destroy();
    }, options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS);
    grace.unref();
    await closed;
    clearTimeout(grace);
    if (socketServer !== null && options.socketPath) await unlink(options.socketPath).catch(() => undefined);
    logger.info("mvm agent stopped; virtual machines keep running");
  }

  function stop(): Promise<void> {
    stopping ??= stopOnce();
    return stopping;
  }

  return {
    start,
    stop,
    get addresses() {
      return addresses;
    },
    health,
    metrics,
  };
}
