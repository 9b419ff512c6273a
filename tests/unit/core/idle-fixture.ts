// A node of in-memory test doubles for the idle sampler and policy: a clock the test moves, cgroup CPU and TAP byte
// counters the test sets, an audit log kept in an array, and instances started through the real start use case.

import type { CgroupKey } from "../../../src/core/data-plane-ports.js";
import type { Instance, SleepPolicy } from "../../../src/core/model.js";
import type { AuditEntry, AuditRecord } from "../../../src/core/observability-ports.js";
import { audited } from "../../../src/core/use-cases/audit-trail.js";
import type { IdleActionRunners } from "../../../src/core/use-cases/idle.js";
import { createInstance, type InstanceKey } from "../../../src/core/use-cases/instances.js";
import { startInstance, stopInstance, type DataPlaneDeps } from "../../../src/core/use-cases/lifecycle.js";
import { createPool } from "../../../src/core/use-cases/pools.js";
import { createTenant } from "../../../src/core/use-cases/tenants.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { fakeDataPlaneDeps } from "../../helpers/fake-data-plane-deps.js";

export const T0 = 1_700_000_000_000;

export const TEST_POLICY: SleepPolicy = { warmAfterIdleS: 30, sleepAfterIdleS: 90, cpuIdlePct: 5, netIdleBytes: 1024 };

export interface IdleNode {
  deps: DataPlaneDeps;
  plane: FakeDataPlane;
  audit: AuditRecord[];
  /** Instance writes, in order. */
  writes: Instance[];
  /** Cumulative CPU µs per instance ID. */
  cpuUs: Map<string, number>;
  /** Cumulative TAP bytes (rx + tx) per TAP name. */
  tapBytes: Map<string, number>;
  /** Instance IDs whose counters fail to read. */
  failingCounters: Set<string>;
  advance(ms: number): void;
  now(): number;
  pool(tenantId: string, poolId: string, spec?: { pinned?: boolean; critical?: boolean; vcpus?: number; sleepPolicy?: Partial<SleepPolicy> }): Promise<void>;
  running(tenantId: string, poolId: string): Promise<Instance>;
  get(i: InstanceKey): Promise<Instance>;
  stop(i: InstanceKey): Promise<Instance>;
  /** Adds CPU time as a share of `ms` of wall time on one vCPU, and network bytes. */
  use(i: Instance, cpuUs: number, netBytes?: number): void;
}

export async function idleNode(): Promise<IdleNode> {
  const plane = new FakeDataPlane();
  const base = fakeDataPlaneDeps(plane);
  let now = T0;
  const audit: AuditRecord[] = [];
  const writes: Instance[] = [];
  const cpuUs = new Map<string, number>();
  const tapBytes = new Map<string, number>();
  const failingCounters = new Set<string>();
  const store = base.store;
  const putInstance = store.putInstance.bind(store);
  store.putInstance = async (i: Instance) => {
    writes.push(i);
    await putInstance(i);
  };
  const deps: DataPlaneDeps = {
    ...base,
    clock: { nowMs: () => now },
    audit: {
      async append(record: AuditRecord): Promise<AuditEntry> {
        audit.push(record);
        return { ...record, seq: audit.length, at: new Date(now).toISOString(), prevHash: "", hash: "" };
      },
    },
    cgroups: {
      ...base.cgroups,
      async usage(key: CgroupKey) {
        if (failingCounters.has(key.instanceId)) throw new Error(`cgroup of ${key.instanceId} unreadable`);
        const real = await base.cgroups.usage(key);
        return real === null ? null : { ...real, cpuUsageUs: cpuUs.get(key.instanceId) ?? 0 };
      },
    },
    network: {
      ...base.network,
      async tapCounters(tapName: string) {
        const real = await base.network.tapCounters(tapName);
        return real === null ? null : { rxBytes: tapBytes.get(tapName) ?? 0, txBytes: 0 };
      },
    },
  };
  const node: IdleNode = {
    deps,
    plane,
    audit,
    writes,
    cpuUs,
    tapBytes,
    failingCounters,
    advance: (ms) => void (now += ms),
    now: () => now,
    async pool(tenantId, poolId, spec = {}) {
      if ((await deps.store.getTenant(tenantId)) === null) await createTenant(deps, { tenantId });
      await createPool(
        deps,
        { tenantId, poolId },
        {
          resources: { vcpus: spec.vcpus ?? 1, memMib: 256, dataDiskMib: 0 },
          sleepPolicy: { ...TEST_POLICY, ...spec.sleepPolicy },
          ...(spec.pinned !== undefined ? { pinned: spec.pinned } : {}),
          ...(spec.critical !== undefined ? { critical: spec.critical } : {}),
        },
      );
      const pool = await deps.store.getPool(tenantId, poolId);
      await deps.store.putPool({ ...pool!, currentRevision: "abc123" });
    },
    async running(tenantId, poolId) {
      const created = await createInstance(deps, { tenantId, poolId });
      return startInstance(deps, { tenantId, poolId, instanceId: created.instanceId });
    },
    async get(i) {
      return (await deps.store.getInstance(i.tenantId, i.poolId, i.instanceId))!;
    },
    stop: (i) => stopInstance(deps, { tenantId: i.tenantId, poolId: i.poolId, instanceId: i.instanceId }),
    use(i, cpu, net = 0) {
      cpuUs.set(i.instanceId, (cpuUs.get(i.instanceId) ?? 0) + cpu);
      tapBytes.set(i.net.tapName, (tapBytes.get(i.net.tapName) ?? 0) + net);
    },
  };
  return node;
}

export const keyOf = (i: InstanceKey): InstanceKey => ({ tenantId: i.tenantId, poolId: i.poolId, instanceId: i.instanceId });

/**
 * Stand-ins for the warm and sleep use cases: they audit like the real ones (through `audited`, with the deps they
 * are given) and move the record, so tests see which actor the policy hands them. `fail` makes one instance's action
 * throw.
 */
export function recordingRunners(fail: Set<string> = new Set()): IdleActionRunners & { calls: Array<{ kind: string; instanceId: string; actor: string }> } {
  const calls: Array<{ kind: string; instanceId: string; actor: string }> = [];
  const act = (kind: "warm" | "sleep") => async (deps: DataPlaneDeps, key: InstanceKey): Promise<Instance> =>
    audited(deps, { tenantId: key.tenantId, action: kind === "warm" ? "instance_warm" : "instance_sleep", target: `${key.tenantId}/${key.poolId}/${key.instanceId}` }, async () => {
      calls.push({ kind, instanceId: key.instanceId, actor: deps.actor?.id ?? "" });
      if (fail.has(key.instanceId)) throw new Error(`${kind} of ${key.instanceId} failed on purpose`);
      const current = (await deps.store.getInstance(key.tenantId, key.poolId, key.instanceId))!;
      const next: Instance = { ...current, status: kind === "warm" ? "warm" : "sleeping", ...(kind === "sleep" ? { vmm: null } : {}) };
      await deps.store.putInstance(next);
      return next;
    });
  return { calls, warm: act("warm"), sleep: act("sleep") };
}
