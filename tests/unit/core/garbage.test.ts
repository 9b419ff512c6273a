import { beforeEach, describe, expect, it } from "vitest";
import { isMvmError } from "../../../src/core/errors.js";
import { bridgeName, tapName } from "../../../src/core/naming.js";
import type { Instance } from "../../../src/core/model.js";
import type { AuditEntry, AuditLog, AuditRecord } from "../../../src/core/observability-ports.js";
import { collectGarbage, type GarbageDeps } from "../../../src/core/use-cases/garbage.js";
import { createInstance } from "../../../src/core/use-cases/instances.js";
import { startInstance, stopInstance } from "../../../src/core/use-cases/lifecycle.js";
import { createPool } from "../../../src/core/use-cases/pools.js";
import { sleepInstance } from "../../../src/core/use-cases/sleep-wake.js";
import { createTenant } from "../../../src/core/use-cases/tenants.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { fakeDataPlaneDeps } from "../../helpers/fake-data-plane-deps.js";

let plane: FakeDataPlane;
let deps: GarbageDeps;
let audit: AuditRecord[];

const keyOf = (i: Instance) => ({ tenantId: i.tenantId, poolId: i.poolId, instanceId: i.instanceId });
const snapshotDir = (i: Instance) => `/data/acme/web/instances/${i.instanceId}/snapshot`;

beforeEach(async () => {
  plane = new FakeDataPlane();
  audit = [];
  const log: AuditLog = {
    async append(record) {
      audit.push(record);
      return { ...record, seq: audit.length, at: "", prevHash: "", hash: "" } as AuditEntry;
    },
  };
  deps = { ...fakeDataPlaneDeps(plane), revisionFiles: plane.revisionFiles(), audit: log };
  await createTenant(deps, { tenantId: "acme", quotas: {} });
  await createPool(deps, { tenantId: "acme", poolId: "web" }, { resources: { vcpus: 1, memMib: 256, dataDiskMib: 0 } });
  const pool = await deps.store.getPool("acme", "web");
  await deps.store.appendBuild("acme", "web", { revision: "aaaa0001", builtAt: "2026-01-01T00:00:00Z" } as never, 20);
  await deps.store.putPool({ ...pool!, currentRevision: "aaaa0001" });
  plane.revisions.set("acme/web", new Map([["aaaa0001", 1000]]));
});

async function running(): Promise<Instance> {
  const created = await createInstance(deps, { tenantId: "acme", poolId: "web" });
  return startInstance(deps, keyOf(created));
}

/** Starts an instance, then puts its record back as it was before the start: what a kill -9 between the VMM's start
 * and the record's write leaves (a VMM, its TAP and cgroup, and a record that claims none of them). */
async function startedThenRolledBack(): Promise<Instance> {
  const created = await createInstance(deps, { tenantId: "acme", poolId: "web" });
  const started = await startInstance(deps, keyOf(created));
  await deps.store.putInstance(created);
  return started;
}

const collected = (report: { items: { kind: string; name: string }[] }) => report.items.map((i) => `${i.kind} ${i.name}`);

describe("collectGarbage", () => {
  it("finds nothing on a node where every process, group, TAP, snapshot and revision has its owner", async () => {
    await running();
    const sleeper = await running();
    await sleepInstance(deps, keyOf(sleeper));
    const stopped = await running();
    await stopInstance(deps, keyOf(stopped));

    const report = await collectGarbage(deps, { apply: true });
    expect(report.items).toEqual([]);
    expect(report.reclaimedBytes).toBe(0);
    expect(plane.snapshotMetas.has(snapshotDir(sleeper))).toBe(true);
    expect(plane.cgroups.size).toBe(2);
    expect(audit.filter((a) => a.action === "garbage_collect")).toEqual([]);
  });

  it("lists what a crash left of a start its record never saw (VMM, TAP, cgroup) and, in a dry run, removes none of it", async () => {
    const lost = await startedThenRolledBack();
    const pid = lost.vmm!.pid;

    const report = await collectGarbage(deps, { apply: false });
    const group = `acme/web/${lost.instanceId}`;
    expect(collected(report)).toEqual([`process pid ${pid}`, `tap ${lost.net.tapName}`, `cgroup ${group}`]);
    expect(report.items.every((i) => !i.removed && i.error === "")).toBe(true);
    expect(report.items[0]!.owner).toEqual({ tenantId: "acme", poolId: "web", instanceId: lost.instanceId });
    expect(report.applied).toBe(false);
    expect(plane.processes.has(pid)).toBe(true);
    expect(plane.taps.has(lost.net.tapName)).toBe(true);
    expect(plane.cgroups.has(group)).toBe(true);
    expect(audit.filter((a) => a.action === "garbage_collect")).toEqual([]);
  });

  it("with apply kills the process first, then removes TAP and group, and audits each removal in the tenant's log", async () => {
    const kept = await running();
    const lost = await startedThenRolledBack();

    const report = await collectGarbage(deps, { apply: true });
    expect(report.items.map((i) => [i.kind, i.removed, i.error])).toEqual([
      ["process", true, ""],
      ["tap", true, ""],
      ["cgroup", true, ""],
    ]);
    expect(plane.processes.has(lost.vmm!.pid)).toBe(false);
    expect(plane.taps.has(lost.net.tapName)).toBe(false);
    expect(plane.cgroups.has(`acme/web/${lost.instanceId}`)).toBe(false);
    // The instance that has its record keeps everything.
    expect(plane.processes.has(kept.vmm!.pid)).toBe(true);
    expect(plane.taps.has(kept.net.tapName)).toBe(true);
    const entries = audit.filter((a) => a.action === "garbage_collect");
    expect(entries.map((e) => [e.tenantId, e.target, e.outcome, e.details.kind])).toEqual([
      ["acme", `acme/web/${lost.instanceId}`, "success", "process"],
      ["acme", "acme", "success", "tap"],
      ["acme", `acme/web/${lost.instanceId}`, "success", "cgroup"],
    ]);
  });

  it("removes the group a stopped instance should have released, but never a running instance's group or its processes", async () => {
    const live = await running();
    const stopped = await running();
    await stopInstance(deps, keyOf(stopped));
    // As a failed cleanup leaves it: the group is still there after the stop.
    await deps.cgroups.ensure(keyOf(stopped), deps.cgroupLimits((await deps.store.getPool("acme", "web"))!));
    // A stray process inside a running instance's group is not this pass's business.
    plane.processes.set(9999, { ...plane.processes.get(live.vmm!.pid)! });

    const report = await collectGarbage(deps, { apply: true });
    expect(collected(report)).toEqual([`cgroup acme/web/${stopped.instanceId}`]);
    expect(plane.cgroups.has(`acme/web/${live.instanceId}`)).toBe(true);
    expect(plane.processes.has(9999)).toBe(true);
  });

  it("removes a snapshot that an instance which is not sleeping still has, and counts its bytes; a sleeping one's stays", async () => {
    const sleeper = await running();
    await sleepInstance(deps, keyOf(sleeper));
    const awake = await running();
    plane.files.set(`${snapshotDir(awake)}/memory`, "x".repeat(4096));

    const report = await collectGarbage(deps, { apply: true });
    expect(collected(report)).toEqual([`snapshot ${snapshotDir(awake)}`]);
    expect(report.items[0]!.sizeBytes).toBe(4096);
    expect(report.reclaimedBytes).toBe(4096);
    expect(plane.files.has(`${snapshotDir(awake)}/memory`)).toBe(false);
    expect(plane.snapshotMetas.has(snapshotDir(sleeper))).toBe(true);
  });

  it("keeps the current revision, those in use and the newest kept; removes the rest and drops them from the build history", async () => {
    // An instance still runs the first revision after two more builds.
    const old = await running();
    for (const revision of ["aaaa0002", "aaaa0003"]) {
      await deps.store.appendBuild("acme", "web", { revision, builtAt: "2026-01-02T00:00:00Z" } as never, 20);
    }
    const pool = await deps.store.getPool("acme", "web");
    await deps.store.putPool({ ...pool!, currentRevision: "aaaa0003" });
    plane.revisions.set(
      "acme/web",
      new Map([
        ["aaaa0000", 500],
        ["aaaa0001", 1000],
        ["aaaa0002", 2000],
        ["aaaa0003", 3000],
      ]),
    );
    expect(old.revision).toBe("aaaa0001");

    const dry = await collectGarbage(deps, { apply: false });
    // Kept by default: the whole history, so only the revision no rollback can name any more goes.
    expect(collected(dry)).toEqual(["revision /data/acme/web/revisions/aaaa0000"]);

    const report = await collectGarbage(deps, { apply: true, keepRevisions: 1 });
    expect(collected(report)).toEqual(["revision /data/acme/web/revisions/aaaa0000", "revision /data/acme/web/revisions/aaaa0002"]);
    expect(report.reclaimedBytes).toBe(2500);
    expect([...plane.revisions.get("acme/web")!.keys()].sort()).toEqual(["aaaa0001", "aaaa0003"]);
    expect((await deps.store.listBuilds("acme", "web")).map((b) => b.revision)).toEqual(["aaaa0001", "aaaa0003"]);
  });

  it("leaves a revision directory that changed in the last minutes: a build may be about to record it", async () => {
    plane.revisions.get("acme/web")!.set("bbbb0001", 100).set("bbbb0002", 100);
    plane.revisionChangedAtMs.set("bbbb0001", deps.clock.nowMs() - 60_000);
    plane.revisionChangedAtMs.set("bbbb0002", deps.clock.nowMs() - 11 * 60_000);
    const report = await collectGarbage(deps, { apply: false });
    expect(collected(report)).toEqual(["revision /data/acme/web/revisions/bbbb0002"]);
  });

  it("leaves groups this data root has no record of, with their processes: another data root may share the parent", async () => {
    const foreign = await running();
    // The same tenant and pool names in another data root: its instance is no record of this one.
    await deps.store.deleteInstance("acme", "web", foreign.instanceId);
    await deps.cgroups.ensure({ tenantId: "gone", poolId: "web", instanceId: "i-0000abcd" }, deps.cgroupLimits((await deps.store.getPool("acme", "web"))!));

    const report = await collectGarbage(deps, { apply: true });
    // A network namespace, unlike the cgroup parent, belongs to one data root: a TAP named for this tenant's net ID
    // that no instance here holds is this node's stray.
    expect(collected(report)).toEqual([`tap ${foreign.net.tapName}`]);
    expect(plane.processes.has(foreign.vmm!.pid)).toBe(true);
    expect(plane.cgroups.has("gone/web/i-0000abcd")).toBe(true);
  });

  it("removes the bridge and TAPs of a net ID no tenant holds (a deletion that died half way), audited in the node's log", async () => {
    await running();
    plane.bridges.add(bridgeName(4000));
    plane.taps.set(tapName(4000, 7), { name: tapName(4000, 7), mac: "02:00:00:00:00:07", guestIp: "10.1.2.7" });

    const dry = await collectGarbage(deps, { apply: false });
    expect(collected(dry)).toEqual([`bridge ${bridgeName(4000)}`]);
    const report = await collectGarbage(deps, { apply: true });
    expect(report.items.map((i) => [i.kind, i.removed, i.owner])).toEqual([["bridge", true, { tenantId: "" }]]);
    expect(plane.bridges.has(bridgeName(4000))).toBe(false);
    expect(plane.taps.has(tapName(4000, 7))).toBe(false);
    // The tenant's own bridge stays.
    expect(plane.bridges.size).toBe(1);
    expect(audit.filter((a) => a.action === "garbage_collect").map((a) => [a.tenantId, a.target, a.details.kind])).toEqual([["", bridgeName(4000), "bridge"]]);
  });

  it("reports a removal that fails with its reason and goes on with the others", async () => {
    await startedThenRolledBack();
    deps = {
      ...deps,
      cgroups: { ...deps.cgroups, remove: async () => Promise.reject(new Error("Device or resource busy")) },
    };

    const report = await collectGarbage(deps, { apply: true });
    expect(report.items.map((i) => [i.kind, i.removed, i.error])).toEqual([
      ["process", true, ""],
      ["tap", true, ""],
      ["cgroup", false, "device or resource busy"],
    ]);
    expect(audit.find((a) => a.action === "garbage_collect" && a.outcome === "failure")?.reason).toBe("device or resource busy");
  });

  it("refuses a negative or fractional keep_revisions, naming the field, before looking at anything", async () => {
    for (const keepRevisions of [-1, 1.5]) {
      const error = await collectGarbage(deps, { apply: true, keepRevisions }).catch((e: unknown) => e);
      expect(isMvmError(error) && error.kind).toBe("invalid");
      expect((error as Error).message).toMatch(/keep_revisions/);
    }
  });
});
