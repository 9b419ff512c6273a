import { lstat, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import { SCHEMA_VERSION } from "../../../src/core/model.js";
import type { BrokenRecord } from "../../../src/core/ports.js";
import { FsStore } from "../../../src/runtime/store/fs-store.js";
import { describeStoreContract } from "./store-contract.js";
import { buildRecord, instanceRecord, poolRecord, tenantRecord } from "./fixtures.js";

const scratchDirs: string[] = [];

async function scratch(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-fs-store-"));
  scratchDirs.push(dir);
  return dir;
}

afterEach(async () => {
  await Promise.all(scratchDirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function openFresh(onBroken?: (b: BrokenRecord) => void): Promise<FsStore> {
  return FsStore.open(join(await scratch(), "data"), onBroken ? { onBroken } : {});
}

/** Every path under `root` (relative), with its type, for before/after comparisons. */
async function tree(root: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(dir: string): Promise<void> {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      out.push(`${relative(root, path)}${entry.isDirectory() ? "/" : ""}`);
      if (entry.isDirectory()) await walk(path);
    }
  }
  await walk(root);
  return out.sort();
}

function mode(s: { mode: number }): number {
  return s.mode & 0o777;
}

describeStoreContract("FsStore", () => openFresh());

describe("FsStore on disk", () => {
  it("creates the data root and its directories 0700, record files 0600", async () => {
    const store = await openFresh();
    await store.putTenant(tenantRecord("acme"));
    await store.putPool(poolRecord("acme", "web"));
    await store.putInstance(instanceRecord("acme", "web", "i-00000001"));
    for (const dir of ["", "locks", "tenants", "tenants/acme", "tenants/acme/pools/web/instances/i-00000001"]) {
      expect(mode(await stat(join(store.dataRoot, dir))), dir).toBe(0o700);
    }
    const record = join(store.dataRoot, "tenants/acme/pools/web/instances/i-00000001/instance.json");
    expect(mode(await stat(record))).toBe(0o600);
    const onDisk = JSON.parse(await readFile(record, "utf8"));
    expect(onDisk.schemaVersion).toBe(SCHEMA_VERSION);
    expect(onDisk.instanceId).toBe("i-00000001");
  });

  it("writes the ssh key pair 0600/0644 with final newlines", async () => {
    const store = await openFresh();
    const privateKey = "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----";
    await store.putTenantSshKey("acme", { privateKey, publicKey: "ssh-ed25519 AAAA acme" });
    const paths = store.tenantSshKeyPaths("acme");
    expect(mode(await stat(paths.privateKey))).toBe(0o600);
    expect(mode(await stat(paths.publicKey))).toBe(0o644);
    expect(await readFile(paths.publicKey, "utf8")).toBe("ssh-ed25519 AAAA acme\n");
    expect(await readFile(paths.privateKey, "utf8")).toMatch(/END OPENSSH PRIVATE KEY-----\n$/);
    // A key without a tenant record yet is not a tenant.
    expect(await store.listTenants()).toEqual([]);
  });

  it("keeps the node id across reopening, and concurrent first calls agree", async () => {
    const root = join(await scratch(), "data");
    const a = await FsStore.open(root);
    const b = await FsStore.open(root);
    const ids = new Set((await Promise.all([a.node(), b.node(), a.node(), b.node()])).map((n) => n.nodeId));
    expect(ids.size).toBe(1);
    expect((await (await FsStore.open(root)).node()).nodeId).toBe([...ids][0]);
  });

  it("leaves no temp files behind after writes", async () => {
    const store = await openFresh();
    await store.putTenant(tenantRecord("acme"));
    await store.putPool(poolRecord("acme", "web"));
    for (let n = 0; n < 5; n++) await store.appendBuild("acme", "web", buildRecord(`r${n}`), 3);
    await store.node();
    const leftovers = (await tree(store.dataRoot)).filter((p) => /(^|\/)\./.test(p) || p.endsWith(".tmp"));
    expect(leftovers).toEqual([]);
  });

  it("moves a corrupt record aside, reports it, and keeps its content", async () => {
    const reported: BrokenRecord[] = [];
    const store = await openFresh((b) => reported.push(b));
    await store.putTenant(tenantRecord("acme"));
    await store.putTenant(tenantRecord("beta"));
    const file = join(store.dataRoot, "tenants/acme/tenant.json");
    const garbage = '{"schemaVersion": 1, "tenantId": "acme", "quo';
    await writeFile(file, garbage);

    expect((await store.listTenants()).map((t) => t.tenantId)).toEqual(["beta"]);
    expect(reported).toHaveLength(1);
    expect(reported[0]?.path).toBe(`${file}.broken`);
    expect(reported[0]?.reason).toMatch(/^tenants\/acme\/tenant\.json: is not valid JSON/);
    expect(await readFile(`${file}.broken`, "utf8")).toBe(garbage);
    expect(await readFile(`${file}.broken.reason`, "utf8")).toContain("not valid JSON");
    await expect(lstat(file)).rejects.toThrow(/ENOENT/);
    expect(await store.brokenRecords()).toEqual(reported);
    // Not reported again: it is no longer where records are read.
    expect(await store.getTenant("acme")).toBeNull();
    expect(reported).toHaveLength(1);

    // A second corrupt copy gets a timestamped name instead of replacing the first.
    await writeFile(file, "");
    expect(await store.getTenant("acme")).toBeNull();
    expect(reported).toHaveLength(2);
    expect(reported[1]?.path).toMatch(/tenant\.json\.\d{4}-\d\d-\d\dT[\d-]+Z\.broken$/);
    expect(reported[1]?.reason).toMatch(/is empty/);
    expect(await readFile(`${file}.broken`, "utf8")).toBe(garbage);
    expect((await store.brokenRecords()).map((b) => b.path).sort()).toEqual(reported.map((b) => b.path).sort());
  });

  it("treats a record from a newer schema as broken", async () => {
    const reported: BrokenRecord[] = [];
    const store = await openFresh((b) => reported.push(b));
    await store.putTenant(tenantRecord("acme"));
    await store.putPool(poolRecord("acme", "web"));
    const file = join(store.dataRoot, "tenants/acme/pools/web/pool.json");
    const newer = { ...poolRecord("acme", "web"), schemaVersion: SCHEMA_VERSION + 1 };
    await writeFile(file, JSON.stringify(newer));
    expect(await store.getPool("acme", "web")).toBeNull();
    expect(reported.map((b) => b.reason)).toEqual([
      `tenants/acme/pools/web/pool.json: schema_version ${SCHEMA_VERSION + 1} is newer than this build supports (${SCHEMA_VERSION})`,
    ]);
    expect(JSON.parse(await readFile(`${file}.broken`, "utf8"))).toEqual(newer);
  });

  it("treats a record whose ids do not match its directory, or without a schema version, as broken", async () => {
    const reported: BrokenRecord[] = [];
    const store = await openFresh((b) => reported.push(b));
    await store.putTenant(tenantRecord("acme"));
    await store.putPool(poolRecord("acme", "web"));
    await store.putInstance(instanceRecord("acme", "web", "i-00000001"));
    await store.putInstance(instanceRecord("acme", "web", "i-00000002"));
    const dir = join(store.dataRoot, "tenants/acme/pools/web/instances");
    await writeFile(join(dir, "i-00000001/instance.json"), JSON.stringify(instanceRecord("acme", "web", "i-00000009")));
    const { schemaVersion: _dropped, ...unversioned } = instanceRecord("acme", "web", "i-00000002");
    await writeFile(join(dir, "i-00000002/instance.json"), JSON.stringify(unversioned));
    expect(await store.listInstances("acme", "web")).toEqual([]);
    expect(reported.map((b) => b.reason).sort()).toEqual([
      'tenants/acme/pools/web/instances/i-00000001/instance.json: instance_id is "i-00000009" ' +
        "but the record sits in the directory of i-00000001",
      "tenants/acme/pools/web/instances/i-00000002/instance.json: schema_version is missing or not a positive integer",
    ]);
  });

  it("moves a corrupt build history aside and starts a new one", async () => {
    const reported: BrokenRecord[] = [];
    const store = await openFresh((b) => reported.push(b));
    await store.putTenant(tenantRecord("acme"));
    await store.putPool(poolRecord("acme", "web"));
    await store.appendBuild("acme", "web", buildRecord("r1"), 3);
    await writeFile(join(store.dataRoot, "tenants/acme/pools/web/builds.json"), "[1,2");
    await store.appendBuild("acme", "web", buildRecord("r2"), 3);
    expect((await store.listBuilds("acme", "web")).map((b) => b.revision)).toEqual(["r2"]);
    expect(reported).toHaveLength(1);
  });

  it("refuses a symlinked tenant directory", async () => {
    const store = await openFresh();
    const elsewhere = await scratch();
    await writeFile(join(elsewhere, "tenant.json"), JSON.stringify(tenantRecord("evil")));
    await symlink(elsewhere, join(store.dataRoot, "tenants", "evil"));
    for (const attempt of [
      () => store.getTenant("evil"),
      () => store.listTenants(),
      () => store.putTenant(tenantRecord("evil")),
      () => store.deleteTenant("evil"),
      () => store.putTenantSshKey("evil", { publicKey: "p", privateKey: "k" }),
    ]) {
      const e = await attempt().then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(e).toBeInstanceOf(MvmError);
      expect((e as MvmError).message).toMatch(/tenants\/evil in the data root is a symbolic link/);
    }
    expect(await readdir(elsewhere)).toEqual(["tenant.json"]);
  });

  it("does not follow a symlink in place of a record file", async () => {
    const reported: BrokenRecord[] = [];
    const store = await openFresh((b) => reported.push(b));
    await store.putTenant(tenantRecord("acme"));
    const outside = join(await scratch(), "secret.json");
    await writeFile(outside, JSON.stringify(tenantRecord("acme")));
    const file = join(store.dataRoot, "tenants/acme/tenant.json");
    await rm(file);
    await symlink(outside, file);
    expect(await store.getTenant("acme")).toBeNull();
    expect(reported[0]?.reason).toMatch(/symbolic link/);
    expect((await lstat(`${file}.broken`)).isSymbolicLink()).toBe(true);
    // Writing replaces the link rather than writing through it.
    await symlink(outside, file);
    await store.putTenant(tenantRecord("acme"));
    expect((await lstat(file)).isFile()).toBe(true);
    expect(JSON.parse(await readFile(outside, "utf8")).labels).toEqual({ team: "a" });
  });

  it("rejects invalid ids before touching the filesystem", async () => {
    const root = join(await scratch(), "data");
    const store = await FsStore.open(root);
    await store.putTenant(tenantRecord("acme"));
    const before = await tree(root);
    const attempts = [
      () => store.putTenant(tenantRecord("../../escape")),
      () => store.putPool(poolRecord("acme", "../../escape")),
      () => store.putInstance(instanceRecord("acme", "web", "i-0000000g")),
      () => store.putTenantSshKey("..", { publicKey: "p", privateKey: "k" }),
      () => store.deletePool("acme", "."),
      () => store.appendBuild("acme", "UPPER", buildRecord("r1"), 1),
      () => store.withTenantLock("../x", async () => 1),
    ];
    for (const attempt of attempts) await expect(attempt()).rejects.toMatchObject({ kind: "invalid" });
    expect(await tree(root)).toEqual(before);
    expect(await readdir(join(root, ".."))).toEqual(["data"]);
  });

  it("skips a deletion a crash interrupted, and finishes it on the next open", async () => {
    const root = join(await scratch(), "data");
    const store = await FsStore.open(root);
    await store.putTenant(tenantRecord("acme"));
    await store.putPool(poolRecord("acme", "web"));
    // What deleteTenant leaves if killed between its rename and the end of rm -r.
    const halfDeleted = join(root, "tenants", ".deleting-gone-0123456789ab");
    await mkdir(join(halfDeleted, "pools", "web"), { recursive: true });
    await writeFile(join(halfDeleted, "tenant.json"), JSON.stringify(tenantRecord("gone")));
    const poolHalfDeleted = join(root, "tenants/acme/pools/.deleting-old-0123456789ab");
    await mkdir(poolHalfDeleted);
    expect((await store.listTenants()).map((t) => t.tenantId)).toEqual(["acme"]);
    expect((await store.listPools("acme")).map((p) => p.poolId)).toEqual(["web"]);

    const reopened = await FsStore.open(root);
    await expect(lstat(halfDeleted)).rejects.toThrow(/ENOENT/);
    await expect(lstat(poolHalfDeleted)).rejects.toThrow(/ENOENT/);
    expect((await reopened.listTenants()).map((t) => t.tenantId)).toEqual(["acme"]);
  });

  it("sweeps temp files of dead writers and keeps those of live ones", async () => {
    const store = await openFresh();
    await store.putTenant(tenantRecord("acme"));
    const dir = join(store.dataRoot, "tenants/acme");
    // 4194304 is above Linux's largest pid_max, so no process has it.
    const dead = join(dir, ".tenant.json.4194305.0123456789ab.tmp");
    const live = join(dir, `.tenant.json.${process.pid}.0123456789ab.tmp`);
    await writeFile(dead, "partial");
    await writeFile(live, "in progress");
    expect((await store.getTenant("acme"))?.tenantId).toBe("acme");
    const swept = await store.sweep();
    expect(swept.removedTempFiles).toEqual([dead]);
    await expect(lstat(dead)).rejects.toThrow(/ENOENT/);
    expect((await lstat(live)).isFile()).toBe(true);
  });

  it("refuses a data root that is a file", async () => {
    const file = join(await scratch(), "plain");
    await writeFile(file, "");
    await expect(FsStore.open(file)).rejects.toThrow();
  });
});
