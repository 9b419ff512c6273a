// `mvm agent reconcile` (SPEC §9, §10.2): one reconcile pass in-process against a desired-state file (which becomes
// the node's applied state) or the one applied last; `--plan` prints the steps a pass would take and changes
// nothing. Also the agent's reconcile loop, which `agent serve --desired FILE --interval S` runs.

import type { Argv } from "yargs";
import { desiredStateDigest } from "../../api/convert/desired-state.js";
import { invalid, MvmError } from "../../core/errors.js";
import { describeStep, targetPath, type ReconcilePlan, type ReconcileReport } from "../../core/reconcile/steps.js";
import { ReconcileController, type ReconcileDeps, type ReconcileOptions } from "../../core/use-cases/reconcile.js";
import type { NodeRuntime } from "../../agent/node-runtime-types.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderRecord, type OutputFormat } from "../output.js";
import { readDesiredStateFile } from "./desired.js";

export function reconcileDepsOf(runtime: NodeRuntime): ReconcileDeps {
  return { ...runtime, digestDesiredState: desiredStateDigest };
}

export function createReconcileController(runtime: NodeRuntime, options: ReconcileOptions = {}): ReconcileController {
  return new ReconcileController(reconcileDepsOf(runtime), options);
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)}s`;
}

export function formatPlan(plan: ReconcilePlan): string {
  const lines = [`plan for node ${plan.nodeId} (generation ${plan.generation}): ${plan.steps.length} step(s)`];
  for (const step of plan.steps) lines.push(`  ${describeStep(step)}`);
  for (const e of plan.errors) lines.push(`  cannot converge ${targetPath(e.target)}: ${e.message}`);
  return `${lines.join("\n")}\n`;
}

export function formatReport(report: ReconcileReport): string {
  const state = report.converged ? "converged" : "not converged";
  const lines = [
    `reconcile ${report.reconcileId} (generation ${report.generation}, ${report.trigger}): ${state}, ${report.results.length} step(s) in ${seconds(report.finishedAtMs - report.startedAtMs)}`,
  ];
  for (const r of report.results) {
    const mark = r.outcome === "succeeded" ? "ok  " : r.outcome === "failed" ? "FAIL" : "skip";
    const created = r.createdInstanceId ? ` → ${r.createdInstanceId}` : "";
    lines.push(`  ${mark} ${describeStep(r.step)}${created} ${seconds(r.durationMs)}${r.message ? `: ${r.message}` : ""}`);
  }
  for (const e of report.errors) {
    const retry = e.nextRetryAtMs === null ? (e.retryable ? "" : ", not retried") : `, retry after ${new Date(e.nextRetryAtMs).toISOString()}`;
    lines.push(`  error ${targetPath(e.target) || "node"}${e.field ? ` (${e.field})` : ""}: ${e.message} [${e.kind}${retry}]`);
  }
  return `${lines.join("\n")}\n`;
}

function render(value: ReconcilePlan | ReconcileReport, format: OutputFormat, text: (v: never) => string): string {
  return format === "table" ? text(value as never) : renderRecord(value, format);
}

export interface ReconcileLoopLogger {
  info(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

export interface ReconcileLoop {
  stop(): Promise<void>;
}

/**
 * Converges on the applied desired state at start, every `intervalMs`, and when a failed item's backoff ends
 * (whichever comes first). Passes never overlap (the controller runs one at a time).
 */
export function startReconcileLoop(controller: ReconcileController, options: { intervalMs: number; logger: ReconcileLoopLogger }): ReconcileLoop {
  const { intervalMs, logger } = options;
  let timer: NodeJS.Timeout | null = null;
  let stopped = false;
  let current: Promise<unknown> = Promise.resolve();
  const run = async (trigger: "startup" | "periodic" | "retry") => {
    if (stopped) return;
    if (!(await controller.applied())) {
      schedule();
      return;
    }
    const pass = controller.reconcile(trigger).then(
      (report) => {
        const fields = { reconcileId: report.reconcileId, generation: report.generation, trigger, steps: report.results.length, errors: report.errors.length };
        if (report.converged) logger.info(fields, "reconcile pass converged");
        else logger.error({ ...fields, firstError: report.errors[0]?.message }, "reconcile pass did not converge");
      },
      (error: unknown) => logger.error({ err: error, trigger }, "reconcile pass failed"),
    );
    current = pass;
    await pass;
    schedule();
  };
  const schedule = () => {
    if (stopped) return;
    const retryAt = controller.nextRetryAtMs();
    const retryIn = retryAt === null ? Infinity : Math.max(0, retryAt - Date.now());
    const retry = retryIn < intervalMs;
    timer = setTimeout(() => void run(retry ? "retry" : "periodic"), retry ? retryIn : intervalMs);
    timer.unref();
  };
  void run("startup");
  return {
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await current;
    },
  };
}

export function registerAgentReconcileCommand<T extends GlobalOptions>(agentCommand: Argv<T>, ctx: CliContext): Argv<T> {
  return agentCommand.command(
    "reconcile",
    "one reconcile pass in-process against a desired-state file (then applied) or the last applied one; --plan only prints the steps",
    (y) =>
      y
        .option("desired", { type: "string", describe: "desired-state file, JSON or YAML (snake_case or camelCase)" })
        .option("plan", { type: "boolean", default: false, describe: "print the steps a pass would take; change nothing" })
        .option("concurrency", { type: "number", default: 4, describe: "steps taken side by side at most" }),
    async (args) => {
      const concurrency = args.concurrency;
      if (!Number.isInteger(concurrency) || concurrency < 1) throw invalid([{ field: "--concurrency", rule: "must be an integer >= 1" }]);
      const document = args.desired === undefined ? undefined : await readDesiredStateFile(args.desired);
      const runtime = await ctx.deps(args);
      const controller = createReconcileController(runtime, { concurrency });
      if (args.plan) {
        ctx.write(render(await controller.plan(document), args.output, formatPlan));
        return;
      }
      if (document !== undefined) {
        const { applied, changed } = await controller.apply(document);
        if (changed) ctx.warn(`mvm: desired state applied as generation ${applied.generation} (${applied.hash.slice(0, 12)})\n`);
      }
      const report = await controller.reconcile("manual");
      ctx.write(render(report, args.output, formatReport));
      const first = report.errors[0];
      if (!report.converged) {
        const count = report.errors.length;
        throw new MvmError(first?.kind ?? "unavailable", `reconcile did not converge: ${count} item error(s)${first ? `; first: ${targetPath(first.target) || "node"}: ${first.message}` : ""}`);
      }
    },
  );
}
