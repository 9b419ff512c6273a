import { describe, expect, it } from "vitest";
import {
  cgroupSegments,
  kernelHasCpuBurst,
  limitsViolations,
  missingControllers,
  parseCpuMax,
  parseCpuStatUsageUs,
  parseCpuacctUsageUs,
  parseLimitValue,
  parseProcs,
  v1LimitWrites,
  v2LimitWrites,
} from "../../../src/runtime/cgroups/cgroup-files.js";

const key = { tenantId: "acme", poolId: "web", instanceId: "i-0123abcd" };
const limits = { memoryBytes: 463052800, cpuQuotaUs: 200000, cpuPeriodUs: 100000, cpuBurstUs: 150000, pidsMax: 64 };

describe("cgroup paths and files", () => {
  it("nests parent/tenant/pool/instance and refuses IDs that would escape the tree", () => {
    expect(cgroupSegments("mvm", key)).toEqual(["mvm", "acme", "web", "i-0123abcd"]);
    expect(() => cgroupSegments("mvm", { ...key, tenantId: ".." })).toThrow(/tenant_id: must be/);
    expect(() => cgroupSegments("mvm", { ...key, poolId: "a/b" })).toThrow(/pool_id: must be/);
    expect(() => cgroupSegments("mvm", { ...key, instanceId: "i-../../x" })).toThrow(/instance_id: must be/);
    expect(() => cgroupSegments("../mvm", key)).toThrow(/parent: must be/);
  });

  it("writes v1 limits with the CFS period before the quota, and the burst cleared before the quota and set after it", () => {
    expect(v1LimitWrites(limits)).toEqual([
      { controller: "memory", file: "memory.limit_in_bytes", value: "463052800" },
      { controller: "cpu", file: "cpu.cfs_burst_us", value: "0", optional: true },
      { controller: "cpu", file: "cpu.cfs_period_us", value: "100000" },
      { controller: "cpu", file: "cpu.cfs_quota_us", value: "200000" },
      { controller: "cpu", file: "cpu.cfs_burst_us", value: "150000", optional: true },
      { controller: "pids", file: "pids.max", value: "64" },
    ]);
    expect(v1LimitWrites({ ...limits, cpuQuotaUs: -1, cpuBurstUs: 0, pidsMax: -1 }).map((w) => w.value)).toEqual(["463052800", "0", "100000", "-1", "0", "max"]);
  });

  it("writes v2 limits in v2's spelling", () => {
    expect(v2LimitWrites(limits)).toEqual([
      { controller: "memory", file: "memory.max", value: "463052800" },
      { controller: "cpu", file: "cpu.max.burst", value: "0", optional: true },
      { controller: "cpu", file: "cpu.max", value: "200000 100000" },
      { controller: "cpu", file: "cpu.max.burst", value: "150000", optional: true },
      { controller: "pids", file: "pids.max", value: "64" },
    ]);
    expect(v2LimitWrites({ ...limits, memoryBytes: -1, cpuQuotaUs: -1, cpuBurstUs: 0 }).map((w) => w.value)).toEqual(["max", "0", "max 100000", "0", "64"]);
  });

  it("refuses limits the kernel would refuse", () => {
    expect(limitsViolations(limits)).toEqual([]);
    expect(limitsViolations({ ...limits, cpuBurstUs: limits.cpuQuotaUs })).toEqual([]);
    const fields = limitsViolations({ memoryBytes: 0, cpuQuotaUs: 500, cpuPeriodUs: 5_000_000, cpuBurstUs: -1, pidsMax: 1.5 }).map((v) => v.field);
    expect(fields).toEqual(["memory_bytes", "cpu_quota_us", "cpu_period_us", "cpu_burst_us", "pids_max"]);
    // A burst above the quota, or any burst without a quota.
    expect(limitsViolations({ ...limits, cpuBurstUs: 200001 })).toEqual([
      { field: "cpu_burst_us", rule: "must be an integer from 0 to cpu_quota_us (0 when the quota is -1)" },
    ]);
    expect(limitsViolations({ ...limits, cpuQuotaUs: -1, cpuBurstUs: 1000 }).map((v) => v.field)).toEqual(["cpu_burst_us"]);
    expect(limitsViolations({ ...limits, cpuBurstUs: 0.5 }).map((v) => v.field)).toEqual(["cpu_burst_us"]);
  });

  it("reads limits and usage back, with every spelling of unlimited as -1", () => {
    expect(parseLimitValue("463052800\n", "memory.max")).toBe(463052800);
    expect(parseLimitValue("max\n", "pids.max")).toBe(-1);
    expect(parseLimitValue("-1\n", "cpu.cfs_quota_us")).toBe(-1);
    expect(parseLimitValue("9223372036854771712\n", "memory.limit_in_bytes")).toBe(-1);
    expect(() => parseLimitValue("lots", "memory.max")).toThrow(/memory.max: unexpected content "lots"/);
    expect(parseCpuMax("max 100000\n")).toEqual({ quotaUs: -1, periodUs: 100000 });
    expect(parseCpuMax("150000 100000\n")).toEqual({ quotaUs: 150000, periodUs: 100000 });
    expect(parseCpuStatUsageUs("usage_usec 81234\nuser_usec 60000\nsystem_usec 21234\n")).toBe(81234);
    expect(parseCpuStatUsageUs("nr_periods 0\nnr_throttled 0\n")).toBeNull();
    expect(parseCpuacctUsageUs("1917637566815\n")).toBe(1917637566);
    expect(parseProcs("12\n345\n\n")).toEqual([12, 345]);
    expect(parseProcs("")).toEqual([]);
  });

  it("finds the controllers a subtree_control line lacks", () => {
    expect(missingControllers("cpuset cpu io memory pids\n", ["memory", "cpu", "pids"])).toEqual([]);
    expect(missingControllers("cpu io\n", ["memory", "cpu", "pids"])).toEqual(["memory", "pids"]);
    expect(missingControllers("", ["memory"])).toEqual(["memory"]);
    expect(missingControllers("+memory +cpu", ["memory", "cpu", "pids"])).toEqual(["pids"]);
  });

  it("knows which kernels have the CPU burst files (5.14 and later)", () => {
    expect(kernelHasCpuBurst("5.14.0-1-amd64")).toBe(true);
    expect(kernelHasCpuBurst("6.1.0-56-cloud-amd64")).toBe(true);
    expect(kernelHasCpuBurst("5.13.19")).toBe(false);
    expect(kernelHasCpuBurst("4.19.0-27-amd64")).toBe(false);
    expect(kernelHasCpuBurst("unknown")).toBe(false);
  });
});
