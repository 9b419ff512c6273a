// Pure knowledge of cgroupfs for both versions: where an instance's groups live, which files carry its limits and
// in what spelling, and how usage and limits read back. The adapter (linux-cgroups.ts) only does the file I/O.
//
// Layout: `<root>/<parent>/<tenant>/<pool>/<instance>` in the v2 tree, and the same relative path under each v1
// controller's hierarchy (`<root>/memory/…`, `<root>/cpu/…`, …). "Unlimited" is -1 on both sides of this module,
// whatever the kernel spells it (`max`, `-1`, or v1 memory's page-rounded 2^63).

import type { CgroupKey, CgroupLimits } from "../../core/data-plane-ports.js";
import { invalid } from "../../core/errors.js";
import type { FieldViolation } from "../../core/errors.js";
import { idViolations, instanceIdViolations } from "../../core/ids.js";

export const UNLIMITED = -1;

/** v1 hierarchies an instance is placed in; cpuacct is used too where it is mounted separately from cpu. */
export const V1_REQUIRED_CONTROLLERS = ["memory", "cpu", "pids"] as const;
export const V1_ACCOUNTING_CONTROLLER = "cpuacct";
export type V1Controller = (typeof V1_REQUIRED_CONTROLLERS)[number] | typeof V1_ACCOUNTING_CONTROLLER;

export const V2_CONTROLLERS = ["memory", "cpu", "pids"] as const;

/** Whether a kernel of this release (`uname -r`) has the CPU burst files; an unreadable release counts as not. */
export function kernelHasCpuBurst(release: string): boolean {
  const m = /^(\d+)\.(\d+)/.exec(release);
  if (m === null) return false;
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return major > 5 || (major === 5 && minor >= 14);
}

/** Where each version keeps the CPU burst (kernel 5.14 and later). */
export const V1_CPU_BURST_FILE = "cpu.cfs_burst_us";
export const V2_CPU_BURST_FILE = "cpu.max.burst";

const PARENT_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;
export const PARENT_RULE = "must be 1-64 characters of [A-Za-z0-9_.-], not starting with . or -";

export function parentViolations(parent: string): FieldViolation[] {
  return PARENT_PATTERN.test(parent) ? [] : [{ field: "parent", rule: PARENT_RULE }];
}

/** Path segments below the hierarchy root: parent, tenant, pool, instance. IDs are checked: they become paths. */
export function cgroupSegments(parent: string, key: CgroupKey): [string, string, string, string] {
  const violations = [
    ...parentViolations(parent),
    ...idViolations(key.tenantId, "tenant_id"),
    ...idViolations(key.poolId, "pool_id"),
    ...instanceIdViolations(key.instanceId, "instance_id"),
  ];
  if (violations.length > 0) throw invalid(violations);
  return [parent, key.tenantId, key.poolId, key.instanceId];
}

export function limitsViolations(limits: CgroupLimits): FieldViolation[] {
  const v: FieldViolation[] = [];
  const positiveOrUnlimited = (value: number, field: string, min = 1) => {
    if (!(Number.isSafeInteger(value) && (value >= min || value === UNLIMITED))) {
      v.push({ field, rule: `must be an integer of at least ${min}, or -1 for no limit` });
    }
  };
  positiveOrUnlimited(limits.memoryBytes, "memory_bytes", 4096);
  // The kernel refuses CFS quotas under 1 ms and periods outside 1 ms – 1 s.
  positiveOrUnlimited(limits.cpuQuotaUs, "cpu_quota_us", 1000);
  if (!(Number.isSafeInteger(limits.cpuPeriodUs) && limits.cpuPeriodUs >= 1000 && limits.cpuPeriodUs <= 1_000_000)) {
    v.push({ field: "cpu_period_us", rule: "must be an integer from 1000 to 1000000" });
  }
  const burstCeiling = limits.cpuQuotaUs === UNLIMITED ? 0 : limits.cpuQuotaUs;
  if (!(Number.isSafeInteger(limits.cpuBurstUs) && limits.cpuBurstUs >= 0 && limits.cpuBurstUs <= burstCeiling)) {
    // The kernel refuses a burst above the quota; without a quota there is nothing to burst beyond.
    v.push({ field: "cpu_burst_us", rule: "must be an integer from 0 to cpu_quota_us (0 when the quota is -1)" });
  }
  positiveOrUnlimited(limits.pidsMax, "pids_max");
  return v;
}

export function checkLimits(limits: CgroupLimits): void {
  const violations = limitsViolations(limits);
  if (violations.length > 0) throw invalid(violations);
}

export interface LimitFileWrite<C extends string = string> {
  controller: C;
  file: string;
  value: string;
  /** The file exists only on some kernels (burst: 5.14 and later); where it does not, the write is skipped. */
  optional?: true;
}

/**
 * v1 limit files in the order they must be written: the period before the quota that is measured against it, and
 * the burst cleared before the quota changes, since the kernel refuses any quota below the burst in force.
 */
export function v1LimitWrites(limits: CgroupLimits): LimitFileWrite<V1Controller>[] {
  return [
    { controller: "memory", file: "memory.limit_in_bytes", value: String(limits.memoryBytes) },
    { controller: "cpu", file: V1_CPU_BURST_FILE, value: "0", optional: true },
    { controller: "cpu", file: "cpu.cfs_period_us", value: String(limits.cpuPeriodUs) },
    { controller: "cpu", file: "cpu.cfs_quota_us", value: String(limits.cpuQuotaUs) },
    { controller: "cpu", file: V1_CPU_BURST_FILE, value: String(limits.cpuBurstUs), optional: true },
    { controller: "pids", file: "pids.max", value: limits.pidsMax === UNLIMITED ? "max" : String(limits.pidsMax) },
  ];
}

function v2Value(n: number): string {
  return n === UNLIMITED ? "max" : String(n);
}

/** v2 limit files in the order they must be written (the burst around the quota, as in v1). */
export function v2LimitWrites(limits: CgroupLimits): LimitFileWrite<(typeof V2_CONTROLLERS)[number]>[] {
  return [
    { controller: "memory", file: "memory.max", value: v2Value(limits.memoryBytes) },
    { controller: "cpu", file: V2_CPU_BURST_FILE, value: "0", optional: true },
    { controller: "cpu", file: "cpu.max", value: `${v2Value(limits.cpuQuotaUs)} ${limits.cpuPeriodUs}` },
    { controller: "cpu", file: V2_CPU_BURST_FILE, value: String(limits.cpuBurstUs), optional: true },
    { controller: "pids", file: "pids.max", value: v2Value(limits.pidsMax) },
  ];
}

/**
 * A limit as the kernel prints it. v1 memory has no "max": its unlimited value is PAGE_COUNTER_MAX pages, just
 * under 2^63 bytes, far beyond any real limit and beyond what a JS number holds exactly.
 */
export function parseLimitValue(text: string, file: string): number {
  const t = text.trim();
  if (t === "max" || t === "-1") return UNLIMITED;
  if (!/^[0-9]+$/.test(t)) throw new Error(`${file}: unexpected content "${t}"`);
  const n = Number(t);
  return Number.isSafeInteger(n) ? n : UNLIMITED;
}

/** v2 `cpu.max`: `<quota|max> <period>`. */
export function parseCpuMax(text: string): { quotaUs: number; periodUs: number } {
  const [quota, period] = text.trim().split(/\s+/);
  if (quota === undefined || period === undefined) throw new Error(`cpu.max: unexpected content "${text.trim()}"`);
  return { quotaUs: parseLimitValue(quota, "cpu.max"), periodUs: parseLimitValue(period, "cpu.max") };
}

/** v2 `cpu.stat` (and v1 `cpu.stat` on kernels that report it): the `usage_usec` line, or null. */
export function parseCpuStatUsageUs(text: string): number | null {
  const m = /^usage_usec (\d+)$/m.exec(text);
  return m ? Number(m[1]) : null;
}

/** v1 `cpuacct.usage` is nanoseconds. */
export function parseCpuacctUsageUs(text: string): number {
  const t = text.trim();
  if (!/^[0-9]+$/.test(t)) throw new Error(`cpuacct.usage: unexpected content "${t}"`);
  return Math.floor(Number(t) / 1000);
}

/** Parses a `cgroup.procs` file: one pid per line. */
export function parseProcs(text: string): number[] {
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "")
    .map(Number);
}

/** Controllers of `wanted` missing from a `cgroup.subtree_control` or `cgroup.controllers` line. */
export function missingControllers(line: string, wanted: readonly string[]): string[] {
  // The kernel prints bare names; a stand-in tree keeps the `+name` that was written to it.
  const present = new Set(line.trim().split(/\s+/).map((token) => token.replace(/^\+/, "")));
  return wanted.filter((c) => !present.has(c));
}
