// Tenant quota arithmetic (SPEC §2 TenantQuota): what a tenant uses now, and whether one operation would take it
// past any of its seven limits. Pure: the caller gathers the tenant's pools, instances and snapshot bytes under the
// tenant lock and asks before acting.
//
// The rule for every operation: a limit is checked only when the operation raises the quantity it limits, and then
// against the usage the tenant would have afterwards. An operation that leaves a quantity unchanged is never refused
// for it, even when a lowered quota already sits below current usage (resuming a warm instance does not add vCPUs:
// they were counted while it was warm). The one exception is max_disk_gib at `start`: snapshot bytes grow after an
// instance is created, so a start is refused while the tenant is over its disk quota (SPEC §2: "instance create /
// start").

import { exhausted } from "./errors.js";
import type { Instance, TenantQuota, WorkerPool } from "./model.js";
import { toSnakeCase } from "./validation.js";

const MIB_PER_GIB = 1024;
const BYTES_PER_GIB = 1024 ** 3;

/** Per-pool share of the running + warm usage. */
export interface PoolActiveUsage {
  running: number;
  warm: number;
  vcpus: number;
  memMib: number;
}

export interface TenantUsage {
  /** vCPUs of running + warm instances. */
  vcpus: number;
  /** Guest memory (MiB) of running + warm instances. */
  memMib: number;
  running: number;
  warm: number;
  pools: number;
  /** Instance records per pool, destroyed ones excluded. */
  instancesByPool: Record<string, number>;
  /** Data disks of non-destroyed instances plus snapshot bytes, in GiB (fractional). */
  diskGib: number;
  /**
   * Running + warm usage per pool, for `scale`, which replaces one pool's share. `computeUsage` always fills it;
   * when absent, a scale is checked as if the pool had no active instances (stricter, never looser).
   */
  activeByPool?: Record<string, PoolActiveUsage>;
}

/**
 * The tenant's usage. `pools` and `instances` must be the tenant's own. An instance whose pool is not in `pools`
 * still counts towards running/warm and its pool's instance count, but adds no vCPUs, memory or disk: its shape is
 * unknown.
 */
export function computeUsage(
  pools: readonly WorkerPool[],
  instances: readonly Instance[],
  snapshotBytes = 0,
): TenantUsage {
  const poolsById = new Map(pools.map((p) => [p.poolId, p]));
  const usage: TenantUsage = {
    vcpus: 0,
    memMib: 0,
    running: 0,
    warm: 0,
    pools: pools.length,
    instancesByPool: {},
    diskGib: snapshotBytes / BYTES_PER_GIB,
    activeByPool: {},
  };
  const activeByPool = usage.activeByPool as Record<string, PoolActiveUsage>;
  for (const instance of instances) {
    if (instance.status === "destroyed") continue;
    const pool = poolsById.get(instance.poolId);
    usage.instancesByPool[instance.poolId] = (usage.instancesByPool[instance.poolId] ?? 0) + 1;
    if (pool) usage.diskGib += pool.resources.dataDiskMib / MIB_PER_GIB;
    if (instance.status !== "running" && instance.status !== "warm") continue;
    const share = (activeByPool[instance.poolId] ??= { running: 0, warm: 0, vcpus: 0, memMib: 0 });
    if (instance.status === "running") {
      usage.running++;
      share.running++;
    } else {
      usage.warm++;
      share.warm++;
    }
    const vcpus = pool?.resources.vcpus ?? 0;
    const memMib = pool?.resources.memMib ?? 0;
    usage.vcpus += vcpus;
    usage.memMib += memMib;
    share.vcpus += vcpus;
    share.memMib += memMib;
  }
  return usage;
}

export type QuotaRequest =
  | { kind: "create_pool" }
  /** A new instance record with a data disk of `dataDiskMib` (its pool's resources). */
  | { kind: "create_instance"; poolId: string; dataDiskMib: number }
  /** start: stopped/ready → running; wake: sleeping → running; resume: warm → running. vcpus/memMib: the pool's. */
  | { kind: "start" | "wake" | "resume"; vcpus: number; memMib: number }
  /** running → warm. */
  | { kind: "warm" }
  /** A pool's new desired running/warm counts; vcpus/memMib per instance (the pool's resources). */
  | { kind: "scale"; poolId: string; running: number; warm: number; vcpus: number; memMib: number };

export interface QuotaViolationDetail {
  limit: keyof TenantQuota;
  limitValue: number;
  wouldUse: number;
}

/** The limits `request` would exceed; empty when it is allowed. */
export function quotaCheck(quota: TenantQuota, usage: TenantUsage, request: QuotaRequest): QuotaViolationDetail[] {
  const exceeded: QuotaViolationDetail[] = [];
  const check = (limit: keyof TenantQuota, wouldUse: number): void => {
    if (wouldUse > quota[limit]) exceeded.push({ limit, limitValue: quota[limit], wouldUse });
  };
  switch (request.kind) {
    case "create_pool":
      check("maxPools", usage.pools + 1);
      break;
    case "create_instance":
      check("maxInstancesPerPool", (usage.instancesByPool[request.poolId] ?? 0) + 1);
      if (request.dataDiskMib > 0) check("maxDiskGib", usage.diskGib + request.dataDiskMib / MIB_PER_GIB);
      break;
    case "start":
      check("maxVcpus", usage.vcpus + request.vcpus);
      check("maxMemMib", usage.memMib + request.memMib);
      check("maxRunning", usage.running + 1);
      check("maxDiskGib", usage.diskGib);
      break;
    case "wake":
      check("maxVcpus", usage.vcpus + request.vcpus);
      check("maxMemMib", usage.memMib + request.memMib);
      check("maxRunning", usage.running + 1);
      break;
    case "resume":
      // warm → running: the instance's vCPUs and memory are already counted, only the running count rises.
      check("maxRunning", usage.running + 1);
      break;
    case "warm":
      check("maxWarm", usage.warm + 1);
      break;
    case "scale": {
      const current = usage.activeByPool?.[request.poolId] ?? { running: 0, warm: 0, vcpus: 0, memMib: 0 };
      const active = request.running + request.warm;
      const vcpus = usage.vcpus - current.vcpus + active * request.vcpus;
      const memMib = usage.memMib - current.memMib + active * request.memMib;
      const running = usage.running - current.running + request.running;
      const warm = usage.warm - current.warm + request.warm;
      // Beyond SPEC's table (vCPUs and memory only), counts are checked too: a scale that could never be met would
      // only leave the pool blocked on quota.
      if (vcpus > usage.vcpus) check("maxVcpus", vcpus);
      if (memMib > usage.memMib) check("maxMemMib", memMib);
      if (running > usage.running) check("maxRunning", running);
      if (warm > usage.warm) check("maxWarm", warm);
      break;
    }
  }
  return exceeded;
}

function formatAmount(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}

export function describeQuotaViolation(v: QuotaViolationDetail): string {
  return `quota ${toSnakeCase(v.limit)} exceeded (limit ${formatAmount(v.limitValue)}, would use ${formatAmount(v.wouldUse)})`;
}

/** Throws `exhausted` naming every limit `request` would exceed, e.g. `tenant acme: quota max_pools exceeded (…)`. */
export function assertQuota(tenantId: string, quota: TenantQuota, usage: TenantUsage, request: QuotaRequest): void {
  const exceeded = quotaCheck(quota, usage, request);
  if (exceeded.length === 0) return;
  throw exhausted(`tenant ${tenantId}: ${exceeded.map(describeQuotaViolation).join("; ")}`);
}

/** One pool's desired counts and shape, as `desiredCountsExcess` reads them; a part left out was invalid. */
export interface DesiredPoolLoad {
  counts?: { running: number; warm: number; sleeping: number };
  resources?: { vcpus: number; memMib: number; dataDiskMib: number };
}

/** A sum over every pool's desired counts that is above one limit. */
export interface DesiredTotalExcess {
  limit: "maxRunning" | "maxWarm" | "maxVcpus" | "maxMemMib" | "maxDiskGib";
  /** running + warm instances, vCPUs, MiB or GiB (fractional), by `limit`. */
  total: number;
}

export interface DesiredCountsExcess {
  /** Indexes (into the pools given) of pools whose running + warm + sleeping is above max_instances_per_pool. */
  poolsAboveInstanceLimit: Array<{ index: number; instances: number }>;
  /** Totals across pools above a tenant-wide limit, in the order running, warm, vCPUs, memory, disk. */
  totals: DesiredTotalExcess[];
}

/**
 * Desired counts of all a tenant's pools against its quota: what reconcile would be refused for anyway, so a scale
 * or a desired-state document that could never be met is refused up front. vCPUs and memory count running + warm
 * instances; data disks count every desired instance.
 */
export function desiredCountsExcess(pools: readonly DesiredPoolLoad[], quota: TenantQuota): DesiredCountsExcess {
  const excess: DesiredCountsExcess = { poolsAboveInstanceLimit: [], totals: [] };
  const sums = { maxRunning: 0, maxWarm: 0, maxVcpus: 0, maxMemMib: 0, maxDiskGib: 0 };
  pools.forEach((pool, index) => {
    const c = pool.counts;
    if (!c) return;
    const instances = c.running + c.warm + c.sleeping;
    if (instances > quota.maxInstancesPerPool) excess.poolsAboveInstanceLimit.push({ index, instances });
    sums.maxRunning += c.running;
    sums.maxWarm += c.warm;
    if (!pool.resources) return;
    sums.maxVcpus += (c.running + c.warm) * pool.resources.vcpus;
    sums.maxMemMib += (c.running + c.warm) * pool.resources.memMib;
    sums.maxDiskGib += (instances * pool.resources.dataDiskMib) / MIB_PER_GIB;
  });
  for (const limit of ["maxRunning", "maxWarm", "maxVcpus", "maxMemMib", "maxDiskGib"] as const) {
    if (sums[limit] > quota[limit]) excess.totals.push({ limit, total: sums[limit] });
  }
  return excess;
}
