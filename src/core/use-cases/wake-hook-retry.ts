// The agent's later tries of wake hooks its guests did not answer (SPEC §7): a wake whose guest runs again but does
// not answer leaves the instance running with Ready false; the agent's idle loop asks each such guest again on a
// backoff schedule, through the same use case an explicit wake of it runs (retryWakeHook).

import { isMvmError } from "../errors.js";
import { formatInstancePath } from "../ids.js";
import type { Instance } from "../model.js";
import type { AuditActor } from "../observability-ports.js";
import { listInstances, type InstanceKey } from "./instances.js";
import { refreshInstanceHealth, type DataPlaneDeps } from "./lifecycle.js";
import { awaitsWakeHook, processOf, retryWakeHook, sameVmm, type WakeHookRetryOptions } from "./sleep-wake.js";

/** How long one later try of an unanswered wake hook waits for the guest, ms. */
export const DEFAULT_WAKE_HOOK_RETRY_TIMEOUT_MS = 10_000;
/** Who the audit log names when the agent tries an unanswered wake hook again by itself. */
export const WAKE_HOOK_RETRY_ACTOR: Readonly<AuditActor> = Object.freeze({ kind: "system", id: "system:wake-hook-retry" });

export interface WakeHookRetryOutcome extends InstanceKey {
  result: "answered" | "unanswered";
  /** Why the guest did not answer; empty when it did. */
  error: string;
}

/** First pause before the agent tries an unanswered wake hook again, ms; it doubles after every try that fails. */
export const WAKE_HOOK_RETRY_FIRST_DELAY_MS = 15_000;
/** Longest pause between two tries, ms. */
export const WAKE_HOOK_RETRY_MAX_DELAY_MS = 15 * 60_000;

/**
 * When the agent asks each waiting guest again: soon at first, then less and less often (a guest that never answers
 * must not fill its tenant's audit log). Kept in memory per VM (pid and start time): a new VMM starts over.
 */
export class WakeHookRetrySchedule {
  private readonly entries = new Map<string, { vmm: string; tries: number; dueAtMs: number }>();

  constructor(
    private readonly firstDelayMs = WAKE_HOOK_RETRY_FIRST_DELAY_MS,
    private readonly maxDelayMs = WAKE_HOOK_RETRY_MAX_DELAY_MS,
  ) {}

  /** Whether `instance`, waiting on its wake hook, is due for a try at `nowMs`. One seen for the first time is. */
  due(instance: Instance, nowMs: number): boolean {
    const entry = this.entries.get(formatInstancePath(instance));
    return entry === undefined || entry.vmm !== vmmText(instance) || nowMs >= entry.dueAtMs;
  }

  /** Records a failed try: the next one waits twice as long as the last (from the first delay, up to the maximum). */
  failed(instance: Instance, nowMs: number): void {
    const key = formatInstancePath(instance);
    const previous = this.entries.get(key);
    const tries = previous !== undefined && previous.vmm === vmmText(instance) ? previous.tries + 1 : 1;
    const delay = Math.min(this.maxDelayMs, this.firstDelayMs * 2 ** (tries - 1));
    this.entries.set(key, { vmm: vmmText(instance), tries, dueAtMs: nowMs + delay });
  }

  /** Forgets every instance not in `waiting` (answered, stopped, slept, destroyed). */
  keepOnly(waiting: readonly Instance[]): void {
    const keep = new Set(waiting.map(formatInstancePath));
    for (const key of this.entries.keys()) if (!keep.has(key)) this.entries.delete(key);
  }
}

function vmmText(i: Instance): string {
  return i.vmm === null ? "" : `${i.vmm.pid}@${i.vmm.pidStartTime}`;
}

/**
 * One later try of the wake hook for every instance of the node that waits on it and is due by `schedule`, a few
 * guests at a time (the agent's loop calls this). Audited as the agent's own wakes.
 */
export async function retryUnansweredWakeHooks(
  deps: DataPlaneDeps,
  schedule: WakeHookRetrySchedule,
  options: WakeHookRetryOptions & { concurrency?: number },
): Promise<WakeHookRetryOutcome[]> {
  const waiting = (await listInstances(deps, { status: "running" })).filter(awaitsWakeHook);
  schedule.keepOnly(waiting);
  const due = waiting.filter((i) => schedule.due(i, deps.clock.nowMs()));
  const agentDeps: DataPlaneDeps = { ...deps, actor: { ...WAKE_HOOK_RETRY_ACTOR } };
  const outcomes: WakeHookRetryOutcome[] = [];
  let next = 0;
  const worker = async () => {
    while (next < due.length) {
      const instance = due[next++] as Instance;
      const key: InstanceKey = { tenantId: instance.tenantId, poolId: instance.poolId, instanceId: instance.instanceId };
      try {
        const process = processOf(deps, instance);
        if (process !== null && !(await deps.vmm(process.hypervisor).isAlive(process))) {
          // No guest left to ask: the record says so (stopped, VmmExited) and TAP and cgroup are released.
          await refreshInstanceHealth(deps, key);
          continue;
        }
        const after = await retryWakeHook(agentDeps, key, options);
        // Stopped, slept or destroyed meanwhile: its guest was not asked, there is nothing to report.
        if (after.status === "running" && sameVmm(after, instance) && !awaitsWakeHook(after)) outcomes.push({ ...key, result: "answered", error: "" });
      } catch (e) {
        if (isMvmError(e) && e.kind === "not_found") continue;
        schedule.failed(instance, deps.clock.nowMs());
        outcomes.push({ ...key, result: "unanswered", error: e instanceof Error ? e.message : String(e) });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(options.concurrency ?? 4, due.length)) }, worker));
  return outcomes;
}
