import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { limitsViolations } from "../../../src/runtime/cgroups/cgroup-files.js";
import { cgroupLimitsFor } from "../../../src/runtime/cgroups/cgroup-limits.js";

const MIB = 1024 * 1024;

describe("cgroup limits for an instance", () => {
  it("gives a 2-vCPU 256 MiB guest 256 MiB + 160 MiB + 10 % (page-rounded), two CPUs with as much again as burst, 64 pids", () => {
    // 10 % of 256 MiB is 26843545.6 bytes, rounded up to whole 4 KiB pages: 6554 pages.
    expect(cgroupLimitsFor({ vcpus: 2, memMib: 256 })).toEqual({
      memoryBytes: 268435456 + 167772160 + 6554 * 4096,
      cpuQuotaUs: 200000,
      cpuPeriodUs: 100000,
      cpuBurstUs: 200000,
      pidsMax: 64,
    });
  });

  it("always leaves room for the VMM and stays page-aligned (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 64, max: 262144 }), (vcpus, memMib) => {
        const l = cgroupLimitsFor({ vcpus, memMib });
        expect(l.memoryBytes % 4096).toBe(0);
        expect(l.memoryBytes).toBeGreaterThanOrEqual((memMib + 160) * MIB + memMib * MIB * 0.1);
        expect(l.memoryBytes).toBeLessThan((memMib + 160) * MIB + memMib * MIB * 0.1 + 4096);
        expect(l.cpuQuotaUs / l.cpuPeriodUs).toBe(vcpus);
        // The most the kernel accepts, and what the adapter's own check lets through.
        expect(l.cpuBurstUs).toBe(l.cpuQuotaUs);
        expect(limitsViolations(l)).toEqual([]);
        const bigger = cgroupLimitsFor({ vcpus, memMib: memMib + 1 });
        expect(bigger.memoryBytes).toBeGreaterThan(l.memoryBytes);
      }),
    );
  });
});
