import { Writable } from "node:stream";
import { pino } from "pino";
import { beforeEach, describe, expect, it } from "vitest";
import { collectLeftovers } from "../../../src/agent/leftover-collection.js";
import type { AuditRecord } from "../../../src/core/observability-ports.js";
import type { GarbageDeps } from "../../../src/core/use-cases/garbage.js";
import { createInstance } from "../../../src/core/use-cases/instances.js";
import { startInstance } from "../../../src/core/use-cases/lifecycle.js";
import { createPool } from "../../../src/core/use-cases/pools.js";
import { createTenant } from "../../../src/core/use-cases/tenants.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { fakeDataPlaneDeps } from "../../helpers/fake-data-plane-deps.js";

let plane: FakeDataPlane;
let deps: GarbageDeps;
let audit: AuditRecord[];
let lines: Array<Record<string, unknown>>;

function captureLogger() {
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split("\n").filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return pino({ level: "debug" }, sink);
}

beforeEach(async () => {
  plane = new FakeDataPlane();
  audit = [];
  lines = [];
  deps = {
    ...fakeDataPlaneDeps(plane),
    revisionFiles: plane.revisionFiles(),
    audit: { append: async (r) => (audit.push(r), { ...r, seq: audit.length, at: "", prevHash: "", hash: "" }) },
  };
  await createTenant(deps, { tenantId: "acme", quotas: {} });
  await createPool(deps, { tenantId: "acme", poolId: "web" }, { resources: { vcpus: 1, memMib: 256, dataDiskMib: 0 } });
  await deps.store.putPool({ ...(await deps.store.getPool("acme", "web"))!, currentRevision: "aaaa0001" });
});

describe("collectLeftovers (the agent's start)", () => {
  it("removes a VMM whose record never claimed it, with its TAP and group, as system:agent-start, and logs each", async () => {
    const created = await createInstance(deps, { tenantId: "acme", poolId: "web" });
    const started = await startInstance(deps, { tenantId: "acme", poolId: "web", instanceId: created.instanceId });
    // The record as it was before the start: what a kill -9 between the VMM's start and the record's write leaves.
    await deps.store.putInstance(created);

    const report = await collectLeftovers(deps, captureLogger());
    expect(report?.items.map((i) => [i.kind, i.removed])).toEqual([
      ["process", true],
      ["tap", true],
      ["cgroup", true],
    ]);
    expect(plane.processes.has(started.vmm!.pid)).toBe(false);
    expect(audit.filter((a) => a.action === "garbage_collect").map((a) => a.actor)).toEqual(Array(3).fill({ kind: "system", id: "system:agent-start" }));
    expect(lines.filter((l) => l.msg === "removed a leftover").map((l) => l.kind)).toEqual(["process", "tap", "cgroup"]);
    expect(lines.find((l) => l.msg === "leftover collection done")).toMatchObject({ items: 3 });
  });

  it("logs a collection that fails and lets the agent start", async () => {
    deps = { ...deps, cgroups: { ...deps.cgroups, list: async () => Promise.reject(new Error("cgroupfs is not mounted")) } };
    expect(await collectLeftovers(deps, captureLogger())).toBeNull();
    expect(lines.find((l) => l.level === 50)).toMatchObject({ err: "cgroupfs is not mounted" });
  });
});
