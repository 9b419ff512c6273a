// Idle policy (SPEC §8.3): idle time accumulated from real samples, and the warm/sleep actions it calls for.
// Pure: the agent's sampler feeds `accumulateIdle`, its policy loop calls `evaluateIdlePolicy` and carries out the
// actions (each through the state machine, which may still refuse one that raced with a user's operation).

import type { IdleMetrics, Instance, SleepPolicy } from "./model.js";

export interface IdleSample {
  /** CPU use over the interval since the previous sample, percent of the instance's vCPUs (0-100). */
  cpuPct: number;
  /** Bytes through the instance's TAP, both directions, since the previous sample. */
  netBytes: number;
  /** When the sample was taken, ms since the epoch. */
  atMs: number;
}

/**
 * The instance's idle metrics after `sample`. Idle time grows by the time since the previous sample only when the
 * sample shows the whole interval idle (CPU below `cpuIdlePct` and network below `netIdleBytes`); any busy sample
 * resets it to 0. The first sample (no `lastSampleAt`) starts the clock and adds nothing; a sample older than the
 * previous one (the clock stepped back) adds nothing either, so idle time never runs ahead of what was observed.
 * Idle seconds are fractional: rounding each interval would lose time with sub-second sampling.
 */
export function accumulateIdle(prev: IdleMetrics, sample: IdleSample, policy: SleepPolicy): IdleMetrics {
  const previousMs = prev.lastSampleAt === null ? Number.NaN : Date.parse(prev.lastSampleAt);
  const elapsedS = Number.isFinite(previousMs) ? Math.max(0, (sample.atMs - previousMs) / 1000) : 0;
  const idle = sample.cpuPct < policy.cpuIdlePct && sample.netBytes < policy.netIdleBytes;
  return {
    idleS: idle ? prev.idleS + elapsedS : 0,
    cpuPct: sample.cpuPct,
    netBytes: sample.netBytes,
    lastSampleAt: new Date(sample.atMs).toISOString(),
  };
}

export type IdleAction = { kind: "warm" | "sleep"; instanceId: string; reason: string };

export interface IdlePoolView {
  poolId: string;
  pinned: boolean;
  critical: boolean;
  sleepPolicy: SleepPolicy;
  instances: ReadonlyArray<Pick<Instance, "instanceId" | "status" | "idle">>;
}

export interface IdlePolicyOptions {
  /**
   * Instances put to sleep per evaluation because of host memory pressure, beyond those past their thresholds.
   * Default 1: one snapshot at a time, then the next evaluation sees whether the pressure has gone.
   */
  pressureSleeps?: number;
}

export const DEFAULT_PRESSURE_SLEEPS = 1;

interface Candidate {
  instanceId: string;
  status: "running" | "warm";
  idleS: number;
}

/** Coldest first; a warm instance before a running one at equal idle time (it is already paused); then by ID. */
function colderFirst(a: Candidate, b: Candidate): number {
  if (a.idleS !== b.idleS) return b.idleS - a.idleS;
  if (a.status !== b.status) return a.status === "warm" ? -1 : 1;
  return a.instanceId < b.instanceId ? -1 : a.instanceId > b.instanceId ? 1 : 0;
}

/**
 * The actions the idle policy calls for, coldest instance first, at most one per instance:
 * - running, idle ≥ sleep_after_idle_s → sleep (running → sleeping is an edge of its own; no stop at warm on the way);
 * - running, idle ≥ warm_after_idle_s → warm;
 * - warm, idle ≥ sleep_after_idle_s → sleep;
 * - under host memory pressure, also the coldest running/warm instances not already being put to sleep
 *   (`pressureSleeps`, default 1) → sleep, whatever their idle time.
 * Pools that are pinned or critical are never touched, not even under memory pressure.
 */
export function evaluateIdlePolicy(
  pools: readonly IdlePoolView[],
  memoryPressure: boolean,
  options: IdlePolicyOptions = {},
): IdleAction[] {
  const actions = new Map<string, IdleAction & { idleS: number; status: Candidate["status"] }>();
  const candidates: Candidate[] = [];
  for (const pool of pools) {
    if (pool.pinned || pool.critical) continue;
    const { warmAfterIdleS, sleepAfterIdleS } = pool.sleepPolicy;
    for (const instance of pool.instances) {
      if (instance.status !== "running" && instance.status !== "warm") continue;
      const candidate: Candidate = { instanceId: instance.instanceId, status: instance.status, idleS: instance.idle.idleS };
      candidates.push(candidate);
      const idle = `idle ${Math.floor(candidate.idleS)}s`;
      if (candidate.idleS >= sleepAfterIdleS) {
        actions.set(candidate.instanceId, {
          kind: "sleep",
          instanceId: candidate.instanceId,
          reason: `${idle} >= sleep_after_idle_s ${sleepAfterIdleS}`,
          idleS: candidate.idleS,
          status: candidate.status,
        });
      } else if (instance.status === "running" && candidate.idleS >= warmAfterIdleS) {
        actions.set(candidate.instanceId, {
          kind: "warm",
          instanceId: candidate.instanceId,
          reason: `${idle} >= warm_after_idle_s ${warmAfterIdleS}`,
          idleS: candidate.idleS,
          status: candidate.status,
        });
      }
    }
  }

  if (memoryPressure) {
    let budget = Math.max(0, Math.floor(options.pressureSleeps ?? DEFAULT_PRESSURE_SLEEPS));
    for (const candidate of [...candidates].sort(colderFirst)) {
      if (budget === 0) break;
      if (actions.get(candidate.instanceId)?.kind === "sleep") continue;
      actions.set(candidate.instanceId, {
        kind: "sleep",
        instanceId: candidate.instanceId,
        reason: `host memory pressure: coldest ${candidate.status} instance (idle ${Math.floor(candidate.idleS)}s)`,
        idleS: candidate.idleS,
        status: candidate.status,
      });
      budget--;
    }
  }

  return [...actions.values()].sort(colderFirst).map(({ kind, instanceId, reason }) => ({ kind, instanceId, reason }));
}
