import { describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import { DEFAULT_QUOTA, DEFAULT_SLEEP_POLICY } from "../../../src/core/model.js";
import type { Instance, InstanceStatus, TenantQuota, WorkerPool } from "../../../src/core/model.js";
import { assertQuota, computeUsage, quotaCheck } from "../../../src/core/quota.js";
import type { QuotaRequest, TenantUsage } from "../../../src/core/quota.js";

const NOW = "2025-01-01T00:00:00.000Z";
const GIB = 1024 ** 3;

function pool(poolId: string, vcpus: number, memMib: number, dataDiskMib = 0): WorkerPool {
  return {
    schemaVersion: 1,
    tenantId: "acme",
    poolId,
    image: { kind: "debian", suite: "bookworm", packages: [], extraFiles: {} },
    resources: { vcpus, memMib, dataDiskMib },
    desiredCounts: { running: 0, warm: 0, sleeping: 0 },
    hypervisor: "auto",
    seccompPolicy: "default",
    snapshotCompression: "none",
    metadataEnabled: true,
    sleepPolicy: { ...DEFAULT_SLEEP_POLICY },
    pinned: false,
    critical: false,
    currentRevision: "",
    createdAt: NOW,
    updatedAt: NOW,
  };
}

let nextId = 0;
function instance(poolId: string, status: InstanceStatus): Instance {
  nextId++;
  return {
    schemaVersion: 1,
    instanceId: `i-${nextId.toString(16).padStart(8, "0")}`,
    tenantId: "acme",
    poolId,
    status,
    revision: "",
    net: { tapName: "tn1i3", mac: "02:fc:00:01:00:03", guestIp: "10.0.0.3", gatewayIp: "10.0.0.1", prefixLen: 24 },
    vmm: null,
    conditions: [],
    idle: { idleS: 0, cpuPct: 0, netBytes: 0, lastSampleAt: null },
    createdAt: NOW,
    updatedAt: NOW,
    lastStartedAt: null,
    lastStoppedAt: null,
    lastSnapshotAt: null,
    healthy: true,
    lastHealthCheckAt: null,
  };
}

function usage(overrides: Partial<TenantUsage> = {}): TenantUsage {
  return { vcpus: 0, memMib: 0, running: 0, warm: 0, pools: 0, instancesByPool: {}, diskGib: 0, ...overrides };
}

const quota: TenantQuota = { ...DEFAULT_QUOTA };

describe("computeUsage", () => {
  it("counts vCPUs and memory of running and warm instances only, by their pool's shape", () => {
    const pools = [pool("web", 2, 1024, 2048), pool("db", 4, 4096)];
    const instances = [
      instance("web", "running"),
      instance("web", "warm"),
      instance("web", "sleeping"),
      instance("web", "stopped"),
      instance("web", "destroyed"),
      instance("db", "running"),
      instance("db", "created"),
    ];
    const u = computeUsage(pools, instances);
    expect(u.vcpus).toBe(2 + 2 + 4);
    expect(u.memMib).toBe(1024 + 1024 + 4096);
    expect(u.running).toBe(2);
    expect(u.warm).toBe(1);
    expect(u.pools).toBe(2);
    expect(u.instancesByPool).toEqual({ web: 4, db: 2 });
    // 4 non-destroyed web instances with 2 GiB data disks each.
    expect(u.diskGib).toBe(8);
    expect(u.activeByPool).toEqual({
      web: { running: 1, warm: 1, vcpus: 4, memMib: 2048 },
      db: { running: 1, warm: 0, vcpus: 4, memMib: 4096 },
    });
  });

  it("adds snapshot bytes to disk usage in fractional GiB", () => {
    const u = computeUsage([pool("web", 1, 128, 512)], [instance("web", "sleeping")], GIB * 1.5);
    expect(u.diskGib).toBeCloseTo(0.5 + 1.5, 10);
  });

  it("counts an instance of an unknown pool without vCPUs, memory or disk", () => {
    const u = computeUsage([], [instance("gone", "running")]);
    expect(u).toMatchObject({ running: 1, vcpus: 0, memMib: 0, diskGib: 0, instancesByPool: { gone: 1 } });
  });

  it("is empty for a tenant with nothing", () => {
    expect(computeUsage([], [])).toMatchObject({ vcpus: 0, memMib: 0, running: 0, warm: 0, pools: 0, diskGib: 0 });
  });
});

/** Limits each request kind is checked against; every other limit must never appear for it. */
describe("quotaCheck: each limit allowed at the edge, refused one past it", () => {
  interface EdgeCase {
    name: string;
    limit: keyof TenantQuota;
    atEdge: [TenantUsage, QuotaRequest];
    pastEdge: [TenantUsage, QuotaRequest];
    wouldUse: number;
  }
  const cases: EdgeCase[] = [
    {
      name: "max_pools on pool create",
      limit: "maxPools",
      atEdge: [usage({ pools: 3 }), { kind: "create_pool" }],
      pastEdge: [usage({ pools: 4 }), { kind: "create_pool" }],
      wouldUse: 5,
    },
    {
      name: "max_instances_per_pool on instance create",
      limit: "maxInstancesPerPool",
      atEdge: [usage({ instancesByPool: { web: 15, db: 16 } }), { kind: "create_instance", poolId: "web", dataDiskMib: 0 }],
      pastEdge: [usage({ instancesByPool: { web: 16 } }), { kind: "create_instance", poolId: "web", dataDiskMib: 0 }],
      wouldUse: 17,
    },
    {
      name: "max_disk_gib on instance create",
      limit: "maxDiskGib",
      atEdge: [usage({ diskGib: 99 }), { kind: "create_instance", poolId: "web", dataDiskMib: 1024 }],
      pastEdge: [usage({ diskGib: 99 }), { kind: "create_instance", poolId: "web", dataDiskMib: 1025 }],
      wouldUse: 99 + 1025 / 1024,
    },
    {
      name: "max_disk_gib on start (snapshots grew past the quota)",
      limit: "maxDiskGib",
      atEdge: [usage({ diskGib: 100 }), { kind: "start", vcpus: 1, memMib: 128 }],
      pastEdge: [usage({ diskGib: 100.5 }), { kind: "start", vcpus: 1, memMib: 128 }],
      wouldUse: 100.5,
    },
    ...(["start", "wake"] as const).flatMap((kind): EdgeCase[] => [
      {
        name: `max_vcpus on ${kind}`,
        limit: "maxVcpus",
        atEdge: [usage({ vcpus: 14 }), { kind, vcpus: 2, memMib: 128 }],
        pastEdge: [usage({ vcpus: 14 }), { kind, vcpus: 3, memMib: 128 }],
        wouldUse: 17,
      },
      {
        name: `max_mem_mib on ${kind}`,
        limit: "maxMemMib",
        atEdge: [usage({ memMib: 32768 - 512 }), { kind, vcpus: 1, memMib: 512 }],
        pastEdge: [usage({ memMib: 32768 - 511 }), { kind, vcpus: 1, memMib: 512 }],
        wouldUse: 32769,
      },
      {
        name: `max_running on ${kind}`,
        limit: "maxRunning",
        atEdge: [usage({ running: 7 }), { kind, vcpus: 1, memMib: 128 }],
        pastEdge: [usage({ running: 8 }), { kind, vcpus: 1, memMib: 128 }],
        wouldUse: 9,
      },
    ]),
    {
      name: "max_running on resume",
      limit: "maxRunning",
      atEdge: [usage({ running: 7, warm: 1 }), { kind: "resume", vcpus: 1, memMib: 128 }],
      pastEdge: [usage({ running: 8, warm: 1 }), { kind: "resume", vcpus: 1, memMib: 128 }],
      wouldUse: 9,
    },
    {
      name: "max_warm on warm",
      limit: "maxWarm",
      atEdge: [usage({ running: 1, warm: 3 }), { kind: "warm" }],
      pastEdge: [usage({ running: 1, warm: 4 }), { kind: "warm" }],
      wouldUse: 5,
    },
    {
      name: "max_vcpus on scale",
      limit: "maxVcpus",
      atEdge: [usage({ vcpus: 8 }), { kind: "scale", poolId: "web", running: 4, warm: 0, vcpus: 2, memMib: 128 }],
      pastEdge: [usage({ vcpus: 8 }), { kind: "scale", poolId: "web", running: 3, warm: 1, vcpus: 3, memMib: 128 }],
      wouldUse: 20,
    },
    {
      name: "max_mem_mib on scale",
      limit: "maxMemMib",
      atEdge: [usage(), { kind: "scale", poolId: "web", running: 2, warm: 2, vcpus: 1, memMib: 8192 }],
      pastEdge: [usage(), { kind: "scale", poolId: "web", running: 2, warm: 2, vcpus: 1, memMib: 8193 }],
      wouldUse: 4 * 8193,
    },
    {
      name: "max_running on scale",
      limit: "maxRunning",
      atEdge: [usage({ running: 2 }), { kind: "scale", poolId: "web", running: 6, warm: 0, vcpus: 1, memMib: 128 }],
      pastEdge: [usage({ running: 2 }), { kind: "scale", poolId: "web", running: 7, warm: 0, vcpus: 1, memMib: 128 }],
      wouldUse: 9,
    },
    {
      name: "max_warm on scale",
      limit: "maxWarm",
      atEdge: [usage(), { kind: "scale", poolId: "web", running: 0, warm: 4, vcpus: 1, memMib: 128 }],
      pastEdge: [usage(), { kind: "scale", poolId: "web", running: 0, warm: 5, vcpus: 1, memMib: 128 }],
      wouldUse: 5,
    },
  ];

  for (const c of cases) {
    it(c.name, () => {
      expect(quotaCheck(quota, ...c.atEdge)).toEqual([]);
      const refused = quotaCheck(quota, ...c.pastEdge);
      expect(refused).toHaveLength(1);
      expect(refused[0]?.limit).toBe(c.limit);
      expect(refused[0]?.limitValue).toBe(quota[c.limit]);
      expect(refused[0]?.wouldUse).toBeCloseTo(c.wouldUse, 10);
    });
  }
});

describe("quotaCheck: which limits each operation touches", () => {
  // Every limit at zero and usage far above them: only the limits an operation raises may refuse it.
  const zero: TenantQuota = {
    maxVcpus: 0,
    maxMemMib: 0,
    maxRunning: 0,
    maxWarm: 0,
    maxPools: 0,
    maxInstancesPerPool: 0,
    maxDiskGib: 0,
  };
  const busy = usage({ vcpus: 50, memMib: 50000, running: 20, warm: 20, pools: 9, instancesByPool: { web: 30 }, diskGib: 500 });
  const limitsOf = (request: QuotaRequest) => quotaCheck(zero, busy, request).map((v) => v.limit).sort();

  it("create_pool: max_pools only", () => {
    expect(limitsOf({ kind: "create_pool" })).toEqual(["maxPools"]);
  });
  it("create_instance: max_instances_per_pool and max_disk_gib", () => {
    expect(limitsOf({ kind: "create_instance", poolId: "web", dataDiskMib: 1 })).toEqual(["maxDiskGib", "maxInstancesPerPool"]);
  });
  it("create_instance without a data disk does not add disk", () => {
    expect(limitsOf({ kind: "create_instance", poolId: "web", dataDiskMib: 0 })).toEqual(["maxInstancesPerPool"]);
  });
  it("start: vCPUs, memory, running and disk", () => {
    expect(limitsOf({ kind: "start", vcpus: 1, memMib: 128 })).toEqual(["maxDiskGib", "maxMemMib", "maxRunning", "maxVcpus"]);
  });
  it("wake: vCPUs, memory and running", () => {
    expect(limitsOf({ kind: "wake", vcpus: 1, memMib: 128 })).toEqual(["maxMemMib", "maxRunning", "maxVcpus"]);
  });
  it("resume: running only, since a warm instance's vCPUs and memory are already counted", () => {
    expect(limitsOf({ kind: "resume", vcpus: 1, memMib: 128 })).toEqual(["maxRunning"]);
  });
  it("warm: max_warm only", () => {
    expect(limitsOf({ kind: "warm" })).toEqual(["maxWarm"]);
  });
});

describe("quotaCheck: resume and warm move instances between counts", () => {
  it("resume at the vCPU limit is allowed: vCPUs do not change", () => {
    const u = usage({ vcpus: 16, memMib: 32768, running: 3, warm: 1 });
    expect(quotaCheck(quota, u, { kind: "resume", vcpus: 4, memMib: 8192 })).toEqual([]);
  });

  it("start at the vCPU limit is refused: vCPUs grow", () => {
    const u = usage({ vcpus: 16, running: 3 });
    expect(quotaCheck(quota, u, { kind: "start", vcpus: 1, memMib: 128 }).map((v) => v.limit)).toEqual(["maxVcpus"]);
  });

  it("warm with every running slot taken is allowed (running drops by one)", () => {
    expect(quotaCheck(quota, usage({ running: 8, warm: 0 }), { kind: "warm" })).toEqual([]);
  });
});

describe("quotaCheck: scale replaces the pool's current share", () => {
  it("scaling a pool to what it already runs is allowed even at the limit", () => {
    const pools = [pool("web", 4, 1024), pool("db", 4, 1024)];
    const instances = [instance("web", "running"), instance("web", "running"), instance("db", "running"), instance("db", "warm")];
    const u = computeUsage(pools, instances);
    expect(u.vcpus).toBe(16);
    expect(quotaCheck(quota, u, { kind: "scale", poolId: "web", running: 2, warm: 0, vcpus: 4, memMib: 1024 })).toEqual([]);
  });

  it("scaling one pool up counts the other pools' usage", () => {
    const pools = [pool("web", 4, 1024), pool("db", 4, 1024)];
    const u = computeUsage(pools, [instance("db", "running"), instance("db", "running")]);
    // db holds 8 vCPUs; web may take 8 more, not 12.
    expect(quotaCheck(quota, u, { kind: "scale", poolId: "web", running: 2, warm: 0, vcpus: 4, memMib: 1024 })).toEqual([]);
    const refused = quotaCheck(quota, u, { kind: "scale", poolId: "web", running: 3, warm: 0, vcpus: 4, memMib: 1024 });
    expect(refused).toEqual([{ limit: "maxVcpus", limitValue: 16, wouldUse: 20 }]);
  });

  it("scaling down is never refused, even above a lowered quota", () => {
    const u = computeUsage([pool("web", 8, 1024)], Array.from({ length: 4 }, () => instance("web", "running")));
    const lowered = { ...quota, maxVcpus: 4, maxRunning: 1 };
    expect(quotaCheck(lowered, u, { kind: "scale", poolId: "web", running: 2, warm: 0, vcpus: 8, memMib: 1024 })).toEqual([]);
  });

  it("without activeByPool a scale is checked as if the pool had no active instances", () => {
    const u = usage({ vcpus: 8 });
    const refused = quotaCheck(quota, u, { kind: "scale", poolId: "web", running: 3, warm: 0, vcpus: 4, memMib: 128 });
    expect(refused.map((v) => [v.limit, v.wouldUse])).toEqual([["maxVcpus", 20]]);
  });
});

describe("assertQuota", () => {
  it("passes silently when allowed", () => {
    expect(() => assertQuota("acme", quota, usage({ pools: 3 }), { kind: "create_pool" })).not.toThrow();
  });

  it("throws exhausted naming the limit in snake_case with limit and would-use", () => {
    let caught: unknown;
    try {
      assertQuota("acme", quota, usage({ pools: 4 }), { kind: "create_pool" });
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(MvmError);
    expect((caught as MvmError).kind).toBe("exhausted");
    expect((caught as MvmError).message).toBe("tenant acme: quota max_pools exceeded (limit 4, would use 5)");
  });

  it("lists every exceeded limit", () => {
    const u = usage({ vcpus: 16, memMib: 32768, running: 8 });
    expect(() => assertQuota("acme", quota, u, { kind: "wake", vcpus: 2, memMib: 256 })).toThrow(
      "tenant acme: quota max_vcpus exceeded (limit 16, would use 18); " +
        "quota max_mem_mib exceeded (limit 32768, would use 33024); " +
        "quota max_running exceeded (limit 8, would use 9)",
    );
  });

  it("shows fractional disk usage with two decimals", () => {
    expect(() =>
      assertQuota("acme", quota, usage({ diskGib: 99.5 }), { kind: "create_instance", poolId: "web", dataDiskMib: 1024 }),
    ).toThrow("quota max_disk_gib exceeded (limit 100, would use 100.50)");
  });
});
