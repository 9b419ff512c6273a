import type { Argv } from "yargs";
import { stringify as toYaml } from "yaml";
import { failedPrecondition, invalid } from "../../core/errors.js";
import { ID_RULE, isValidId } from "../../core/ids.js";
import type { AuditEntry } from "../../core/observability-ports.js";
import type { AuditVerifyReport, ControlPlaneClient } from "../backend/control-plane-client.js";
import { withControlPlane, withControlPlaneOptions } from "../backend/choose-control-plane.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderList, renderRecord, type Column, type OutputFormat } from "../output.js";

const AUDIT_COLUMNS: Column<AuditEntry>[] = [
  { header: "SEQ", cell: (e) => e.seq },
  { header: "AT", cell: (e) => e.at },
  { header: "ACTOR", cell: (e) => e.actor.id },
  { header: "ACTION", cell: (e) => e.action },
  { header: "TARGET", cell: (e) => e.target },
  { header: "OUTCOME", cell: (e) => e.outcome },
  { header: "REASON", cell: (e) => e.reason },
  { header: "DETAILS", cell: (e) => Object.entries(e.details).map(([k, v]) => `${k}=${v}`).join(",") },
];

/** Default and largest `-n` of `audit tail`. */
export const DEFAULT_TAIL_ENTRIES = 20;
export const MAX_TAIL_ENTRIES = 100_000;

function describeLog(tenantId: string): string {
  return tenantId === "" ? "node audit log" : `audit log of tenant ${tenantId}`;
}

/** The log an invocation names: a tenant positional, or `--node-log` for the node-level log (tenant ""). */
function logTenant(args: { tenant?: string; "node-log"?: boolean; "--"?: unknown }): string {
  const rest = args["--"];
  const tenant = args.tenant ?? (Array.isArray(rest) && rest.length > 0 ? String(rest[0]) : undefined);
  if (args["node-log"] === true) {
    if (tenant !== undefined) throw invalid([{ field: "tenant", rule: "must not be given with --node-log" }]);
    return "";
  }
  if (tenant === undefined) throw invalid([{ field: "tenant", rule: "is required (tenant ID, or --node-log for the node-level log)" }]);
  if (!isValidId(tenant)) throw invalid([{ field: "tenant", rule: ID_RULE }]);
  return tenant;
}

/** One entry as one line, for `--follow`: JSON lines, YAML documents, or a fixed-order text line. */
export function formatFollowedEntry(entry: AuditEntry, format: OutputFormat): string {
  if (format === "json") return `${JSON.stringify(entry)}\n`;
  if (format === "yaml") return `---\n${toYaml(entry, { lineWidth: 0 })}`;
  const details = Object.entries(entry.details).map(([k, v]) => `${k}=${v}`).join(",");
  const fields = [entry.seq, entry.at, entry.actor.id, entry.action, entry.target, entry.outcome, entry.reason, details];
  return `${fields.map((f) => (f === "" ? "-" : String(f))).join("  ")}\n`;
}

export interface AuditTailOptions {
  tenantId: string;
  n: number;
  follow: boolean;
  output: OutputFormat;
  /** Ends `--follow`. */
  signal?: AbortSignal;
}

/** What `audit tail` reads: the node's audit log files (FsAuditLog), or a control plane that reaches them. */
export interface AuditReader {
  tail(tenantId: string, n: number): Promise<AuditEntry[]>;
  watch(tenantId: string, options: { backlog: number; signal?: AbortSignal }): AsyncIterable<AuditEntry>;
}

function readerOf(cp: ControlPlaneClient): AuditReader {
  return {
    tail: (tenantId, n) => cp.tailAudit(tenantId, n),
    watch: (tenantId, options) => cp.followAudit(tenantId, options.backlog, options.signal ?? new AbortController().signal),
  };
}

/** `mvm audit tail`: the last `n` entries, then (with follow) every new one until `signal` aborts. */
export async function auditTail(log: AuditReader, options: AuditTailOptions, write: (text: string) => void): Promise<void> {
  if (!Number.isInteger(options.n) || options.n < 0 || options.n > MAX_TAIL_ENTRIES) {
    throw invalid([{ field: "-n", rule: `must be an integer from 0 to ${MAX_TAIL_ENTRIES} (got ${options.n})` }]);
  }
  if (!options.follow) {
    write(renderList(await log.tail(options.tenantId, options.n), AUDIT_COLUMNS, options.output));
    return;
  }
  // The backlog and the live entries come from one watcher, so nothing appended in between is lost or doubled.
  for await (const entry of log.watch(options.tenantId, { backlog: options.n, signal: options.signal })) {
    write(formatFollowedEntry(entry, options.output));
  }
}

/** `mvm audit verify`: prints the result; a broken chain is a `failed_precondition` naming the first bad seq. */
export async function auditVerify(
  verify: (tenantId: string) => Promise<AuditVerifyReport>,
  tenantId: string,
  output: OutputFormat,
  write: (text: string) => void,
): Promise<AuditVerifyReport> {
  const result = await verify(tenantId);
  write(renderRecord({ log: describeLog(tenantId), ...result }, output));
  if (!result.ok) {
    throw failedPrecondition(`${describeLog(tenantId)}: chain broken at seq ${result.firstBadSeq}: ${result.reason}`);
  }
  return result;
}

/** Aborts on SIGINT/SIGTERM while `fn` runs, so `--follow` ends with exit code 0 instead of a kill. */
async function untilInterrupted(fn: (signal: AbortSignal) => Promise<void>): Promise<void> {
  const controller = new AbortController();
  const stop = () => controller.abort();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  try {
    await fn(controller.signal);
  } finally {
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
  }
}

export function registerAuditCommands(yargs: Argv<GlobalOptions>, ctx: CliContext): Argv<GlobalOptions> {
  const logArgs = <T>(c: Argv<T>) =>
    c
      .positional("tenant", { type: "string", describe: "tenant whose log to read" })
      .option("node-log", { type: "boolean", default: false, describe: "the node-level log (certificates, node-wide actions)" });
  return yargs.command("audit", "the hash-chained audit logs", (y) =>
    withControlPlaneOptions(y)
      .command(
        "tail [tenant]",
        "show the last entries of an audit log, optionally following new ones",
        (c) =>
          logArgs(c)
            .option("n", { alias: "lines", type: "number", default: DEFAULT_TAIL_ENTRIES, describe: "how many entries" })
            .option("follow", { alias: "f", type: "boolean", default: false, describe: "keep printing new entries" }),
        async (args) => {
          const tenantId = logTenant(args);
          await withControlPlane(ctx, args, async (cp) => {
            const run = (signal?: AbortSignal) =>
              auditTail(readerOf(cp), { tenantId, n: args.n, follow: args.follow, output: args.output, signal }, ctx.write);
            if (args.follow) await untilInterrupted(run);
            else await run();
          });
        },
      )
      .command(
        "verify [tenant]",
        "check an audit log's hash chain (exit code 5 when it is broken)",
        (c) => logArgs(c),
        async (args) => {
          const tenantId = logTenant(args);
          await withControlPlane(ctx, args, (cp) => auditVerify((t) => cp.verifyAudit(t), tenantId, args.output, ctx.write));
        },
      )
      .demandCommand(1, "audit: a subcommand is required (tail, verify)"),
  );
}
