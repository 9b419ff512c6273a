import { describe, expect, it } from "vitest";
import type { AuditEntry, AuditLog, AuditRecord, InstanceEvent } from "../../../src/core/observability-ports.js";
import { observeInstanceWrites } from "../../../src/core/observed-store.js";
import { destroyInstance, type DataPlaneDeps } from "../../../src/core/use-cases/lifecycle.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { fakeDataPlaneDeps } from "../../helpers/fake-data-plane-deps.js";
import { createInstance } from "../../../src/core/use-cases/instances.js";
import { createPool, destroyPool } from "../../../src/core/use-cases/pools.js";
import { createTenant, destroyTenant } from "../../../src/core/use-cases/tenants.js";
import { MemoryStore } from "../../../src/runtime/fake/memory-store.js";

class RecordingAuditLog implements AuditLog {
  readonly entries: AuditRecord[] = [];
  async append(record: AuditRecord): Promise<AuditEntry> {
    this.entries.push(record);
    return { ...record, seq: this.entries.length, at: "", prevHash: "", hash: "" };
  }
}

function makeDeps(events: InstanceEvent[] = []): DataPlaneDeps & { audit: RecordingAuditLog } {
  const store = observeInstanceWrites(new MemoryStore(), { publish: (e) => events.push(e) });
  return {
    ...fakeDataPlaneDeps(new FakeDataPlane(), store),
    audit: new RecordingAuditLog(),
    actor: { kind: "admin", id: "spiffe://mvm.local/admin" },
  };
}

const destroyInstanceRecord = (deps: DataPlaneDeps, key: { tenantId: string; poolId: string; instanceId: string }) =>
  destroyInstance(deps, key);

describe("audit trail of the record use cases", () => {
  it("writes one success entry per action, with the actor and target", async () => {
    const deps = makeDeps();
    await createTenant(deps, { tenantId: "acme" });
    await createPool(deps, { tenantId: "acme", poolId: "web" }, {});
    const instance = await createInstance(deps, { tenantId: "acme", poolId: "web" });
    await destroyInstanceRecord(deps, { tenantId: "acme", poolId: "web", instanceId: instance.instanceId });
    expect(deps.audit.entries.map((e) => [e.tenantId, e.action, e.target, e.outcome])).toEqual([
      ["acme", "tenant_create", "acme", "success"],
      ["acme", "pool_create", "acme/web", "success"],
      ["acme", "instance_create", "acme/web", "success"],
      ["acme", "instance_destroy", `acme/web/${instance.instanceId}`, "success"],
    ]);
    expect(deps.audit.entries.every((e) => e.actor.id === "spiffe://mvm.local/admin")).toBe(true);
  });

  it("records a quota refusal as a failure plus a quota_reject entry", async () => {
    const deps = makeDeps();
    await createTenant(deps, { tenantId: "acme", quotas: { maxPools: 1 } });
    await createPool(deps, { tenantId: "acme", poolId: "one" }, {});
    await expect(createPool(deps, { tenantId: "acme", poolId: "two" }, {})).rejects.toThrow(/max_pools/);
    const last = deps.audit.entries.slice(-2);
    expect(last.map((e) => [e.action, e.outcome])).toEqual([
      ["pool_create", "failure"],
      ["quota_reject", "denied"],
    ]);
    expect(last[1]!.details.refused).toBe("pool_create");
  });

  it("does not audit invalid input, which must leave no trace", async () => {
    const deps = makeDeps();
    await expect(createTenant(deps, { tenantId: "Bad" })).rejects.toThrow(/tenant_id/);
    await expect(createPool(deps, { tenantId: "nope", poolId: "x" }, {})).rejects.toThrow(/not found/);
    expect(deps.audit.entries).toEqual([]);
  });

  it("writes a deleted tenant's entry to the node-level log", async () => {
    const deps = makeDeps();
    await createTenant(deps, { tenantId: "acme" });
    await destroyTenant(deps, { tenantId: "acme" });
    expect(deps.audit.entries.at(-1)).toMatchObject({ tenantId: "", action: "tenant_delete", target: "acme", outcome: "success" });
  });
});

describe("observed store", () => {
  it("publishes every instance write and delete, including those of a deleted pool", async () => {
    const events: InstanceEvent[] = [];
    const deps = makeDeps(events);
    await createTenant(deps, { tenantId: "acme" });
    await createPool(deps, { tenantId: "acme", poolId: "web" }, {});
    const a = await createInstance(deps, { tenantId: "acme", poolId: "web" });
    const b = await createInstance(deps, { tenantId: "acme", poolId: "web" });
    await destroyInstanceRecord(deps, { tenantId: "acme", poolId: "web", instanceId: a.instanceId });
    await destroyPool(deps, { tenantId: "acme", poolId: "web", force: true });
    expect(events.map((e) => [e.kind, e.instance.instanceId, e.instance.status])).toEqual([
      ["upsert", a.instanceId, "created"],
      ["upsert", b.instanceId, "created"],
      ["deleted", a.instanceId, "destroyed"],
      ["deleted", b.instanceId, "destroyed"],
    ]);
  });
});
