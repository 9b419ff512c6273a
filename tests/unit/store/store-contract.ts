// Behaviour every Store adapter must show, run against FsStore and MemoryStore alike so the fake stays honest.

import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import { SCHEMA_VERSION } from "../../../src/core/model.js";
import type { Store } from "../../../src/core/ports.js";
import { buildRecord, delay, instanceRecord, poolRecord, tenantRecord } from "./fixtures.js";

async function rejection(p: Promise<unknown>): Promise<MvmError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(MvmError);
  return e as MvmError;
}

export function describeStoreContract(name: string, openStore: () => Promise<Store>): void {
  describe(`${name}: Store contract`, () => {
    it("creates the node record once and returns the same node id afterwards", async () => {
      const store = await openStore();
      const first = await store.node();
      expect(first.nodeId).toMatch(/^n-[0-9a-f]{12}$/);
      expect(first.schemaVersion).toBe(SCHEMA_VERSION);
      const again = await Promise.all([store.node(), store.node()]);
      expect(again.map((n) => n.nodeId)).toEqual([first.nodeId, first.nodeId]);
    });

    it("round-trips tenants as deep copies, stamping the schema version", async () => {
      const store = await openStore();
      const input = tenantRecord("acme");
      input.schemaVersion = 0;
      await store.putTenant(input);
      input.labels.team = "changed after put";
      const got = await store.getTenant("acme");
      expect(got?.labels.team).toBe("a");
      expect(got?.schemaVersion).toBe(SCHEMA_VERSION);
      got!.labels.team = "changed after get";
      expect((await store.getTenant("acme"))?.labels.team).toBe("a");
      expect(await store.getTenant("nobody")).toBeNull();
    });

    it("lists tenants, pools and instances sorted by id", async () => {
      const store = await openStore();
      for (const t of ["zeta", "alpha", "mid"]) await store.putTenant(tenantRecord(t));
      expect((await store.listTenants()).map((t) => t.tenantId)).toEqual(["alpha", "mid", "zeta"]);
      for (const p of ["web", "api"]) await store.putPool(poolRecord("mid", p));
      expect((await store.listPools("mid")).map((p) => p.poolId)).toEqual(["api", "web"]);
      expect(await store.listPools("alpha")).toEqual([]);
      for (const i of ["i-0000000f", "i-00000001", "i-000000a0"]) await store.putInstance(instanceRecord("mid", "web", i));
      expect((await store.listInstances("mid", "web")).map((i) => i.instanceId)).toEqual([
        "i-00000001",
        "i-0000000f",
        "i-000000a0",
      ]);
      expect(await store.listInstances("mid", "api")).toEqual([]);
      expect(await store.listInstances("nobody", "web")).toEqual([]);
    });

    it("refuses a pool without its tenant and an instance without its pool", async () => {
      const store = await openStore();
      expect((await rejection(store.putPool(poolRecord("ghost", "web")))).kind).toBe("not_found");
      await store.putTenant(tenantRecord("acme"));
      expect((await rejection(store.putInstance(instanceRecord("acme", "web", "i-00000001")))).kind).toBe("not_found");
      expect((await rejection(store.appendBuild("acme", "web", buildRecord("r1"), 3))).kind).toBe("not_found");
      expect(await store.listPools("acme")).toEqual([]);
    });

    it("deletes a tenant with everything under it, idempotently", async () => {
      const store = await openStore();
      await store.putTenant(tenantRecord("acme"));
      await store.putTenant(tenantRecord("other"));
      await store.putPool(poolRecord("acme", "web"));
      await store.putInstance(instanceRecord("acme", "web", "i-00000001"));
      await store.appendBuild("acme", "web", buildRecord("r1"), 5);
      await store.deleteTenant("acme");
      expect(await store.getTenant("acme")).toBeNull();
      expect(await store.getPool("acme", "web")).toBeNull();
      expect(await store.getInstance("acme", "web", "i-00000001")).toBeNull();
      expect(await store.listBuilds("acme", "web")).toEqual([]);
      expect((await store.listTenants()).map((t) => t.tenantId)).toEqual(["other"]);
      await store.deleteTenant("acme");
      // A re-created tenant starts empty.
      await store.putTenant(tenantRecord("acme"));
      expect(await store.listPools("acme")).toEqual([]);
    });

    it("deletes pools and instances, idempotently", async () => {
      const store = await openStore();
      await store.putTenant(tenantRecord("acme"));
      await store.putPool(poolRecord("acme", "web"));
      await store.putPool(poolRecord("acme", "api"));
      await store.putInstance(instanceRecord("acme", "web", "i-00000001"));
      await store.putInstance(instanceRecord("acme", "web", "i-00000002"));
      await store.deleteInstance("acme", "web", "i-00000001");
      await store.deleteInstance("acme", "web", "i-00000001");
      expect((await store.listInstances("acme", "web")).map((i) => i.instanceId)).toEqual(["i-00000002"]);
      await store.deletePool("acme", "web");
      await store.deletePool("acme", "web");
      expect((await store.listPools("acme")).map((p) => p.poolId)).toEqual(["api"]);
      expect(await store.getInstance("acme", "web", "i-00000002")).toBeNull();
    });

    it("keeps the newest `keep` builds, oldest first", async () => {
      const store = await openStore();
      await store.putTenant(tenantRecord("acme"));
      await store.putPool(poolRecord("acme", "web"));
      for (let n = 1; n <= 5; n++) await store.appendBuild("acme", "web", buildRecord(`r${n}`), 3);
      expect((await store.listBuilds("acme", "web")).map((b) => b.revision)).toEqual(["r3", "r4", "r5"]);
      await store.appendBuild("acme", "web", buildRecord("r6"), 1);
      expect((await store.listBuilds("acme", "web")).map((b) => b.revision)).toEqual(["r6"]);
      const bad = await rejection(store.appendBuild("acme", "web", buildRecord("r7"), 0));
      expect(bad.kind).toBe("invalid");
      expect(bad.violations[0]?.field).toBe("keep");
    });

    it("keeps a tenant's secret set (binary contents), hashes it, and deletes it with the tenant", async () => {
      const store = await openStore();
      expect((await rejection(store.putTenantSecrets("acme", {}))).kind).toBe("not_found");
      await store.putTenant(tenantRecord("acme"));
      expect(await store.getTenantSecrets("acme")).toEqual({});
      const files = { b: new Uint8Array([0, 255, 10]), a: new TextEncoder().encode("x") };
      const hash = await store.putTenantSecrets("acme", files);
      // a, then b: name NUL length NUL content.
      const expected = createHash("sha256").update("a\u00001\u0000x").update("b\u00003\u0000").update(new Uint8Array([0, 255, 10])).digest("hex");
      expect(hash).toBe(expected);
      expect(await store.getTenantSecrets("acme")).toEqual(files);
      expect(await store.putTenantSecrets("acme", {})).toBe("");
      expect(await store.getTenantSecrets("acme")).toEqual({});
      await store.putTenantSecrets("acme", files);
      await store.deleteTenant("acme");
      await store.putTenant(tenantRecord("acme"));
      expect(await store.getTenantSecrets("acme")).toEqual({});
    });

    it("drops named revisions from the build history, keeping the others in order; nothing to drop is no error", async () => {
      const store = await openStore();
      await store.putTenant(tenantRecord("acme"));
      await store.putPool(poolRecord("acme", "web"));
      await store.removeBuilds("acme", "web", ["r1"]);
      for (let n = 1; n <= 4; n++) await store.appendBuild("acme", "web", buildRecord(`r${n}`), 5);
      await store.removeBuilds("acme", "web", ["r3", "r1", "r9"]);
      expect((await store.listBuilds("acme", "web")).map((b) => b.revision)).toEqual(["r2", "r4"]);
      await store.removeBuilds("acme", "web", []);
      expect((await store.listBuilds("acme", "web")).map((b) => b.revision)).toEqual(["r2", "r4"]);
    });

    it("refuses invalid ids, naming the field", async () => {
      const store = await openStore();
      const cases: [() => Promise<unknown>, string][] = [
        [() => store.getTenant("../etc"), "tenant_id"],
        [() => store.putTenant(tenantRecord("Acme")), "tenant_id"],
        [() => store.deleteTenant("-acme"), "tenant_id"],
        [() => store.getPool("acme", "web/.."), "pool_id"],
        [() => store.listInstances("acme", ""), "pool_id"],
        [() => store.getInstance("acme", "web", "i-xyz"), "instance_id"],
        [() => store.putInstance(instanceRecord("acme", "web", "i-../../x")), "instance_id"],
        [() => store.withTenantLock("a b", async () => 1), "tenant_id"],
      ];
      for (const [call, field] of cases) {
        const e = await rejection(call());
        expect(e.kind).toBe("invalid");
        expect(e.violations.map((v) => v.field)).toEqual([field]);
      }
      expect(() => store.instanceDir("acme", "web", "../x")).toThrow(MvmError);
      expect(() => store.tenantSshKeyPaths("..")).toThrow(MvmError);
    });

    it("places instance directories and ssh keys under the data root", async () => {
      const store = await openStore();
      expect(store.instanceDir("acme", "web", "i-0000abcd")).toBe(
        `${store.dataRoot}/tenants/acme/pools/web/instances/i-0000abcd`,
      );
      expect(store.tenantSshKeyPaths("acme")).toEqual({
        privateKey: `${store.dataRoot}/tenants/acme/ssh/id_ed25519`,
        publicKey: `${store.dataRoot}/tenants/acme/ssh/id_ed25519.pub`,
      });
    });

    it("serialises work under one tenant lock and lets other tenants run alongside", async () => {
      const store = await openStore();
      const events: string[] = [];
      const task = (tenant: string, tag: string) =>
        store.withTenantLock(tenant, async () => {
          events.push(`${tag}+`);
          await delay(15);
          events.push(`${tag}-`);
        });
      await Promise.all([task("acme", "a1"), task("acme", "a2"), task("beta", "b1")]);
      const a1 = events.indexOf("a1+");
      const a2 = events.indexOf("a2+");
      const [first, second] = a1 < a2 ? ["a1", "a2"] : ["a2", "a1"];
      expect(events.indexOf(`${first}-`)).toBeLessThan(events.indexOf(`${second}+`));
      // beta did not wait for both acme tasks.
      expect(events.indexOf("b1+")).toBeLessThan(events.indexOf(`${second}+`));
    });

    it("is re-entrant and enforces the lock order", async () => {
      const store = await openStore();
      const nested = await store.withTenantLock("acme", () => store.withTenantLock("acme", async () => "inner"));
      expect(nested).toBe("inner");
      const underNode = await store.withNodeLock(() =>
        store.withTenantLock("acme", () => store.withTenantLock("beta", () => store.withNodeLock(async () => "ok"))),
      );
      expect(underNode).toBe("ok");
      const nodeInsideTenant = await rejection(store.withTenantLock("acme", () => store.withNodeLock(async () => 1)));
      expect(nodeInsideTenant.kind).toBe("internal");
      expect(nodeInsideTenant.message).toMatch(/node lock must be taken before/);
      const twoTenants = await rejection(store.withTenantLock("acme", () => store.withTenantLock("beta", async () => 1)));
      expect(twoTenants.message).toMatch(/nest only under the node lock/);
      // The refused attempts released what they held.
      expect(await store.withNodeLock(() => store.withTenantLock("acme", async () => "free"))).toBe("free");
    });

    it("passes an error from the locked function through and releases the lock", async () => {
      const store = await openStore();
      await expect(
        store.withTenantLock("acme", async () => {
          throw new Error("boom");
        }),
      ).rejects.toThrow("boom");
      expect(await store.withTenantLock("acme", async () => 7)).toBe(7);
    });
  });
}
