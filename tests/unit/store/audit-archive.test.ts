import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { FsStore } from "../../../src/runtime/store/fs-store.js";
import { tenantRecord } from "./fixtures.js";

let root: string;
afterEach(() => rmSync(root, { recursive: true, force: true }));

describe("tenant deletion keeps the audit trail", () => {
  it("moves the tenant's audit.log under audit/deleted-tenants before removing the tenant", async () => {
    root = mkdtempSync(join(tmpdir(), "mvm-archive-"));
    const store = await FsStore.open(root);
    await store.putTenant(tenantRecord("acme"));
    writeFileSync(join(root, "tenants/acme/audit.log"), '{"seq":1}\n');
    await store.deleteTenant("acme");
    expect(await store.getTenant("acme")).toBeNull();
    const archived = readdirSync(join(root, "audit/deleted-tenants"));
    expect(archived).toHaveLength(1);
    expect(archived[0]).toMatch(/^acme-\d{4}-.*\.log$/);
    expect(readFileSync(join(root, "audit/deleted-tenants", archived[0]!), "utf8")).toBe('{"seq":1}\n');
  });

  it("deletes a tenant that never wrote an audit log", async () => {
    root = mkdtempSync(join(tmpdir(), "mvm-archive-"));
    const store = await FsStore.open(root);
    await store.putTenant(tenantRecord("beta"));
    await store.deleteTenant("beta");
    expect(await store.getTenant("beta")).toBeNull();
  });
});
