// `mvm agent serve` (SPEC §8): runs the node agent in the foreground until SIGTERM or SIGINT: the mTLS API, the
// local socket and the metrics endpoint. Stopping ends open streams with Unavailable and leaves VMs running.

import { transitionMetrics } from "../../agent/lifecycle-metrics.js";
import { randomBytes } from "node:crypto";
import { isIP } from "node:net";
import { join } from "node:path";
import type { Argv } from "yargs";
import type { Logger } from "pino";
import { invalid, type FieldViolation } from "../../core/errors.js";
import { WatchHub } from "../../core/watch-hub.js";
import { createMetrics, type Metrics } from "../../platform/metrics.js";
import { CertStore } from "../../platform/pki/cert-store.js";
import { createAgentLogger } from "../../agent/agent-logger.js";
import { DEFAULT_IDLE_INTERVAL_MS, startIdleLoop, type IdleLoop } from "../../agent/idle-loop.js";
import { collectLeftovers } from "../../agent/leftover-collection.js";
import { startMetadataServer, type MetadataServer } from "../../agent/metadata-server.js";
import { listenInNetns } from "../../runtime/metadata/netns-listener.js";
import { loadTokenSigner } from "../../runtime/metadata/token-signer.js";
import { createProcHostMemory } from "../../runtime/host/proc-host-memory.js";
import type { NodeRuntime } from "../../agent/node-runtime-types.js";
import { buildAgentServer, DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN, type ListenAddress } from "../../agent/server.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { createReconcileController, startReconcileLoop, type ReconcileLoop } from "./agent-reconcile.js";
import { readDesiredStateFile } from "./desired.js";

export const SOCKET_NAME = "agent.sock";
const NETNS_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;
const DISABLED = new Set(["none", "off", ""]);

export interface AgentServeOptions extends GlobalOptions {
  /** Network namespace holding the data plane; undefined for the host's. */
  netns?: string;
  logger: Logger;
  /** The runtime must publish instance writes here (use it as the runtime's `events`): WatchInstances reads it. */
  watchHub: WatchHub;
  /** The agent's metrics registry, for the runtime's adapters to update (audit entries, boot durations, ...). */
  metrics: Metrics;
}

/** Opens the node runtime the agent serves (the composition root's `openNodeRuntime`). */
export type OpenNodeRuntime = (options: AgentServeOptions) => Promise<NodeRuntime>;

/** `host:port`, `[v6]:port` or `:port` (all interfaces); null for `none`/`off`. */
export function parseListen(value: string, flag: string, violations: FieldViolation[]): ListenAddress | null {
  if (DISABLED.has(value)) return null;
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  const host = m ? (m[1] ?? m[2] ?? "") : "";
  if (!m || port > 65535 || (m[1] !== undefined && isIP(host) !== 6) || (host !== "" && m[2] !== undefined && !/^[A-Za-z0-9.-]+$/.test(host))) {
    violations.push({ field: flag, rule: `must be HOST:PORT, [IPV6]:PORT or :PORT with a port of 0-65535, or none (got ${JSON.stringify(value)})` });
    return null;
  }
  return { host: host === "" ? "0.0.0.0" : host, port };
}

/** The idle loop's interval, ms; 0 turns it off. The environment variable, in ms, is for tests that need sub-second ticks. */
function idleIntervalFrom(seconds: number, envMs: string | undefined, violations: FieldViolation[]): number {
  if (envMs !== undefined && envMs !== "") {
    const ms = Number(envMs);
    if (!Number.isInteger(ms) || ms < 0) violations.push({ field: "MVM_IDLE_INTERVAL_MS", rule: "must be an integer >= 0" });
    return ms;
  }
  if (!Number.isFinite(seconds) || seconds < 0) {
    violations.push({ field: "--idle-interval", rule: "must be a number of seconds >= 0" });
    return 0;
  }
  return Math.round(seconds * 1000);
}

function formatListen(a: ListenAddress): string {
  return `${a.host}:${a.port}`;
}

/**
 * Adds `serve` under the `agent` command. Mount it from run-cli.ts beside the certificate commands:
 * `parser.command("agent", "…", (y) => registerAgentServeCommand(registerCertsCommands(y, ctx), ctx, openNodeRuntime))`.
 */
export function registerAgentServeCommand<T extends GlobalOptions>(agentCommand: Argv<T>, ctx: CliContext, openRuntime: OpenNodeRuntime): Argv<T> {
  return agentCommand.command(
    "serve",
    "run the node agent: the mTLS API, the local socket and the metrics endpoint (until SIGTERM/SIGINT)",
    (y) =>
      y
        .option("listen", { type: "string", default: formatListen(DEFAULT_LISTEN), describe: "mTLS API address HOST:PORT, or none" })
        .option("socket", { type: "string", describe: `local API socket (default <data root>/${SOCKET_NAME}), or none` })
        .option("metrics-listen", {
          type: "string",
          default: formatListen(DEFAULT_METRICS_LISTEN),
          describe: "Prometheus endpoint HOST:PORT (plain HTTP: keep it on 127.0.0.1 unless the network is trusted), or none",
        })
        .option("metrics-port", { type: "number", describe: `shorthand for --metrics-listen 127.0.0.1:PORT (default ${DEFAULT_METRICS_LISTEN.port})` })
        .option("netns", { type: "string", describe: "network namespace that holds the tenant networks (default: the host's)" })
        .option("shutdown-grace-ms", { type: "number", default: 5000, describe: "how long open calls may finish on shutdown" })
        .option("idle-interval", {
          type: "number",
          default: DEFAULT_IDLE_INTERVAL_MS / 1000,
          describe: "seconds between idle samples and idle policy runs, 0 to turn the idle policy off ($MVM_IDLE_INTERVAL_MS overrides, in ms)",
        })
        .option("desired", { type: "string", describe: "desired-state file (JSON or YAML) to apply at start; the last applied one is kept otherwise" })
        .option("interval", { type: "number", default: 30, describe: "seconds between reconcile passes against the applied desired state" }),
    async (args) => {
      const violations: FieldViolation[] = [];
      const listen = parseListen(args.listen, "--listen", violations);
      let metricsListen = parseListen(args["metrics-listen"], "--metrics-listen", violations);
      const metricsPort = args["metrics-port"];
      if (metricsPort !== undefined) {
        if (!Number.isInteger(metricsPort) || metricsPort < 0 || metricsPort > 65535) violations.push({ field: "--metrics-port", rule: "must be an integer 0-65535" });
        else metricsListen = { host: metricsListen?.host ?? DEFAULT_METRICS_LISTEN.host, port: metricsPort };
      }
      if (args.netns !== undefined && !NETNS_PATTERN.test(args.netns)) violations.push({ field: "--netns", rule: "must be 1-64 characters of [A-Za-z0-9_.-]" });
      const grace = args["shutdown-grace-ms"];
      if (!Number.isInteger(grace) || grace < 0) violations.push({ field: "--shutdown-grace-ms", rule: "must be an integer >= 0" });
      const idleIntervalMs = idleIntervalFrom(args["idle-interval"], ctx.env.MVM_IDLE_INTERVAL_MS, violations);
      if (!Number.isFinite(args.interval) || args.interval <= 0) violations.push({ field: "--interval", rule: "must be a number of seconds > 0" });
      if (violations.length > 0) throw invalid(violations);
      // Read and validated before anything starts: a bad file is refused with nothing served.
      const desired = args.desired === undefined ? undefined : await readDesiredStateFile(args.desired);

      const logger = createAgentLogger();
      // A crypto-random epoch: a resume token from an earlier agent process is never taken for one of this one's.
      const metrics = createMetrics();
      const watchHub = new WatchHub({ epoch: randomBytes(8).toString("hex"), observer: transitionMetrics(metrics) });
      const runtime = await openRuntime({ ...args, netns: args.netns, logger, watchHub, metrics });
      const dataRoot = runtime.store.dataRoot;
      const socketPath = args.socket === undefined ? join(dataRoot, SOCKET_NAME) : DISABLED.has(args.socket) ? null : args.socket;
      let idleLoop: IdleLoop | null = null;
      const reconciler = createReconcileController(runtime, { idlePolicy: async () => void (await idleLoop?.tick()) });
      reconciler.onReport((report) => {
        metrics.reconcileRuns.inc({ result: report.converged ? "converged" : report.results.some((r) => r.outcome === "succeeded") ? "partial" : "failed" });
        metrics.reconcileDuration.observe((report.finishedAtMs - report.startedAtMs) / 1000);
        for (const e of report.errors) metrics.reconcileErrors.inc({ kind: e.kind });
      });
      // Before anything starts instances: what a killed agent or CLI left (a VMM whose record never said so, its TAP
      // and cgroup, a snapshot no longer needed) would otherwise stay, and could stand in a new start's way.
      await collectLeftovers(runtime, logger);
      if (desired !== undefined) await reconciler.apply(desired);
      const server = buildAgentServer({
        reconciler,
        runtime,
        certStore: listen ? CertStore.at(dataRoot) : undefined,
        listen,
        socketPath,
        metricsListen,
        logger,
        watchHub,
        metrics,
        shutdownGraceMs: grace,
      });
      let signalled: (signal: NodeJS.Signals) => void = () => undefined;
      const stopped = new Promise<NodeJS.Signals>((resolve) => (signalled = resolve));
      process.once("SIGTERM", signalled);
      process.once("SIGINT", signalled);
      let reconcileLoop: ReconcileLoop | null = null;
      let metadata: MetadataServer | null = null;
      try {
        const addresses = await server.start();
        const netns = runtime.network.netns;
        if (netns === null) {
          logger.warn("metadata endpoint not served: the data plane runs in the root namespace (give it one with --netns)");
        } else {
          metadata = startMetadataServer({
            deps: { store: runtime.store, clock: runtime.clock, signer: await loadTokenSigner(join(dataRoot, "metadata")) },
            nodeId: (await runtime.store.node()).nodeId,
            listen: () => listenInNetns(netns, "0.0.0.0", runtime.metadataPort),
            logger,
          });
        }
        if (idleIntervalMs > 0) {
          idleLoop = startIdleLoop(runtime, { intervalMs: idleIntervalMs, hostMemory: createProcHostMemory(), logger, metrics });
        }
        reconcileLoop = startReconcileLoop(reconciler, { intervalMs: Math.round(args.interval * 1000), logger });
        ctx.warn(
          `mvm agent: serving${addresses.api ? ` mTLS on ${formatListen(addresses.api)}` : ""}${addresses.socketPath ? `, socket ${addresses.socketPath}` : ""}${addresses.metrics ? `, metrics on http://${formatListen(addresses.metrics)}/metrics` : ""}\n`,
        );
        const signal = await stopped;
        logger.info({ signal }, "shutting down");
      } finally {
        process.off("SIGTERM", signalled);
        process.off("SIGINT", signalled);
        await reconcileLoop?.stop();
        await idleLoop?.stop();
        await metadata?.close();
        await server.stop();
        await runtime.close();
      }
    },
  );
}
