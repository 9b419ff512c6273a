// The agent's idle loop (SPEC §8.3): every interval, one sample of every running or warm instance, then one run of
// the idle policy. Each tick first asks again the guests that did not answer their wake hook, when they are due
// (WakeHookRetrySchedule: at once, then 15 s after a failed try, twice as long after each further one, at most
// 15 min). Ticks never overlap (the next is scheduled when one ends: a sleep can take longer than an
// interval), and stopping waits for the tick in progress, so no snapshot is cut off half way by a shutdown.

import type { HostMemory } from "../core/host-ports.js";
import {
  IdleSampler,
  runIdlePolicy,
  sampleIdle,
  type IdleActionRunners,
  type IdlePolicyReport,
  type IdleSampleReport,
  type MemoryPressureThresholds,
} from "../core/use-cases/idle.js";
import type { DataPlaneDeps } from "../core/use-cases/lifecycle.js";
import {
  DEFAULT_WAKE_HOOK_RETRY_TIMEOUT_MS,
  retryUnansweredWakeHooks,
  WakeHookRetrySchedule,
  type WakeHookRetryOutcome,
} from "../core/use-cases/wake-hook-retry.js";
import type { Metrics } from "../platform/metrics.js";

/** Default time between two ticks; SPEC sets none. Thresholds are minutes by default, so seconds of lag are noise. */
export const DEFAULT_IDLE_INTERVAL_MS = 15_000;

/** The slice of a pino logger the loop writes to. */
export interface IdleLoopLogger {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
}

export interface IdleLoopOptions {
  intervalMs: number;
  /** How often an unchanged idle record is written; default the larger of the interval and 60 s. */
  persistEveryMs?: number;
  hostMemory?: HostMemory;
  pressureThresholds?: MemoryPressureThresholds;
  logger: IdleLoopLogger;
  metrics?: Metrics;
  /** Replaces the policy's runners (tests); default the warm and sleep use cases. */
  runners?: IdleActionRunners;
}

export interface IdleTickReport {
  wakeHookRetries: WakeHookRetryOutcome[];
  sample: IdleSampleReport;
  policy: IdlePolicyReport;
}

export interface IdleLoop {
  readonly sampler: IdleSampler;
  /** Runs one tick now (between scheduled ones, never during one) and returns what it did. */
  tick(): Promise<IdleTickReport>;
  /** No tick starts after this; resolves once the tick in progress, if any, has finished. */
  stop(): Promise<void>;
}

export function startIdleLoop(deps: DataPlaneDeps, options: IdleLoopOptions): IdleLoop {
  const sampler = new IdleSampler(options.persistEveryMs ?? Math.max(options.intervalMs, 60_000));
  const { logger, metrics } = options;
  let stopped = false;
  let timer: NodeJS.Timeout | null = null;
  let running: Promise<IdleTickReport> | null = null;

  const retrySchedule = new WakeHookRetrySchedule();

  async function once(): Promise<IdleTickReport> {
    const wakeHookRetries = await retryUnansweredWakeHooks(deps, retrySchedule, {
      timeoutMs: DEFAULT_WAKE_HOOK_RETRY_TIMEOUT_MS,
    });
    for (const r of wakeHookRetries) {
      const fields = { tenant: r.tenantId, pool: r.poolId, instance: r.instanceId };
      if (r.result === "answered") logger.info(fields, "wake hook answered on a later try: instance ready");
      else logger.warn({ ...fields, err: r.error }, "wake hook still unanswered");
      metrics?.wakeHookRetries.inc({ tenant: r.tenantId, pool: r.poolId, result: r.result });
    }
    const sample = await sampleIdle(deps, sampler);
    for (const e of sample.errors) logger.warn({ instance: e.instance, err: e.error }, "idle sample failed");
    const policy = await runIdlePolicy(deps, {
      sampler,
      ...(options.hostMemory ? { hostMemory: options.hostMemory } : {}),
      ...(options.pressureThresholds ? { pressureThresholds: options.pressureThresholds } : {}),
      ...(options.runners ? { runners: options.runners } : {}),
    });
    if (policy.pressureError) logger.warn({ err: policy.pressureError }, "host memory pressure unreadable, taken as none");
    for (const a of policy.actions) {
      const fields = { tenant: a.tenantId, pool: a.poolId, instance: a.instanceId, action: a.kind, reason: a.reason, result: a.result };
      if (a.result === "failure") logger.warn({ ...fields, err: a.error }, `idle policy: ${a.kind} failed`);
      else logger.info(a.result === "skipped" ? { ...fields, why: a.error } : fields, `idle policy: ${a.kind} ${a.result}`);
      metrics?.idleActions.inc({ tenant: a.tenantId, pool: a.poolId, action: a.kind, result: a.result });
    }
    if (metrics) {
      metrics.hostMemoryPressure.set(policy.memoryPressure ? 1 : 0);
      metrics.setInstanceIdle(sampler.tracked().map(({ key, idle }) => ({ ...key, idleS: idle.idleS })));
    }
    return { wakeHookRetries, sample, policy };
  }

  function tick(): Promise<IdleTickReport> {
    const previous = running ?? Promise.resolve(null);
    const next = previous.catch(() => null).then(once);
    running = next;
    const clear = () => {
      if (running === next) running = null;
    };
    next.then(clear, clear);
    return next;
  }

  function schedule(): void {
    if (stopped) return;
    timer = setTimeout(() => {
      timer = null;
      tick()
        .catch((e: unknown) => logger.warn({ err: e instanceof Error ? e.message : String(e) }, "idle tick failed"))
        .finally(schedule);
    }, options.intervalMs);
    // The loop alone must not keep a process alive that is otherwise done.
    timer.unref();
  }

  schedule();
  return {
    sampler,
    tick,
    async stop() {
      stopped = true;
      if (timer !== null) clearTimeout(timer);
      timer = null;
      await running?.catch(() => undefined);
    },
  };
}
