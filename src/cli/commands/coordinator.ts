// `mvm coordinator …` (SPEC §10.1): one command for a whole fleet of agents. Every subcommand reads the fleet file
// (--fleet, else $MVM_FLEET), calls the selected nodes with bounded concurrency, a per-node deadline and retries for
// Unavailable, prints one result per node, and exits 0 when every node succeeded, 10 when some failed and 11 when
// all failed (input errors exit 2 before any node is called). Ctrl-C cancels every call in flight; the nodes not
// reached are reported as cancelled.

import type { Argv } from "yargs";
import { stringify as toYaml } from "yaml";
import { invalid, MvmError, type FieldViolation } from "../../core/errors.js";
import type { Instance } from "../../core/model.js";
import { instanceStatusToProto } from "../../api/convert/enums.js";
import { resourceRefToTarget } from "../../api/convert/audit.js";
import { stepKindFromProto } from "../../api/convert/desired-state.js";
import { describeStepParts } from "../../core/reconcile/steps.js";
import type { ReconcilePlan as ProtoReconcilePlan } from "../../../gen/mvm/v1/reconcile_pb.js";
import { readPushDocuments } from "../../coordinator/desired-documents.js";
import { DEFAULT_CONCURRENCY, DEFAULT_NODE_DEADLINE_MS, type NodeOutcome } from "../../coordinator/fan-out.js";
import { readFleetFile, selectNodes, type Fleet, type FleetNode } from "../../coordinator/fleet-file.js";
import {
  chooseWakeNode,
  fleetStatus,
  listFleetInstances,
  mergeInstanceLists,
  planDesiredState,
  pushDesiredState,
  wakeOnNode,
  type FleetCallContext,
} from "../../coordinator/fleet-operations.js";
import { FLEET_EXIT_CODES, fleetVerdict } from "../../coordinator/fleet-verdict.js";
import { openCoordinatorService } from "../../coordinator/main.js";
import { NodeConnections, readFleetCredentials } from "../../coordinator/node-connections.js";
import { watchFleet } from "../../coordinator/node-watch.js";
import { DEFAULT_RETRY_POLICY } from "../../coordinator/retry-policy.js";
import { FleetWatchMerger, type FleetWatchBody } from "../../coordinator/watch-merge.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderList, type OutputFormat } from "../output.js";
import { parseListen } from "./agent-serve.js";
import { parseLabels } from "./flags.js";
import { parseStatuses } from "./watch.js";

interface FleetFlags {
  fleet?: string;
  nodes?: string;
  selector?: string[];
  concurrency: number;
  "timeout-ms": number;
  attempts: number;
}

function withFleetOptions<T>(y: Argv<T>): Argv<T & FleetFlags> {
  return y
    .option("fleet", { type: "string", describe: "fleet file, YAML or JSON (default $MVM_FLEET)" })
    .option("nodes", { type: "string", describe: "only these nodes, comma-separated names (default: every node)" })
    .option("selector", { type: "string", array: true, describe: "only nodes with this label, key=value (repeatable)" })
    .option("concurrency", { type: "number", default: DEFAULT_CONCURRENCY, describe: "calls in flight at once" })
    .option("timeout-ms", { type: "number", default: DEFAULT_NODE_DEADLINE_MS, describe: "deadline per node, retries included, ms" })
    .option("attempts", { type: "number", default: DEFAULT_RETRY_POLICY.maxAttempts, describe: "calls per node when it is unavailable (1: no retries)" }) as unknown as Argv<
    T & FleetFlags
  >;
}

interface OpenedFleet {
  fleet: Fleet;
  nodes: FleetNode[];
  ctx: FleetCallContext;
  cancel: AbortController;
  close(): void;
}

function checkFleetFlags(args: FleetFlags, env: NodeJS.ProcessEnv, violations: FieldViolation[]): string {
  const path = args.fleet ?? env.MVM_FLEET ?? "";
  if (path === "") violations.push({ field: "--fleet", rule: "is required (or set $MVM_FLEET): a fleet file listing the nodes and the coordinator's certificate" });
  if (!Number.isInteger(args.concurrency) || args.concurrency < 1 || args.concurrency > 1024) violations.push({ field: "--concurrency", rule: "must be an integer 1-1024" });
  if (!Number.isInteger(args["timeout-ms"]) || args["timeout-ms"] < 1 || args["timeout-ms"] > 3_600_000) violations.push({ field: "--timeout-ms", rule: "must be an integer 1-3600000" });
  if (!Number.isInteger(args.attempts) || args.attempts < 1 || args.attempts > 10) violations.push({ field: "--attempts", rule: "must be an integer 1-10" });
  return path;
}

/** Reads the fleet file and credentials (all checks before any call) and wires Ctrl-C to cancel everything. */
async function openFleet(args: FleetFlags, env: NodeJS.ProcessEnv, extra: FieldViolation[] = []): Promise<OpenedFleet> {
  const violations = [...extra];
  const path = checkFleetFlags(args, env, violations);
  let selector: Record<string, string> = {};
  try {
    selector = parseLabels(args.selector, "--selector");
  } catch (e) {
    if (e instanceof MvmError) violations.push(...e.violations);
    else throw e;
  }
  if (violations.length > 0) throw invalid(violations);
  const fleet = await readFleetFile(path);
  const names = (args.nodes ?? "").split(",").map((s) => s.trim()).filter((s) => s !== "");
  const nodes = selectNodes(fleet, names, selector);
  const tls = await readFleetCredentials(fleet.credentials);
  const connections = new NodeConnections(tls);
  const cancel = new AbortController();
  const onSignal = () => cancel.abort();
  process.once("SIGINT", onSignal);
  const ctx: FleetCallContext = {
    connections,
    nodeIds: new Map(),
    fanOut: { concurrency: args.concurrency, deadlineMs: args["timeout-ms"], retry: { ...DEFAULT_RETRY_POLICY, maxAttempts: args.attempts }, signal: cancel.signal },
  };
  return {
    fleet,
    nodes,
    ctx,
    cancel,
    close: () => {
      process.off("SIGINT", onSignal);
      connections.close();
    },
  };
}

/** One row of a per-node result table; `detail` is what the command learned from the node. */
export interface NodeResultRow {
  node: string;
  address: string;
  result: string;
  attempts: number;
  elapsedMs: number;
  error?: string;
  [detail: string]: unknown;
}

export function resultRows<T>(outcomes: readonly NodeOutcome<FleetNode, T>[], detail: (value: T) => Record<string, unknown>): NodeResultRow[] {
  return outcomes.map((o) => ({
    node: o.node.name,
    address: o.node.address,
    result: o.ok ? "ok" : o.error.kind,
    attempts: o.attempts,
    elapsedMs: o.elapsedMs,
    ...(o.ok ? detail(o.value) : { error: o.error.message }),
  }));
}

interface PlannedStep {
  kind: string;
  target: string;
  reason: string;
  field: string;
  line: string;
}

interface PlanProblem {
  target: string;
  field: string;
  message: string;
}

/** A node's plan as rows and documents show it: counts, then each step and each item that cannot converge. */
export function planDetail(plan: ProtoReconcilePlan | undefined): { actions: number; errors: number; steps: PlannedStep[]; cannotConverge: PlanProblem[] } {
  const steps = (plan?.actions ?? []).map((a) => {
    const kind = stepKindFromProto(a.kind) ?? `unknown(${a.kind})`;
    const target = resourceRefToTarget(a.target);
    return { kind, target, reason: a.reason, field: a.field, line: describeStepParts(kind, target, a.reason) };
  });
  const cannotConverge = (plan?.errors ?? []).map((e) => ({ target: resourceRefToTarget(e.target) || "node", field: e.field, message: e.message }));
  return { actions: steps.length, errors: cannotConverge.length, steps, cannotConverge };
}

/** The steps of every node that has any, one block per node, in the table's order. */
export function formatNodePlans(rows: readonly NodeResultRow[]): string {
  const blocks: string[] = [];
  for (const row of rows) {
    const steps = (row.steps as PlannedStep[] | undefined) ?? [];
    const problems = (row.cannotConverge as PlanProblem[] | undefined) ?? [];
    if (steps.length === 0 && problems.length === 0) continue;
    const lines = [`${row.node}:`];
    for (const step of steps) lines.push(`  ${step.line}`);
    for (const p of problems) lines.push(`  cannot converge ${p.target}${p.field ? ` (${p.field})` : ""}: ${p.message}`);
    blocks.push(lines.join("\n"));
  }
  return blocks.length === 0 ? "" : `\n${blocks.join("\n")}\n`;
}

/** Prints the per-node table (or a JSON/YAML document with the verdict) and sets the exit code from the verdict. */
function report(ctx: CliContext, format: OutputFormat, rows: NodeResultRow[], detailColumns: Array<[string, string]>, cancelled: boolean): void {
  const verdict = fleetVerdict(rows.map((r) => ({ ok: r.result === "ok" })));
  if (format === "table") {
    ctx.write(
      renderList(
        rows,
        [
          { header: "NODE", cell: (r) => r.node },
          { header: "ADDRESS", cell: (r) => r.address },
          { header: "RESULT", cell: (r) => r.result },
          ...detailColumns.map(([header, key]) => ({ header, cell: (r: NodeResultRow) => (r[key] === undefined ? "" : String(r[key])) })),
          { header: "ATTEMPTS", cell: (r) => r.attempts },
          { header: "MS", cell: (r) => r.elapsedMs },
          { header: "ERROR", cell: (r) => r.error ?? "", maxWidth: 60 },
        ],
        format,
      ),
    );
  } else {
    ctx.write(renderDocument(format, { verdict, nodes: rows }));
  }
  const failed = rows.filter((r) => r.result !== "ok").length;
  if (verdict !== "ok") ctx.warn(`mvm: ${failed} of ${rows.length} nodes failed${cancelled ? " (cancelled)" : ""}\n`);
  process.exitCode = FLEET_EXIT_CODES[verdict];
}

function renderDocument(format: OutputFormat, document: object): string {
  return format === "json" ? `${JSON.stringify(document, null, 2)}\n` : toYaml(document, { lineWidth: 0 });
}

function parseInstancePath(value: string | undefined): { tenantId: string; poolId: string; instanceId: string } {
  const parts = (value ?? "").split("/");
  if (parts.length !== 3 || parts.some((p) => p === "")) throw invalid([{ field: "instance", rule: `must be TENANT/POOL/INSTANCE (got ${JSON.stringify(value ?? "")})` }]);
  return { tenantId: parts[0] as string, poolId: parts[1] as string, instanceId: parts[2] as string };
}

/** One merged-watch event as printed: a JSON line, or a table row. */
export function renderFleetWatchEvent(body: FleetWatchBody, at: Date, format: OutputFormat): string {
  const time = at.toISOString();
  if (format !== "table") {
    const line: Record<string, unknown> = { time, event: body.kind };
    if ("node" in body) line.node = body.node;
    if (body.kind === "upsert" || body.kind === "deleted") Object.assign(line, { nodeRevision: body.nodeRevision, instance: body.instance });
    if (body.kind === "node_status") Object.assign(line, { health: body.health, reason: body.reason });
    if (body.kind === "initial_state_complete") line.instanceCount = body.instanceCount;
    return `${JSON.stringify(line)}\n`;
  }
  const pad = (s: string, n: number) => s.padEnd(n);
  let cells: string[];
  if (body.kind === "upsert" || body.kind === "deleted") {
    const i = body.instance;
    cells = [body.node, body.kind, `${i.tenantId}/${i.poolId}/${i.instanceId}`, i.status, `${i.net.guestIp}`];
  } else if (body.kind === "node_status") cells = [body.node, `node_${body.health}`, "-", body.reason, ""];
  else cells = ["-", body.kind, `(${body.instanceCount} instances)`, "", ""];
  return `${[pad(time, 24), pad(cells[0]!, 16), pad(cells[1]!, 22), pad(cells[2]!, 34), pad(cells[3]!, 12), cells[4]].join(" ").trimEnd()}\n`;
}

export const FLEET_WATCH_HEADER = `${["TIME".padEnd(24), "NODE".padEnd(16), "EVENT".padEnd(22), "INSTANCE".padEnd(34), "STATUS".padEnd(12), "IP"].join(" ")}\n`;

export function registerCoordinatorCommands(parser: Argv<GlobalOptions>, ctx: CliContext): Argv<GlobalOptions> {
  const env = ctx.env;
  return parser.command("coordinator", "drive a fleet of agents from one place (fleet file: --fleet or $MVM_FLEET)", (y) =>
    y
      .command(
        "push <file>",
        "apply a desired-state document on every node (node_id set per node), or a fleet document {nodes: {<name>: <doc>}}",
        (c) => withFleetOptions(c.positional("file", { type: "string", demandOption: true, describe: "YAML or JSON" })),
        async (args) => {
          const opened = await openFleet(args, env);
          try {
            const documents = await readPushDocuments(args.file, opened.fleet.nodes.map((n) => n.name));
            const outcomes = await pushDesiredState(opened.ctx, opened.nodes, documents);
            report(ctx, args.output, resultRows(outcomes, (v) => ({ nodeId: v.nodeId, generation: v.generation, hash: v.desiredStateHash.slice(0, 12) })), [["NODE ID", "nodeId"], ["GENERATION", "generation"]], opened.cancel.signal.aborted);
          } finally {
            opened.close();
          }
        },
      )
      .command(
        "plan [file]",
        "the steps each node's reconcile pass would take: for a document (as push), or for what each last applied",
        (c) => withFleetOptions(c.positional("file", { type: "string", describe: "YAML or JSON (default: each node's applied state)" })),
        async (args) => {
          const opened = await openFleet(args, env);
          try {
            const documents = args.file === undefined ? null : await readPushDocuments(args.file, opened.fleet.nodes.map((n) => n.name));
            const outcomes = await planDesiredState(opened.ctx, opened.nodes, documents);
            const rows = resultRows(outcomes, (p) => planDetail(p));
            report(ctx, args.output, rows, [["ACTIONS", "actions"], ["ERRORS", "errors"]], opened.cancel.signal.aborted);
            // Under the table, what each node would do: the counts alone do not tell an operator whether to push.
            if (args.output === "table") ctx.write(formatNodePlans(rows));
          } finally {
            opened.close();
          }
        },
      )
      .command(
        "status",
        "node info and stats of every node",
        (c) => withFleetOptions(c),
        async (args) => {
          const opened = await openFleet(args, env);
          try {
            const outcomes = await fleetStatus(opened.ctx, opened.nodes);
            const rows = resultRows(outcomes, (s) => ({
              nodeId: s.nodeId,
              version: s.agentVersion,
              vcpus: `${s.vcpusInUse}/${s.vcpus}`,
              memMib: `${s.memMibInUse}/${s.memMib}`,
              instances: Object.values(s.instances).reduce((a, b) => a + b, 0),
              running: s.instances.running ?? 0,
              tenants: s.tenants,
            }));
            report(ctx, args.output, rows, [["NODE ID", "nodeId"], ["VERSION", "version"], ["VCPUS", "vcpus"], ["MEM MIB", "memMib"], ["INSTANCES", "instances"], ["RUNNING", "running"], ["TENANTS", "tenants"]], opened.cancel.signal.aborted);
          } finally {
            opened.close();
          }
        },
      )
      .command(
        "list-instances",
        "every node's instances, merged into one list",
        (c) =>
          withFleetOptions(c)
            .option("tenant", { type: "string", describe: "only this tenant" })
            .option("pool", { type: "string", describe: "only this pool (needs --tenant)" })
            .option("status", { type: "string", describe: "only these statuses, comma-separated" }),
        async (args) => {
          const extra: FieldViolation[] = [];
          const statuses = parseStatuses(args.status, extra);
          if (args.pool !== undefined && args.tenant === undefined) extra.push({ field: "--pool", rule: "requires --tenant" });
          const opened = await openFleet(args, env, extra);
          try {
            const outcomes = await listFleetInstances(opened.ctx, opened.nodes, { tenantId: args.tenant ?? "", poolId: args.pool ?? "", statuses: statuses.map(instanceStatusToProto) });
            const merged = mergeInstanceLists(outcomes);
            const failures = resultRows(outcomes, (v) => ({ instances: v.length })).filter((r) => r.result !== "ok");
            const verdict = fleetVerdict(outcomes);
            if (args.output === "table") {
              ctx.write(
                renderList(
                  merged,
                  [
                    { header: "NODE", cell: (r) => r.node },
                    { header: "INSTANCE", cell: (r) => `${r.instance.tenantId}/${r.instance.poolId}/${r.instance.instanceId}` },
                    { header: "STATUS", cell: (r) => r.instance.status },
                    { header: "IP", cell: (r) => r.instance.net.guestIp },
                    { header: "HEALTHY", cell: (r) => r.instance.healthy },
                  ],
                  "table",
                ),
              );
              for (const f of failures) ctx.warn(`mvm: node ${f.node} (${f.address}): ${f.result}: ${f.error}\n`);
            } else {
              ctx.write(renderDocument(args.output, { verdict, instances: merged.map((r) => ({ node: r.node, ...r.instance })), failedNodes: failures }));
            }
            process.exitCode = FLEET_EXIT_CODES[verdict];
          } finally {
            opened.close();
          }
        },
      )
      .command(
        "wake <instance>",
        "wake a sleeping instance TENANT/POOL/INSTANCE on the node that holds it (asks every node unless --on)",
        (c) =>
          withFleetOptions(c.positional("instance", { type: "string", demandOption: true }))
            .option("on", { type: "string", describe: "the node that holds it" })
            .option("ready-timeout-ms", { type: "number", default: 0, describe: "passed to the node (0: its default)" }),
        async (args) => {
          const ref = parseInstancePath(args.instance);
          const opened = await openFleet(args, env);
          try {
            let node: FleetNode;
            if (args.on !== undefined) {
              node = selectNodes(opened.fleet, [args.on], {}, "--on")[0] as FleetNode;
            } else node = (await chooseWakeNode(opened.ctx, opened.nodes, ref)).node;
            const outcome = await wakeOnNode(opened.ctx, node, ref, args["ready-timeout-ms"]);
            report(ctx, args.output, resultRows([outcome], (i: Instance | null) => ({ status: i?.status ?? "" })), [["STATUS", "status"]], opened.cancel.signal.aborted);
          } finally {
            opened.close();
          }
        },
      )
      .command(
        "watch",
        "one merged live view of every node's instances until Ctrl-C (table, or JSON lines with -o json)",
        (c) =>
          withFleetOptions(c)
            .option("tenant", { type: "string", describe: "only this tenant" })
            .option("heartbeat-ms", { type: "number", default: 5000, describe: "heartbeat asked of each agent; three missed mark the node down" }),
        async (args) => {
          const hb = args["heartbeat-ms"];
          const extra: FieldViolation[] = [];
          if (!Number.isInteger(hb) || hb < 1000 || hb > 300_000) extra.push({ field: "--heartbeat-ms", rule: "must be an integer 1000-300000" });
          const opened = await openFleet(args, env, extra);
          const format: OutputFormat = args.output === "yaml" ? "json" : args.output;
          try {
            if (format === "table") ctx.write(FLEET_WATCH_HEADER);
            const merger = new FleetWatchMerger(
              opened.nodes.map((n) => n.name),
              (body) => ctx.write(renderFleetWatchEvent(body, new Date(), format)),
            );
            await watchFleet({ nodes: opened.nodes, connections: opened.ctx.connections, merger, signal: opened.cancel.signal, tenantId: args.tenant, heartbeatIntervalMs: hb });
          } finally {
            opened.close();
          }
        },
      )
      .command(
        "serve",
        "run the coordinator service: FleetService over mTLS, one connection per node, a merged watch (until SIGTERM/SIGINT)",
        (c) =>
          withFleetOptions(c)
            .option("listen", { type: "string", default: "127.0.0.1:7444", describe: "FleetService address HOST:PORT" })
            .option("heartbeat-ms", { type: "number", default: 5000, describe: "heartbeat asked of each agent's watch" }),
        async (args) => {
          const violations: FieldViolation[] = [];
          const path = checkFleetFlags(args, env, violations);
          const listen = parseListen(args.listen, "--listen", violations);
          if (listen === null && violations.length === 0) violations.push({ field: "--listen", rule: "must be HOST:PORT (the service needs an address)" });
          if (violations.length > 0) throw invalid(violations);
          const fleet = await readFleetFile(path);
          const service = await openCoordinatorService({
            fleet,
            listen: listen!,
            nodeHeartbeatMs: args["heartbeat-ms"],
            fanOut: { concurrency: args.concurrency, deadlineMs: args["timeout-ms"], retry: { ...DEFAULT_RETRY_POLICY, maxAttempts: args.attempts } },
            onNodeStatus: (node, health, reason) => ctx.warn(`mvm coordinator: node ${node} ${health}${reason ? `: ${reason}` : ""}\n`),
          });
          let signalled: () => void = () => undefined;
          const stopped = new Promise<void>((resolve) => (signalled = resolve));
          process.once("SIGTERM", signalled);
          process.once("SIGINT", signalled);
          try {
            const address = await service.start();
            ctx.warn(`mvm coordinator: serving FleetService mTLS on ${address.host}:${address.port} for ${fleet.nodes.length} nodes\n`);
            await stopped;
          } finally {
            process.off("SIGTERM", signalled);
            process.off("SIGINT", signalled);
            await service.stop();
          }
        },
      )
      .demandCommand(1, "coordinator: a subcommand is required (push, plan, status, list-instances, wake, watch, serve)"),
  );
}
