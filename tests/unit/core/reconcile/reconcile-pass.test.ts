import { createHash } from "node:crypto";
import fc from "fast-check";
import { beforeEach, describe, expect, it } from "vitest";
import { isMvmError, MvmError } from "../../../../src/core/errors.js";
import type { Instance } from "../../../../src/core/model.js";
import { describeStep } from "../../../../src/core/reconcile/steps.js";
import { createInstance } from "../../../../src/core/use-cases/instances.js";
import { startInstance, stopInstance } from "../../../../src/core/use-cases/lifecycle.js";
import { createPool } from "../../../../src/core/use-cases/pools.js";
import { ReconcileController } from "../../../../src/core/use-cases/reconcile.js";
import { resumeInstance, sleepInstance, warmInstance } from "../../../../src/core/use-cases/sleep-wake.js";
import { runIdlePolicy } from "../../../../src/core/use-cases/idle.js";
import { idledFrom } from "../../../../src/core/idle-mark.js";
import { createTenant, rotateSecrets } from "../../../../src/core/use-cases/tenants.js";
import { reconcileFixture, type ReconcileFixture } from "./reconcile-test-deps.js";

let f: ReconcileFixture;
let controller: ReconcileController;

beforeEach(async () => {
  f = await reconcileFixture();
  controller = new ReconcileController(f.deps, { backoffBaseMs: 60_000, random: () => 0.5 });
});

interface PoolDoc {
  id: string;
  running?: number;
  warm?: number;
  sleeping?: number;
  critical?: boolean;
  suite?: string;
}

function doc(
  tenants: Array<{ id: string; pools: PoolDoc[]; labels?: Record<string, string>; quotas?: object; network?: object; secretsHash?: string }>,
  extra: object = {},
) {
  return {
    schema_version: 1,
    node_id: f.nodeId,
    tenants: tenants.map((t) => ({
      tenant_id: t.id,
      ...(t.labels ? { labels: t.labels } : {}),
      ...(t.quotas ? { quotas: t.quotas } : {}),
      ...(t.network ? { network: t.network } : {}),
      ...(t.secretsHash ? { secrets_hash: t.secretsHash } : {}),
      pools: t.pools.map((p) => ({
        pool_id: p.id,
        image: { debian: { suite: p.suite ?? "bookworm" } },
        resources: { vcpus: 1, mem_mib: 256 },
        desired_counts: { running: p.running ?? 0, warm: p.warm ?? 0, sleeping: p.sleeping ?? 0 },
        critical: p.critical ?? false,
      })),
    })),
    ...extra,
  };
}

async function instancesOf(tenantId: string, poolId: string): Promise<Instance[]> {
  return f.store.listInstances(tenantId, poolId);
}

function countByStatus(instances: readonly Instance[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const i of instances) counts[i.status] = (counts[i.status] ?? 0) + 1;
  return counts;
}

async function applyAndRun(document: object) {
  await controller.apply(document);
  return controller.reconcile("manual");
}

describe("a reconcile pass", () => {
  it("leaves alone what the idle policy parked, and takes it over when the desired counts change", async () => {
    await applyAndRun(doc([{ id: "acme", pools: [{ id: "web", running: 2 }] }]));
    const [first, second] = await instancesOf("acme", "web");
    // The first instance has been idle for longer than warm_after_idle_s (300 s by default): the policy warms it.
    await f.store.putInstance({ ...first!, idle: { ...first!.idle, idleS: 400 } });
    const policy = await runIdlePolicy(f.deps);
    expect(policy.actions.map((a) => [a.kind, a.instanceId, a.result])).toEqual([["warm", first!.instanceId, "success"]]);
    const parked = (await f.store.getInstance("acme", "web", first!.instanceId))!;
    expect(parked.status).toBe("warm");
    expect(idledFrom(parked)).toBe("running");

    // Without the mark, this pass would resume it (pool wants 2 running), and the policy would warm it again later.
    expect((await controller.reconcile("periodic")).results).toEqual([]);
    expect((await f.store.getInstance("acme", "web", first!.instanceId))!.status).toBe("warm");

    // A user's resume ends the mark; the pool then simply has its 2 running.
    await resumeInstance(f.deps, { tenantId: "acme", poolId: "web", instanceId: first!.instanceId });
    expect(idledFrom((await f.store.getInstance("acme", "web", first!.instanceId))!)).toBeNull();
    expect((await controller.reconcile("periodic")).results).toEqual([]);

    // Parked again, then the document asks for 1 running and 1 warm: the parked one is the most idle surplus and
    // becomes the warm one, no longer marked; nothing else moves.
    await f.store.putInstance({ ...(await f.store.getInstance("acme", "web", first!.instanceId))!, idle: { ...first!.idle, idleS: 400 } });
    await runIdlePolicy(f.deps);
    const changed = await applyAndRun(doc([{ id: "acme", pools: [{ id: "web", running: 1, warm: 1 }] }]));
    expect(changed.results.map((r) => [r.step.kind, r.step.target.instanceId, r.outcome])).toEqual([
      ["update_pool", undefined, "succeeded"],
      ["warm_instance", first!.instanceId, "succeeded"],
    ]);
    const nowWarm = (await f.store.getInstance("acme", "web", first!.instanceId))!;
    expect([nowWarm.status, idledFrom(nowWarm)]).toEqual(["warm", null]);
    expect((await f.store.getInstance("acme", "web", second!.instanceId))!.status).toBe("running");
    expect((await controller.reconcile("periodic")).results).toEqual([]);
  });

  it("does not build a pool that wants no instance and has none, and builds it once it wants one", async () => {
    const idle = await applyAndRun(doc([{ id: "acme", pools: [{ id: "web" }] }]));
    expect(idle.results.map((r) => r.step.kind)).toEqual(["create_tenant", "create_pool"]);
    expect((await f.store.getPool("acme", "web"))?.currentRevision).toBe("");
    expect((await controller.reconcile("periodic")).results).toEqual([]);

    const wanted = await applyAndRun(doc([{ id: "acme", pools: [{ id: "web", running: 1 }] }]));
    expect(wanted.results.map((r) => r.step.kind)).toEqual(["update_pool", "build_pool", "create_instance"]);
    expect((await f.store.getPool("acme", "web"))?.currentRevision).not.toBe("");
  });

  it("creates the tenant and pool, builds the image and starts the running count; the second pass does nothing", async () => {
    const first = await applyAndRun(doc([{ id: "acme", pools: [{ id: "web", running: 2 }] }]));
    expect(first.converged).toBe(true);
    expect(first.results.map((r) => r.step.kind)).toEqual(["create_tenant", "create_pool", "build_pool", "create_instance", "create_instance"]);
    expect(countByStatus(await instancesOf("acme", "web"))).toEqual({ running: 2 });
    expect(f.plane.processes.size).toBe(2);
    const second = await controller.reconcile("periodic");
    expect(second.results).toEqual([]);
    expect(second.converged).toBe(true);
    expect(f.builder.builds).toHaveLength(1);
  });

  it("explains each step, naming the object and the cheapest transition", async () => {
    await applyAndRun(doc([{ id: "acme", pools: [{ id: "web", running: 1 }] }]));
    const [only] = await instancesOf("acme", "web");
    await stopInstance(f.deps, { tenantId: "acme", poolId: "web", instanceId: only!.instanceId });
    const plan = await controller.plan();
    expect(plan.steps.map(describeStep)).toEqual([`start acme/web/${only!.instanceId} (pool wants 1 running, has 0; cheapest: stopped → running)`]);
    const report = await controller.reconcile("manual");
    expect(report.results.map((r) => r.step.kind)).toEqual(["start_instance"]);
    expect(countByStatus(await instancesOf("acme", "web"))).toEqual({ running: 1 });
  });

  it("scales down by stopping the most idle instances, and never in a critical pool", async () => {
    await applyAndRun(doc([{ id: "acme", pools: [{ id: "web", running: 3 }, { id: "db", running: 2, critical: true }] }]));
    const web = await instancesOf("acme", "web");
    const idle = [30, 500, 200];
    for (const [n, i] of web.entries()) await f.store.putInstance({ ...i, idle: { ...i.idle, idleS: idle[n]! } });
    const report = await applyAndRun(doc([{ id: "acme", pools: [{ id: "web", running: 1 }, { id: "db", running: 1, critical: true }] }]));
    const stopped = report.results.filter((r) => r.step.kind === "stop_instance").map((r) => r.step.target.instanceId);
    expect(stopped).toEqual([web[1]!.instanceId, web[2]!.instanceId]);
    expect(countByStatus(await instancesOf("acme", "web"))).toEqual({ running: 1, stopped: 2 });
    expect((await instancesOf("acme", "web")).find((i) => i.status === "running")!.instanceId).toBe(web[0]!.instanceId);
    expect(countByStatus(await instancesOf("acme", "db"))).toEqual({ running: 2 });
    expect(report.converged).toBe(true);
  });

  it("updates changed quotas, labels and pool specs, and rebuilds when the image source changed", async () => {
    await applyAndRun(doc([{ id: "acme", labels: { team: "ci", old: "x" }, pools: [{ id: "web", running: 1 }] }]));
    const before = (await f.store.getPool("acme", "web"))!.currentRevision;
    const report = await applyAndRun(
      doc([{ id: "acme", labels: { team: "web" }, quotas: { max_running: 5 }, pools: [{ id: "web", running: 1, suite: "trixie" }] }]),
    );
    expect(report.results.map((r) => r.step.kind)).toEqual(["update_tenant", "update_pool", "build_pool"]);
    const tenant = (await f.store.getTenant("acme"))!;
    expect(tenant.labels).toEqual({ team: "web" });
    expect(tenant.quotas.maxRunning).toBe(5);
    const pool = (await f.store.getPool("acme", "web"))!;
    expect(pool.image).toMatchObject({ suite: "trixie" });
    expect(pool.currentRevision).not.toBe(before);
    // The running instance keeps its revision until its next cold start.
    expect((await instancesOf("acme", "web"))[0]!.revision).toBe(before);
    expect((await controller.reconcile("manual")).results).toEqual([]);
  });

  it("refuses a network change while the tenant has pools, as an item error", async () => {
    await applyAndRun(doc([{ id: "acme", network: { net_id: 7, ipv4_subnet: "10.9.0.0/24" }, pools: [{ id: "web" }] }]));
    expect((await f.store.getTenant("acme"))!.network.netId).toBe(7);
    const report = await applyAndRun(doc([{ id: "acme", network: { net_id: 8, ipv4_subnet: "10.9.1.0/24" }, pools: [{ id: "web" }] }]));
    expect(report.converged).toBe(false);
    expect(report.errors).toEqual([expect.objectContaining({ field: "tenants[0].network", kind: "failed_precondition" })]);
    expect(report.errors[0]!.message).toMatch(/network cannot change .* while the tenant has pools/);
    expect((await f.store.getTenant("acme"))!.network.netId).toBe(7);
  });

  it("reports a tenant whose secret set is not the expected one, and converges once the secrets are rotated to it", async () => {
    const secret = { token: new TextEncoder().encode("s3cret") };
    const expected = createHash("sha256").update("token\u00006\u0000").update(secret.token).digest("hex");
    const first = await applyAndRun(doc([{ id: "acme", secretsHash: expected, pools: [] }]));
    expect(first.converged).toBe(false);
    expect(first.errors).toEqual([expect.objectContaining({ field: "tenants[0].secrets_hash", kind: "failed_precondition", retryable: true })]);
    expect(first.errors[0]!.message).toMatch(/holds no secret set, not [0-9a-f]{64}: rotate its secrets/);
    // The tenant itself is created all the same.
    expect(await f.store.getTenant("acme")).not.toBeNull();
    await rotateSecrets(f.deps, { tenantId: "acme", files: secret });
    const second = await controller.reconcile("periodic");
    expect(second.errors).toEqual([]);
    expect(second.converged).toBe(true);
  });

  it("never creates instances for a pool that has no built revision: NotBuilt instead, retried with backoff", async () => {
    const first = await applyAndRun(doc([{ id: "acme", pools: [{ id: "web", running: 2, suite: "broken" }] }]));
    expect(first.converged).toBe(false);
    expect(first.results.map((r) => [r.step.kind, r.outcome])).toEqual([
      ["create_tenant", "succeeded"],
      ["create_pool", "succeeded"],
      ["build_pool", "failed"],
      ["create_instance", "skipped"],
      ["create_instance", "skipped"],
    ]);
    expect(first.errors).toEqual([expect.objectContaining({ kind: "internal", retryable: true, attempt: 1 })]);
    expect(first.errors[0]!.nextRetryAtMs).toBeGreaterThan(first.startedAtMs + 50_000);
    expect(await instancesOf("acme", "web")).toEqual([]);
    const pool = (await f.store.getPool("acme", "web"))!;
    expect(pool.conditions).toEqual(expect.arrayContaining([expect.objectContaining({ type: "NotBuilt", status: "true" })]));
    const second = await controller.reconcile("retry");
    expect(second.results.find((r) => r.step.kind === "build_pool")).toMatchObject({ outcome: "skipped", message: expect.stringMatching(/in backoff after 1 failed attempt/) });
    expect(f.builder.builds).toHaveLength(1);
    expect(await instancesOf("acme", "web")).toEqual([]);
  });

  it("does not retry a terminal error until the document changes", async () => {
    const boot = f.deps.vmm;
    f.deps.vmm = (kind) => ({ ...boot(kind), boot: async () => { throw new MvmError("terminal", "test double: this guest can never boot"); } });
    controller = new ReconcileController(f.deps, { backoffBaseMs: 0 });
    const first = await applyAndRun(doc([{ id: "acme", pools: [{ id: "web", running: 1 }] }]));
    expect(first.errors).toEqual([expect.objectContaining({ kind: "terminal", retryable: false, nextRetryAtMs: null })]);
    const [created] = await instancesOf("acme", "web");
    expect(created!.status).toBe("created");
    expect(created!.conditions).toEqual([]);
    const second = await controller.reconcile("manual");
    expect(second.results.map((r) => [r.step.kind, r.outcome])).toEqual([["start_instance", "failed"]]);
    const third = await controller.reconcile("manual");
    expect(third.results).toEqual([expect.objectContaining({ outcome: "skipped", message: expect.stringMatching(/not retried \(terminal error\)/) })]);
    expect((await instancesOf("acme", "web"))[0]!.conditions).toEqual([expect.objectContaining({ type: "Reconciled", status: "false" })]);
  });

  it("prunes unknown pools and tenants only when asked, leaving no bridge, TAP, cgroup, process or record", async () => {
    await applyAndRun(doc([{ id: "acme", pools: [{ id: "web", running: 1 }, { id: "old", running: 1 }] }, { id: "gone", pools: [{ id: "p", running: 2 }] }]));
    expect(f.plane.processes.size).toBe(4);
    const kept = await applyAndRun(doc([{ id: "acme", pools: [{ id: "web", running: 1 }] }]));
    expect(kept.results).toEqual([]);
    const gone = (await f.store.getTenant("gone"))!;
    const goneTaps = (await instancesOf("gone", "p")).map((i) => i.net.tapName);
    const pruned = await applyAndRun(doc([{ id: "acme", pools: [{ id: "web", running: 1 }] }], { prune_unknown_pools: true, prune_unknown_tenants: true }));
    expect(pruned.results.map((r) => [r.step.kind, r.step.target])).toEqual([
      ["delete_pool", { tenantId: "acme", poolId: "old" }],
      ["delete_tenant", { tenantId: "gone" }],
    ]);
    expect(pruned.converged).toBe(true);
    expect(await f.store.getTenant("gone")).toBeNull();
    expect(await f.store.getPool("acme", "old")).toBeNull();
    expect(f.plane.bridges.has(gone.network.bridgeName)).toBe(false);
    for (const tap of goneTaps) expect(f.plane.taps.has(tap)).toBe(false);
    expect([...f.plane.cgroups.keys()].filter((k) => k.includes("gone") || k.includes("/old/"))).toEqual([]);
    expect(f.plane.processes.size).toBe(1);
  });

  it("persists the applied document with a generation that rises only when it changes", async () => {
    const a = await controller.apply(doc([{ id: "acme", pools: [] }]));
    expect(a).toMatchObject({ changed: true, applied: { generation: 1 } });
    const again = await controller.apply(doc([{ id: "acme", pools: [] }]));
    expect(again).toMatchObject({ changed: false, applied: { generation: 1, hash: a.applied.hash } });
    const b = await controller.apply(doc([{ id: "acme", pools: [{ id: "web" }] }]));
    expect(b.applied.generation).toBe(2);
    expect(b.applied.hash).not.toBe(a.applied.hash);
    // A controller of a restarted agent converges on what was persisted.
    const restarted = new ReconcileController(f.deps);
    const report = await restarted.reconcile("startup");
    expect(report.generation).toBe(2);
    expect(await f.store.getPool("acme", "web")).not.toBeNull();
  });

  it("refuses a document for another node, and a pass before any document", async () => {
    await expect(controller.reconcile("manual")).rejects.toMatchObject({ kind: "failed_precondition" });
    const other = { ...doc([]), node_id: "n-000000000000" };
    await expect(controller.apply(other)).rejects.toMatchObject({ kind: "invalid", violations: [expect.objectContaining({ field: "node_id" })] });
    expect(await f.store.getDesiredState()).toBeNull();
  });

  it("calls the idle policy after the steps", async () => {
    const seen: string[] = [];
    controller = new ReconcileController(f.deps, {
      idlePolicy: async () => {
        seen.push(`idle policy saw ${(await instancesOf("acme", "web")).length} instance(s)`);
      },
    });
    await applyAndRun(doc([{ id: "acme", pools: [{ id: "web", running: 1 }] }]));
    expect(seen).toEqual(["idle policy saw 1 instance(s)"]);
  });
});

describe("validation before anything is applied", () => {
  const base = () => doc([{ id: "acme", network: { net_id: 1, ipv4_subnet: "10.1.0.0/24" }, pools: [{ id: "web", running: 1 }] }]);
  const cases: Array<[string, (d: any) => void, string]> = [
    ["wrong schema version", (d) => (d.schema_version = 2), "schema_version"],
    ["duplicate tenant IDs", (d) => d.tenants.push({ ...d.tenants[0], network: { net_id: 2, ipv4_subnet: "10.2.0.0/24" } }), "tenants[1].tenant_id"],
    ["duplicate pool IDs", (d) => d.tenants[0].pools.push(d.tenants[0].pools[0]), "tenants[0].pools[1].pool_id"],
    ["unknown tenant in a pool path", (d) => (d.tenants[0].pools[0].tenant_id = "other"), "tenants[0].pools[0].tenant_id"],
    ["negative counts", (d) => (d.tenants[0].pools[0].desired_counts.running = -1), "tenants[0].pools[0].desired_counts.running"],
    ["counts above quota", (d) => (d.tenants[0].quotas = { max_running: 2, max_instances_per_pool: 2 }, d.tenants[0].pools[0].desired_counts = { running: 3 }), "tenants[0].pools[0].desired_counts"],
    ["overlapping subnets", (d) => d.tenants.push({ tenant_id: "beta", network: { net_id: 2, ipv4_subnet: "10.1.0.128/25" } }), "tenants[1].network.ipv4_subnet"],
  ];
  it.each(cases)("%s: invalid, with the field path, nothing persisted or created", async (_name, mutate, field) => {
    const d = base();
    mutate(d);
    const error = await controller.apply(d).catch((e: unknown) => e);
    expect(isMvmError(error) && error.kind).toBe("invalid");
    expect((error as MvmError).violations.map((v) => v.field)).toContain(field);
    expect(await f.store.getDesiredState()).toBeNull();
    await expect(controller.plan(d)).rejects.toMatchObject({ kind: "invalid" });
    expect(await f.store.listTenants()).toEqual([]);
  });

  it("reports every fault of a document at once", async () => {
    const d = base() as any;
    d.schema_version = 3;
    d.tenants[0].pools[0].desired_counts.warm = -2;
    d.tenants.push({ tenant_id: "acme" });
    const error = (await controller.apply(d).catch((e: unknown) => e)) as MvmError;
    expect(error.violations.map((v) => v.field)).toEqual(
      expect.arrayContaining(["schema_version", "tenants[0].pools[0].desired_counts.warm", "tenants[1].tenant_id"]),
    );
  });
});

// ── property: idempotent and convergent from random starting states ─────────────────────────────────────────────

const countsArb = fc.record({ running: fc.integer({ min: 0, max: 2 }), warm: fc.integer({ min: 0, max: 1 }), sleeping: fc.integer({ min: 0, max: 1 }) });
const poolArb = fc.record({ counts: countsArb, critical: fc.boolean() });
const desiredArb = fc.record({
  tenants: fc.uniqueArray(
    fc.record({ id: fc.constantFrom("t-a", "t-b", "t-c"), pools: fc.uniqueArray(fc.record({ id: fc.constantFrom("p-1", "p-2"), spec: poolArb }), { selector: (p) => p.id, maxLength: 2 }) }),
    { selector: (t) => t.id, maxLength: 2 },
  ),
  pruneTenants: fc.boolean(),
  prunePools: fc.boolean(),
});
const startArb = fc.array(
  fc.record({ tenant: fc.constantFrom("t-a", "t-b", "t-c"), pool: fc.constantFrom("p-1", "p-2", "p-x"), state: fc.constantFrom("created", "running", "stopped", "warm", "sleeping"), idleS: fc.nat(1000) }),
  { maxLength: 6 },
);

async function seed(start: ReadonlyArray<{ tenant: string; pool: string; state: string; idleS: number }>): Promise<void> {
  for (const s of start) {
    if (!(await f.store.getTenant(s.tenant))) await createTenant(f.deps, { tenantId: s.tenant });
    if (!(await f.store.getPool(s.tenant, s.pool))) {
      await createPool(f.deps, { tenantId: s.tenant, poolId: s.pool }, { resources: { vcpus: 1, memMib: 256, dataDiskMib: 0 } });
      const pool = (await f.store.getPool(s.tenant, s.pool))!;
      await f.store.putPool({ ...pool, currentRevision: "0123456789abcdef" });
    }
    const instance = await createInstance(f.deps, { tenantId: s.tenant, poolId: s.pool });
    const key = { tenantId: s.tenant, poolId: s.pool, instanceId: instance.instanceId };
    if (s.state !== "created") await startInstance(f.deps, key);
    if (s.state === "stopped") await stopInstance(f.deps, key);
    if (s.state === "warm") await warmInstance(f.deps, key);
    if (s.state === "sleeping") await sleepInstance(f.deps, key);
    const now = (await f.store.getInstance(s.tenant, s.pool, instance.instanceId))!;
    await f.store.putInstance({ ...now, idle: { ...now.idle, idleS: s.idleS } });
  }
}

describe("property", () => {
  it("a second pass over the same desired state takes no action, and the node has converged", async () => {
    await fc.assert(
      fc.asyncProperty(desiredArb, startArb, async (desired, start) => {
        f = await reconcileFixture();
        controller = new ReconcileController(f.deps, { backoffBaseMs: 0 });
        await seed(start);
        const document = doc(
          desired.tenants.map((t) => ({ id: t.id, pools: t.pools.map((p) => ({ id: p.id, ...p.spec.counts, critical: p.spec.critical })) })),
          { prune_unknown_tenants: desired.pruneTenants, prune_unknown_pools: desired.prunePools },
        );
        const first = await applyAndRun(document);
        expect(first.errors).toEqual([]);
        expect(first.converged).toBe(true);
        const second = await controller.reconcile("periodic");
        expect(second.results.map((r) => describeStep(r.step))).toEqual([]);
        expect(second.converged).toBe(true);
        for (const t of desired.tenants) {
          for (const p of t.pools) {
            const counts = countByStatus(await instancesOf(t.id, p.id));
            for (const c of ["running", "warm", "sleeping"] as const) {
              if (p.spec.critical) expect(counts[c] ?? 0).toBeGreaterThanOrEqual(p.spec.counts[c]);
              else expect(counts[c] ?? 0).toBe(p.spec.counts[c]);
            }
          }
        }
        const listed = new Set<string>(desired.tenants.map((t) => t.id));
        for (const tenant of await f.store.listTenants()) {
          if (desired.pruneTenants) expect(listed.has(tenant.tenantId)).toBe(true);
        }
      }),
      { numRuns: 60 },
    );
  });
});
