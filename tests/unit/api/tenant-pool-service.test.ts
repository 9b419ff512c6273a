import { createHash } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BadRequestDetailSchema } from "../../../gen/mvm/v1/errors_pb.js";
import { BuildPhase, PoolService } from "../../../gen/mvm/v1/pool_service_pb.js";
import { TenantService } from "../../../gen/mvm/v1/tenant_service_pb.js";
import { createHarness, type Harness } from "./api-harness.js";
import { expectCode } from "./expect-rpc.js";

let h: Harness;

beforeEach(async () => {
  h = await createHarness();
});
afterEach(async () => {
  await h.close();
});

const debian = { image: { source: { case: "debian" as const, value: { suite: "bookworm" } } }, resources: { vcpus: 1, memMib: 256 } };

async function tenantWithPool(tenantId = "acme", poolId = "web") {
  const admin = h.client(TenantService, "admin");
  await admin.createTenant({ tenantId, labels: { team: tenantId } });
  await h.client(PoolService, "admin").createPool({ pool: { tenantId, poolId }, spec: debian });
}

describe("TenantService", () => {
  it("creates, reads back, lists and deletes a tenant", async () => {
    const admin = h.client(TenantService, "admin");
    const created = await admin.createTenant({ tenantId: "acme", quotas: { maxRunning: 2 }, labels: { env: "prod" } });
    expect(created.tenant).toMatchObject({ tenantId: "acme", labels: { env: "prod" } });
    expect(created.tenant?.quotas).toMatchObject({ maxRunning: 2, maxVcpus: 16 });
    expect(created.tenant?.network?.bridgeName).not.toBe("");
    expect((await admin.getTenant({ tenantId: "acme" })).tenant?.createdAt).toEqual(created.tenant?.createdAt);
    expect((await admin.listTenants({})).tenants.map((t) => t.tenantId)).toEqual(["acme"]);
    await admin.deleteTenant({ tenantId: "acme" });
    await expectCode(admin.getTenant({ tenantId: "acme" }), Code.NotFound);
  });

  it("returns InvalidArgument with a BadRequestDetail naming every field", async () => {
    const error = await expectCode(
      h.client(TenantService, "admin").createTenant({ tenantId: "Not_Valid", network: { netId: 5000 }, labels: { "": "x" } }),
      Code.InvalidArgument,
    );
    const fields = error.findDetails(BadRequestDetailSchema)[0]?.fieldViolations.map((v) => v.field);
    expect(fields).toContain("tenant_id");
    expect(fields).toContain("network.net_id");
    expect(fields?.some((f) => f.startsWith("labels"))).toBe(true);
  });

  it("returns AlreadyExists for a taken ID", async () => {
    const admin = h.client(TenantService, "admin");
    await admin.createTenant({ tenantId: "acme" });
    await expectCode(admin.createTenant({ tenantId: "acme" }), Code.AlreadyExists);
  });

  it("applies a create once per request_id", async () => {
    const admin = h.client(TenantService, "admin");
    const first = await admin.createTenant({ tenantId: "acme", requestId: "req-1" });
    const retry = await admin.createTenant({ tenantId: "acme", requestId: "req-1" });
    expect(retry.tenant).toEqual(first.tenant);
    const entries = await h.audit.tail("acme", 100);
    expect(entries.filter((e) => e.action === "tenant_create")).toHaveLength(1);
    expect(entries.find((e) => e.action === "tenant_create")?.details.request_id).toBe("req-1");
  });

  it("updates only what the mask names and replaces labels", async () => {
    const admin = h.client(TenantService, "admin");
    await admin.createTenant({ tenantId: "acme", quotas: { maxPools: 2 }, labels: { a: "1", b: "2" } });
    const updated = await admin.updateTenant({
      tenantId: "acme",
      quotas: { maxRunning: 3, maxPools: 9 },
      labels: { c: "3" },
      updateMask: create(FieldMaskSchema, { paths: ["quotas.max_running", "labels"] }),
    });
    expect(updated.tenant?.quotas).toMatchObject({ maxRunning: 3, maxPools: 2 });
    expect(updated.tenant?.labels).toEqual({ c: "3" });
    const error = await expectCode(admin.updateTenant({ tenantId: "acme", updateMask: create(FieldMaskSchema, { paths: ["nonsense"] }) }), Code.InvalidArgument);
    expect(error.findDetails(BadRequestDetailSchema)[0]?.fieldViolations[0]?.field).toBe("update_mask.paths[0]");
  });

  it("refuses to delete a tenant with pools unless forced, and then destroys its instances", async () => {
    await tenantWithPool();
    const admin = h.client(TenantService, "admin");
    await expectCode(admin.deleteTenant({ tenantId: "acme" }), Code.FailedPrecondition);
    await admin.deleteTenant({ tenantId: "acme", force: true });
    await expectCode(admin.getTenant({ tenantId: "acme" }), Code.NotFound);
  });

  it("pages tenants with an opaque token and filters by labels", async () => {
    const admin = h.client(TenantService, "admin");
    for (const id of ["t-a", "t-b", "t-c", "t-d", "t-e"]) await admin.createTenant({ tenantId: id, labels: { tier: id < "t-c" ? "gold" : "free" } });
    const first = await admin.listTenants({ pageSize: 2 });
    expect(first.tenants.map((t) => t.tenantId)).toEqual(["t-a", "t-b"]);
    const second = await admin.listTenants({ pageSize: 2, pageToken: first.nextPageToken });
    expect(second.tenants.map((t) => t.tenantId)).toEqual(["t-c", "t-d"]);
    const third = await admin.listTenants({ pageSize: 2, pageToken: second.nextPageToken });
    expect(third.tenants.map((t) => t.tenantId)).toEqual(["t-e"]);
    expect(third.nextPageToken).toBe("");
    expect((await admin.listTenants({ labels: { tier: "gold" } })).tenants.map((t) => t.tenantId)).toEqual(["t-a", "t-b"]);
    await expectCode(admin.listTenants({ pageToken: first.nextPageToken, labels: { tier: "gold" } }), Code.InvalidArgument);
  });

  it("rotates a tenant's secrets: a new epoch, the set's hash, the files on the next secrets disk; contents never audited", async () => {
    const admin = h.client(TenantService, "admin");
    await expectCode(admin.rotateSecrets({ tenantId: "ghost" }), Code.NotFound);
    await admin.createTenant({ tenantId: "acme" });
    const password = new TextEncoder().encode("hunter2");
    const rotated = (await admin.rotateSecrets({ tenantId: "acme", secrets: { files: { "db-password": password } } })).tenant!;
    expect(rotated.secretsEpoch).toBe(1n);
    // name NUL length NUL content, for each file in name order.
    const expected = createHash("sha256").update("db-password\u00007\u0000").update(password).digest("hex");
    expect(rotated.secretsHash).toBe(expected);
    expect((await admin.getTenant({ tenantId: "acme" })).tenant?.secretsHash).toBe(expected);
    expect(await h.runtime.store.getTenantSecrets("acme")).toEqual({ "db-password": password });

    // Without a set: the same secrets, a new epoch.
    const again = (await admin.rotateSecrets({ tenantId: "acme" })).tenant!;
    expect([again.secretsEpoch, again.secretsHash]).toEqual([2n, expected]);
    const entries = (await h.audit.tail("acme", 10)).filter((e) => e.action === "tenant_secrets_rotate");
    expect(entries.map((e) => e.details)).toEqual([expect.objectContaining({ secrets: "replaced", files: "1" }), expect.objectContaining({ secrets: "kept" })]);
    expect(JSON.stringify(entries)).not.toContain("hunter2");

    const bad = await expectCode(admin.rotateSecrets({ tenantId: "acme", secrets: { files: { "../x": password } } }), Code.InvalidArgument);
    expect(bad.findDetails(BadRequestDetailSchema)[0]?.fieldViolations.map((v) => v.field)).toEqual(['secrets.files["../x"]']);
    await expectCode(h.client(TenantService, "tenant/acme").rotateSecrets({ tenantId: "acme" }), Code.PermissionDenied);

    const emptied = (await admin.rotateSecrets({ tenantId: "acme", secrets: { files: {} } })).tenant!;
    expect([emptied.secretsEpoch, emptied.secretsHash]).toEqual([3n, ""]);
  });
});

describe("PoolService", () => {
  it("creates a pool with defaults filled in and reads it back", async () => {
    await tenantWithPool();
    const pool = (await h.client(PoolService, "admin").getPool({ pool: { tenantId: "acme", poolId: "web" } })).pool;
    expect(pool?.spec?.resources).toMatchObject({ vcpus: 1, memMib: 256 });
    expect(pool?.spec?.metadataEnabled).toBe(true);
    expect(pool?.spec?.sleepPolicy?.warmAfterIdleS).toBe(300);
    expect(pool?.currentRevision).toBe("");
  });

  it("names invalid spec fields under spec and invalid refs under pool", async () => {
    await h.client(TenantService, "admin").createTenant({ tenantId: "acme" });
    const pools = h.client(PoolService, "admin");
    const error = await expectCode(pools.createPool({ pool: { tenantId: "acme", poolId: "web" }, spec: { ...debian, resources: { vcpus: 99, memMib: 1 } } }), Code.InvalidArgument);
    const fields = error.findDetails(BadRequestDetailSchema)[0]?.fieldViolations.map((v) => v.field);
    expect(fields).toEqual(expect.arrayContaining(["spec.resources.vcpus", "spec.resources.mem_mib"]));
    const refError = await expectCode(pools.getPool({ pool: { tenantId: "acme", poolId: "-bad" } }), Code.InvalidArgument);
    expect(refError.findDetails(BadRequestDetailSchema)[0]?.fieldViolations.map((v) => v.field)).toEqual(["pool.pool_id"]);
  });

  it("returns ResourceExhausted past max_pools, and audits the quota rejection", async () => {
    const admin = h.client(TenantService, "admin");
    await admin.createTenant({ tenantId: "acme", quotas: { maxPools: 1 } });
    const pools = h.client(PoolService, "admin");
    await pools.createPool({ pool: { tenantId: "acme", poolId: "one" }, spec: debian });
    const error = await expectCode(pools.createPool({ pool: { tenantId: "acme", poolId: "two" }, spec: debian }), Code.ResourceExhausted);
    expect(error.rawMessage).toMatch(/max_pools/);
    expect((await h.audit.tail("acme", 10)).some((e) => e.action === "quota_reject")).toBe(true);
  });

  it("scales, updates by mask, and deletes", async () => {
    await tenantWithPool();
    const pools = h.client(PoolService, "admin");
    const ref = { tenantId: "acme", poolId: "web" };
    const scaled = await pools.scalePool({ pool: ref, desiredCounts: { running: 2, warm: 1 } });
    expect(scaled.pool?.spec?.desiredCounts).toMatchObject({ running: 2, warm: 1, sleeping: 0 });
    await expectCode(pools.scalePool({ pool: ref }), Code.InvalidArgument);
    const updated = await pools.updatePool({ pool: ref, spec: { resources: { memMib: 1024 }, pinned: true }, updateMask: { paths: ["resources.mem_mib", "pinned"] } });
    expect(updated.pool?.spec?.resources).toMatchObject({ vcpus: 1, memMib: 1024 });
    expect(updated.pool?.spec?.pinned).toBe(true);
    await pools.deletePool({ pool: ref });
    await expectCode(pools.getPool({ pool: ref }), Code.NotFound);
  });

  it("streams a build's progress and ends with the revision, which becomes current", async () => {
    await tenantWithPool();
    const pools = h.client(PoolService, "admin");
    const ref = { tenantId: "acme", poolId: "web" };
    const events = [];
    for await (const e of pools.buildPool({ pool: ref })) events.push(e);
    const phases = events.filter((e) => e.event.case === "progress").map((e) => (e.event.case === "progress" ? e.event.value.phase : 0));
    expect(phases).toEqual([BuildPhase.RESOLVE, BuildPhase.ROOTFS, BuildPhase.DISK_IMAGE]);
    const last = events.at(-1);
    expect(last?.event.case).toBe("completed");
    const revision = last?.event.case === "completed" ? last.event.value.revision?.revision : "";
    expect((await pools.getPool({ pool: ref })).pool?.currentRevision).toBe(revision);
    const builds = await pools.listBuilds({ pool: ref });
    expect(builds.builds.map((b) => b.revision)).toEqual([revision]);
    expect(builds.currentRevision).toBe(revision);
  });

  it("joins a build already running for the pool instead of starting another", async () => {
    await tenantWithPool();
    let release!: () => void;
    h.builder.gate = () => new Promise((r) => (release = r));
    const pools = h.client(PoolService, "admin");
    const ref = { tenantId: "acme", poolId: "web" };
    const collect = async () => {
      const out = [];
      for await (const e of pools.buildPool({ pool: ref, requestId: "b-1" })) out.push(e.event.case);
      return out;
    };
    const first = collect();
    await new Promise((r) => setTimeout(r, 50));
    const second = collect();
    await new Promise((r) => setTimeout(r, 50));
    release();
    const [a, b] = await Promise.all([first, second]);
    expect(h.builder.builds).toBe(1);
    expect(a.at(-1)).toBe("completed");
    expect(b).toEqual(a);
  });

  it("ends a failed build's stream with its error", async () => {
    await tenantWithPool();
    h.builder.fail = new Error("mmdebstrap exited 1");
    const pools = h.client(PoolService, "admin");
    await expectCode((async () => { for await (const _ of pools.buildPool({ pool: { tenantId: "acme", poolId: "web" } })) void _; })(), Code.Internal);
  });

  it("rolls back to an earlier revision and reports the previous one", async () => {
    await tenantWithPool();
    const pools = h.client(PoolService, "admin");
    const ref = { tenantId: "acme", poolId: "web" };
    const revisions: string[] = [];
    for (let i = 0; i < 2; i++) {
      for await (const e of pools.buildPool({ pool: ref })) if (e.event.case === "completed") revisions.push(e.event.value.revision?.revision ?? "");
    }
    const listed = await pools.listBuilds({ pool: ref, pageSize: 1 });
    expect(listed.builds.map((b) => b.revision)).toEqual([revisions[1]]);
    const older = await pools.listBuilds({ pool: ref, pageSize: 1, pageToken: listed.nextPageToken });
    expect(older.builds.map((b) => b.revision)).toEqual([revisions[0]]);
    const rolled = await pools.rollbackPool({ pool: ref, revision: revisions[0] });
    expect(rolled.previousRevision).toBe(revisions[1]);
    expect(rolled.pool?.currentRevision).toBe(revisions[0]);
    await expectCode(pools.rollbackPool({ pool: ref, revision: "ffffffffffff" }), Code.NotFound);
  });

  it("lists pools across tenants in order, and of one tenant", async () => {
    await tenantWithPool("acme", "web");
    await tenantWithPool("other", "db");
    await h.client(PoolService, "admin").createPool({ pool: { tenantId: "acme", poolId: "api" }, spec: debian });
    const pools = h.client(PoolService, "admin");
    expect((await pools.listPools({})).pools.map((p) => `${p.tenantId}/${p.poolId}`)).toEqual(["acme/api", "acme/web", "other/db"]);
    expect((await pools.listPools({ tenantId: "other" })).pools.map((p) => p.poolId)).toEqual(["db"]);
    expect((await pools.listPools({ labels: { team: "other" } })).pools.map((p) => p.poolId)).toEqual(["db"]);
  });
});
