// The agent's idle loop (SPEC §8.3) as two use cases: `sampleIdle` turns the cumulative counters of each running or
// warm instance (cgroup CPU time, TAP bytes) into per-interval samples and accumulates idle time from them;
// `runIdlePolicy` asks the pure policy (idle-policy.ts) what to warm and sleep and carries it out through the
// warm/sleep use cases, one instance at a time, a failure on one never stopping the others.
//
// Writes: idle metrics change at every sample, and every instance write is a watch event. The record is written
// only when idle time was reset by activity (a stale large idle_s would mislead whoever reads the record: reconcile
// picks the most idle first), on the first sample of a record, and otherwise at most once per `persistEveryMs`
// (default 60 s). The sampler keeps the fresh values in memory and the policy reads them from there, so writing
// seldom never delays an action.

import type { HostMemory, HostMemoryReading } from "../host-ports.js";
import { idledFrom, markIdled, parkedFrom, withoutIdleMark } from "../idle-mark.js";
import { accumulateIdle, evaluateIdlePolicy, type IdleAction, type IdlePoolView } from "../idle-policy.js";
import type { IdleMetrics, Instance, InstanceStatus, WorkerPool } from "../model.js";
import type { AuditActor } from "../observability-ports.js";
import { timestamp } from "./deps.js";
import type { InstanceKey } from "./instances.js";
import type { DataPlaneDeps } from "./lifecycle.js";
import { sleepInstance, warmInstance } from "./sleep-wake.js";

/** Who the warm and sleep entries of the audit log name when the idle policy acted. */
export const IDLE_POLICY_ACTOR: Readonly<AuditActor> = Object.freeze({ kind: "system", id: "system:idle-policy" });

export const DEFAULT_IDLE_PERSIST_EVERY_MS = 60_000;

/** Host memory counts as under pressure below this share of MemAvailable, percent of MemTotal. */
export const DEFAULT_MIN_AVAILABLE_PCT = 10;
/** ... or when tasks stalled on memory at least this share of the last 10 s (PSI some avg10), percent. */
export const DEFAULT_MAX_STALL_PCT = 10;

export interface MemoryPressureThresholds {
  minAvailablePct: number;
  maxStallPct: number;
}

export function isMemoryPressure(
  reading: HostMemoryReading,
  thresholds: MemoryPressureThresholds = { minAvailablePct: DEFAULT_MIN_AVAILABLE_PCT, maxStallPct: DEFAULT_MAX_STALL_PCT },
): boolean {
  const lowAvailable = reading.totalBytes > 0 && (reading.availableBytes / reading.totalBytes) * 100 < thresholds.minAvailablePct;
  const stalling = reading.stallPct10s !== null && reading.stallPct10s >= thresholds.maxStallPct;
  return lowAvailable || stalling;
}

type ActiveStatus = "running" | "warm";

function isActive(status: InstanceStatus): status is ActiveStatus {
  return status === "running" || status === "warm";
}

interface Observed {
  /** pid and start time of the VMM the counters belong to: a new VMM has counters of its own. */
  vmm: string;
  status: ActiveStatus;
  cpuUsageUs: number;
  /** rx + tx of the TAP. */
  netBytes: number;
  atMs: number;
  idle: IdleMetrics;
}

function instancePath(i: { tenantId: string; poolId: string; instanceId: string }): string {
  return `${i.tenantId}/${i.poolId}/${i.instanceId}`;
}

function vmmIdentity(i: Instance): string {
  return i.vmm === null ? "" : `${i.vmm.pid}:${i.vmm.pidStartTime}`;
}

/** The counters each sampler remembers, kept out of its public face: only `sampleIdle` reads and writes them. */
const observedBy = new WeakMap<IdleSampler, Map<string, Observed>>();

function observedOf(sampler: IdleSampler): Map<string, Observed> {
  let observed = observedBy.get(sampler);
  if (observed === undefined) observedBy.set(sampler, (observed = new Map()));
  return observed;
}

/** What the sampler remembers between samples: the raw counters and the idle metrics of each instance, in memory. */
export class IdleSampler {
  constructor(readonly persistEveryMs: number = DEFAULT_IDLE_PERSIST_EVERY_MS) {}

  /** Latest idle metrics of an instance seen since this sampler was made; undefined for one it has not seen. */
  idleOf(key: InstanceKey): IdleMetrics | undefined {
    return observedOf(this).get(instancePath(key))?.idle;
  }

  /** Every instance currently tracked (running or warm at the last sample), with its latest idle metrics. */
  tracked(): Array<{ key: InstanceKey; idle: IdleMetrics }> {
    return [...observedOf(this).entries()].map(([path, o]) => {
      const [tenantId = "", poolId = "", instanceId = ""] = path.split("/");
      return { key: { tenantId, poolId, instanceId }, idle: o.idle };
    });
  }

  /** After the policy changed an instance's status, so that a user's resume that follows is seen as one. */
  noteStatus(key: InstanceKey, status: InstanceStatus): void {
    const observed = observedOf(this);
    const o = observed.get(instancePath(key));
    if (o === undefined) return;
    if (isActive(status)) o.status = status;
    else observed.delete(instancePath(key));
  }
}

export interface IdleSampleReport {
  /** Instances sampled (running or warm, with counters). */
  sampled: number;
  /** Records written. */
  written: number;
  /** Instances whose counters could not be read or whose record could not be written; the others went on. */
  errors: Array<{ instance: string; error: string }>;
}

/** The stored metrics are worth replacing: see the header for the rule. */
function worthWriting(stored: IdleMetrics, next: IdleMetrics, persistEveryMs: number): boolean {
  if (stored.lastSampleAt === null || next.lastSampleAt === null) return true;
  if (stored.idleS > 0 && next.idleS === 0) return true;
  const ageMs = Date.parse(next.lastSampleAt) - Date.parse(stored.lastSampleAt);
  return !(ageMs < persistEveryMs);
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * One sample of every running or warm instance. The first sample of an instance in this sampler, and the first after
 * its VMM changed (a start or a wake), its counters went backwards, or it went from warm to running (a resume), sets
 * a baseline and starts its idle time from 0: there is no interval to judge yet, and idle time from before belongs to
 * a VM that is gone or to a pause a user just ended. CPU is the cgroup's time over the interval, as a percentage of
 * the pool's vCPUs (the VMM's own threads count too: they are what the guest costs the host).
 */
export async function sampleIdle(deps: DataPlaneDeps, sampler: IdleSampler): Promise<IdleSampleReport> {
  const report: IdleSampleReport = { sampled: 0, written: 0, errors: [] };
  const seen = new Set<string>();
  for (const tenant of await deps.store.listTenants()) {
    const writes: Array<{ instance: Instance; idle: IdleMetrics }> = [];
    for (const pool of await deps.store.listPools(tenant.tenantId)) {
      for (const instance of await deps.store.listInstances(tenant.tenantId, pool.poolId)) {
        if (!isActive(instance.status) || instance.vmm === null) continue;
        const path = instancePath(instance);
        try {
          const next = await sampleOne(deps, sampler, pool, instance, path);
          if (next === null) continue;
          seen.add(path);
          report.sampled++;
          if (worthWriting(instance.idle, next, sampler.persistEveryMs)) writes.push({ instance, idle: next });
        } catch (e) {
          report.errors.push({ instance: path, error: message(e) });
        }
      }
    }
    if (writes.length > 0) {
      try {
        report.written += await writeIdle(deps, tenant.tenantId, writes);
      } catch (e) {
        for (const w of writes) report.errors.push({ instance: instancePath(w.instance), error: `writing idle metrics: ${message(e)}` });
      }
    }
  }
  const observed = observedOf(sampler);
  for (const path of [...observed.keys()]) if (!seen.has(path)) observed.delete(path);
  return report;
}

async function sampleOne(deps: DataPlaneDeps, sampler: IdleSampler, pool: WorkerPool, instance: Instance, path: string): Promise<IdleMetrics | null> {
  const [usage, tap] = await Promise.all([
    deps.cgroups.usage({ tenantId: instance.tenantId, poolId: instance.poolId, instanceId: instance.instanceId }),
    deps.network.tapCounters(instance.net.tapName),
  ]);
  // Between a VMM's exit and the health check that notices it, its cgroup or TAP may be gone: nothing to sample.
  if (usage === null || tap === null) return null;
  const atMs = deps.clock.nowMs();
  const netBytes = tap.rxBytes + tap.txBytes;
  const status = instance.status as ActiveStatus;
  const vmm = vmmIdentity(instance);
  const observed = observedOf(sampler);
  const prev = observed.get(path);
  let idle: IdleMetrics;
  if (
    prev === undefined ||
    prev.vmm !== vmm ||
    usage.cpuUsageUs < prev.cpuUsageUs ||
    netBytes < prev.netBytes ||
    (prev.status === "warm" && status === "running")
  ) {
    idle = { ...instance.idle, idleS: 0, lastSampleAt: new Date(atMs).toISOString() };
  } else if (atMs <= prev.atMs) {
    // The clock stepped back: keep what was accumulated and measure the next interval from here.
    idle = { ...prev.idle, lastSampleAt: new Date(atMs).toISOString() };
  } else {
    const elapsedUs = (atMs - prev.atMs) * 1000;
    const cpuPct = Math.min(100, Math.max(0, (100 * (usage.cpuUsageUs - prev.cpuUsageUs)) / (elapsedUs * Math.max(1, pool.resources.vcpus))));
    idle = accumulateIdle(prev.idle, { cpuPct, netBytes: netBytes - prev.netBytes, atMs }, pool.sleepPolicy);
  }
  observed.set(path, { vmm, status, cpuUsageUs: usage.cpuUsageUs, netBytes, atMs, idle });
  return idle;
}

/** Writes under the tenant lock, and only into records still describing the VMM that was sampled. */
async function writeIdle(deps: DataPlaneDeps, tenantId: string, writes: Array<{ instance: Instance; idle: IdleMetrics }>): Promise<number> {
  return deps.store.withTenantLock(tenantId, async () => {
    let written = 0;
    for (const { instance, idle } of writes) {
      const current = await deps.store.getInstance(instance.tenantId, instance.poolId, instance.instanceId);
      if (current === null || !isActive(current.status) || vmmIdentity(current) !== vmmIdentity(instance)) continue;
      await deps.store.putInstance({ ...current, idle });
      written++;
    }
    return written;
  });
}

// ── Policy ────────────────────────────────────────────────────────────────────────────────────────────────────────

export interface IdleActionRunners {
  warm(deps: DataPlaneDeps, key: InstanceKey): Promise<Instance>;
  sleep(deps: DataPlaneDeps, key: InstanceKey): Promise<Instance>;
}

const SLEEP_WAKE_RUNNERS: IdleActionRunners = {
  warm: (deps, key) => warmInstance(deps, key),
  sleep: (deps, key) => sleepInstance(deps, key),
};

export interface IdlePolicyRunOptions {
  /**
   * The sampler of this process: its idle metrics are fresher than the records'. With one, only instances it has
   * sampled can pass a threshold (a record's idle time may date from before a restart of the VM or the agent);
   * without one (a one-shot run), the records' idle metrics are used.
   */
  sampler?: IdleSampler;
  /** Where memory pressure is read; none means no pressure. */
  hostMemory?: HostMemory;
  pressureThresholds?: MemoryPressureThresholds;
  /** Instances put to sleep per run because of memory pressure (idle-policy.ts). */
  pressureSleeps?: number;
  /** Carries out the actions; default the warm and sleep use cases. */
  runners?: IdleActionRunners;
}

export interface IdleActionOutcome {
  kind: IdleAction["kind"];
  tenantId: string;
  poolId: string;
  instanceId: string;
  reason: string;
  /** `skipped`: the instance changed status between the evaluation and the action (a user got there first). */
  result: "success" | "failure" | "skipped";
  /** Why it failed or was skipped; empty on success. */
  error: string;
}

export interface IdlePolicyReport {
  memoryPressure: boolean;
  /** Why memory pressure could not be read (then taken as none); empty otherwise. */
  pressureError: string;
  actions: IdleActionOutcome[];
}

/**
 * Evaluates the idle policy over every pool of the node at once (under memory pressure the coldest instance of the
 * whole node goes first) and carries out the actions in the policy's order, coldest first. Each action runs with the
 * idle policy as the audit actor; a failed one is reported and the next one still runs.
 */
export async function runIdlePolicy(deps: DataPlaneDeps, options: IdlePolicyRunOptions = {}): Promise<IdlePolicyReport> {
  let memoryPressure = false;
  let pressureError = "";
  if (options.hostMemory) {
    try {
      memoryPressure = isMemoryPressure(await options.hostMemory.read(), options.pressureThresholds);
    } catch (e) {
      pressureError = message(e);
    }
  }

  const views: IdlePoolView[] = [];
  const where = new Map<string, { tenantId: string; poolId: string; status: InstanceStatus }>();
  for (const tenant of await deps.store.listTenants()) {
    for (const pool of await deps.store.listPools(tenant.tenantId)) {
      const instances = await deps.store.listInstances(tenant.tenantId, pool.poolId);
      const active = instances.filter((i) => isActive(i.status));
      if (active.length === 0) continue;
      views.push({
        poolId: `${pool.tenantId}/${pool.poolId}`,
        pinned: pool.pinned,
        critical: pool.critical,
        sleepPolicy: pool.sleepPolicy,
        instances: active.map((i) => {
          where.set(i.instanceId, { tenantId: i.tenantId, poolId: i.poolId, status: i.status });
          const fresh = options.sampler ? options.sampler.idleOf(i) : i.idle;
          return { instanceId: i.instanceId, status: i.status, idle: fresh ?? { ...i.idle, idleS: 0 } };
        }),
      });
    }
  }

  const runners = options.runners ?? SLEEP_WAKE_RUNNERS;
  const actorDeps: DataPlaneDeps = { ...deps, actor: { ...IDLE_POLICY_ACTOR } };
  const outcomes: IdleActionOutcome[] = [];
  const planned = evaluateIdlePolicy(views, memoryPressure, options.pressureSleeps === undefined ? {} : { pressureSleeps: options.pressureSleeps });
  for (const action of planned) {
    const at = where.get(action.instanceId);
    if (at === undefined) continue;
    const key: InstanceKey = { tenantId: at.tenantId, poolId: at.poolId, instanceId: action.instanceId };
    const outcome: IdleActionOutcome = { kind: action.kind, ...key, reason: action.reason, result: "success", error: "" };
    try {
      const current = await deps.store.getInstance(key.tenantId, key.poolId, key.instanceId);
      if (current === null || current.status !== at.status) {
        outcome.result = "skipped";
        outcome.error = current === null ? "instance is gone" : `instance is ${current.status} now, was ${at.status}`;
      } else {
        const after = await (action.kind === "warm" ? runners.warm(actorDeps, key) : runners.sleep(actorDeps, key));
        options.sampler?.noteStatus(key, after.status);
        await markParked(deps, key, current, after.status, action.reason);
      }
    } catch (e) {
      outcome.result = "failure";
      outcome.error = message(e);
    }
    outcomes.push(outcome);
  }
  return { memoryPressure, pressureError, actions: outcomes };
}

/**
 * Marks an instance the policy just parked (idle-mark.ts), so that reconcile keeps counting it in the class it was
 * parked from; written only if the record is still in the state the action left it in.
 */
async function markParked(deps: DataPlaneDeps, key: InstanceKey, before: Instance, status: InstanceStatus, reason: string): Promise<void> {
  await deps.store.withTenantLock(key.tenantId, async () => {
    const now = await deps.store.getInstance(key.tenantId, key.poolId, key.instanceId);
    if (now === null || now.status !== status) return;
    const conditions = markIdled(now.conditions, parkedFrom(before), `idle policy: ${reason}`, timestamp(deps.clock));
    await deps.store.putInstance({ ...now, conditions, updatedAt: timestamp(deps.clock) });
  });
}

/** Ends the idle mark of an instance (reconcile takes it over before acting on it). No write when there is none. */
export async function clearIdleMark(deps: DataPlaneDeps, key: InstanceKey): Promise<void> {
  await deps.store.withTenantLock(key.tenantId, async () => {
    const instance = await deps.store.getInstance(key.tenantId, key.poolId, key.instanceId);
    if (instance === null || idledFrom(instance) === null) return;
    await deps.store.putInstance({ ...instance, conditions: withoutIdleMark(instance.conditions), updatedAt: timestamp(deps.clock) });
  });
}
