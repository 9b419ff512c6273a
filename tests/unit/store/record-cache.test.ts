import { cp, mkdtemp, readFile, rename, rm, symlink, writeFile } from "node:fs/promises";
import { fstatSync, openSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import { FsStore } from "../../../src/runtime/store/fs-store.js";
import { cloneJson, RecordCache } from "../../../src/runtime/store/record-cache.js";
import { instanceRecord, poolRecord, tenantRecord } from "./fixtures.js";

const scratchDirs: string[] = [];

async function scratch(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-record-cache-"));
  scratchDirs.push(dir);
  return dir;
}

afterEach(async () => {
  await Promise.all(scratchDirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

function statOf(path: string) {
  const fd = openSync(path, "r");
  try {
    return fstatSync(fd, { bigint: true });
  } finally {
    closeSync(fd);
  }
}

/** Longer than any file-timestamp tick (a few ms) plus the settle time used below. */
const SETTLE_MS = 20;
const PAST_SETTLE_MS = 80;

/** A cache holding `r.json` = `text`, written and settled in a fresh directory. */
async function cacheWithSettledRecord(text: string) {
  const dir = await scratch();
  const path = join(dir, "r.json");
  await writeFile(path, text);
  await sleep(PAST_SETTLE_MS);
  const cache = new RecordCache({ settleMs: SETTLE_MS });
  cache.remember(path, statOf(path), JSON.parse(text));
  return { dir, path, cache };
}

describe("RecordCache", () => {
  it("serves a settled record as a fresh object per reader, until the file is replaced by rename", async () => {
    const { dir, path, cache } = await cacheWithSettledRecord('{"v":1}');
    const first = cache.lookup(path) as { v: number };
    const second = cache.lookup(path) as { v: number };
    expect(first).toEqual({ v: 1 });
    expect(second).toEqual({ v: 1 });
    expect(first).not.toBe(second);

    await writeFile(join(dir, "tmp"), '{"v":2}');
    await rename(join(dir, "tmp"), path);
    expect(cache.lookup(path)).toBeUndefined();
    expect(cache.size).toBe(0);
  });

  it("hands out deep copies, and keeps its own copy of what it was given", async () => {
    const dir = await scratch();
    const path = join(dir, "r.json");
    await writeFile(path, "{}");
    await sleep(PAST_SETTLE_MS);
    const cache = new RecordCache({ settleMs: SETTLE_MS });
    const given = { a: { b: [1, { c: "x" }] }, n: null, t: true };
    cache.remember(path, statOf(path), given);
    (given.a.b[1] as { c: string }).c = "changed by the caller";
    const first = cache.lookup(path) as typeof given;
    expect(first).toEqual({ a: { b: [1, { c: "x" }] }, n: null, t: true });
    (first.a.b[1] as { c: string }).c = "changed by a reader";
    first.a.b.push(2);
    expect(cache.lookup(path)).toEqual({ a: { b: [1, { c: "x" }] }, n: null, t: true });
  });

  it('copies a "__proto__" key as the own property JSON.parse made, not as the copy\'s prototype', () => {
    const parsed = JSON.parse('{"__proto__": {"polluted": true}, "k": 1}') as Record<string, unknown>;
    const copy = cloneJson(parsed);
    expect(Object.getPrototypeOf(copy)).toBe(Object.prototype);
    expect((copy as { polluted?: boolean }).polluted).toBeUndefined();
    expect(Object.keys(copy)).toEqual(["__proto__", "k"]);
    expect(Object.getOwnPropertyDescriptor(copy, "__proto__")?.value).toEqual({ polluted: true });
  });

  it("misses when the file changed in place, or is gone", async () => {
    const { path, cache } = await cacheWithSettledRecord('{"v":1}');
    // Same inode, same size: only the times tell, and the settle rule makes them differ.
    await writeFile(path, '{"v":2}');
    expect(cache.lookup(path)).toBeUndefined();

    await sleep(PAST_SETTLE_MS);
    cache.remember(path, statOf(path), { v: 2 });
    await rm(path);
    expect(cache.lookup(path)).toBeUndefined();
  });

  it("does not keep a record written less than the settle time ago", async () => {
    const dir = await scratch();
    const path = join(dir, "r.json");
    await writeFile(path, '{"v":1}');
    const cache = new RecordCache({ settleMs: 60_000 });
    cache.remember(path, statOf(path), { v: 1 });
    expect(cache.size).toBe(0);
    expect(cache.lookup(path)).toBeUndefined();
  });

  it("keeps at most maxEntries records, dropping the oldest stored", async () => {
    const dir = await scratch();
    const paths = [0, 1, 2].map((i) => join(dir, `r${i}.json`));
    for (const p of paths) await writeFile(p, "{}");
    await sleep(PAST_SETTLE_MS);
    const cache = new RecordCache({ settleMs: SETTLE_MS, maxEntries: 2 });
    for (const p of paths) cache.remember(p, statOf(p), {});
    expect(cache.size).toBe(2);
    expect(cache.lookup(paths[0]!)).toBeUndefined();
    expect(cache.lookup(paths[2]!)).toEqual({});
  });
});

describe("FsStore with its record cache", () => {
  async function seeded() {
    const root = join(await scratch(), "data");
    const store = await FsStore.open(root);
    await store.putTenant(tenantRecord("acme"));
    await store.putPool(poolRecord("acme", "web"));
    const instance = instanceRecord("acme", "web", "i-00000001");
    await store.putInstance(instance);
    await sleep(PAST_SETTLE_MS); // past the store's settle time, so the next read is cached
    expect(await store.getInstance("acme", "web", "i-00000001")).toEqual(await store.getInstance("acme", "web", "i-00000001"));
    return { root, store, instance, instanceDir: join(root, "tenants/acme/pools/web/instances/i-00000001") };
  }

  it("sees another process's write at once, whatever was cached", async () => {
    const { root, store, instance } = await seeded();
    const other = await FsStore.open(root);
    await other.putInstance({ ...instance, status: "running" });
    expect((await store.getInstance("acme", "web", "i-00000001"))?.status).toBe("running");
    await other.deleteInstance("acme", "web", "i-00000001");
    expect(await store.getInstance("acme", "web", "i-00000001")).toBeNull();
  });

  it("hands out copies: changing a returned record changes nothing stored", async () => {
    const { store } = await seeded();
    const got = await store.getInstance("acme", "web", "i-00000001");
    got!.status = "stopped";
    expect((await store.getInstance("acme", "web", "i-00000001"))?.status).not.toBe("stopped");
  });

  it("still refuses a symlink put in place of a directory after the record was cached", async () => {
    const { store, instanceDir } = await seeded();
    const elsewhere = `${instanceDir}-elsewhere`;
    await cp(instanceDir, join(instanceDir, "..", ".copy"), { recursive: true });
    await rename(join(instanceDir, "..", ".copy"), elsewhere);
    await rm(instanceDir, { recursive: true });
    await symlink(elsewhere, instanceDir);
    const read = store.getInstance("acme", "web", "i-00000001");
    await expect(read).rejects.toBeInstanceOf(MvmError);
    await expect(read).rejects.toThrow(/symlink|symbolic link/);
    expect(JSON.parse(await readFile(join(elsewhere, "instance.json"), "utf8")).instanceId).toBe("i-00000001");
  });
});
