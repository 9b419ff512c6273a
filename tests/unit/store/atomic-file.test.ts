import { lstat, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  createFileExclusive,
  parseTempName,
  readJsonRecord,
  removeAbandonedTempFiles,
  tempPathFor,
  writeFileAtomic,
} from "../../../src/runtime/store/atomic-file.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-atomic-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("writeFileAtomic", () => {
  it.each([true, false])("replaces the content and leaves only the target in the directory (durable %s)", async (durable) => {
    const target = join(dir, "r.json");
    await writeFileAtomic(target, "one", { durable });
    const before = (await stat(target)).ino;
    await writeFileAtomic(target, "two", { durable });
    expect(await readFile(target, "utf8")).toBe("two");
    // Replaced by rename, never rewritten in place: a reader holding the old file still has all of "one".
    expect((await stat(target)).ino).not.toBe(before);
    expect(await readdir(dir)).toEqual(["r.json"]);
  });

  it("applies the mode exactly, whatever the umask", async () => {
    const previous = process.umask(0o077);
    try {
      await writeFileAtomic(join(dir, "pub"), "k", { mode: 0o644 });
    } finally {
      process.umask(previous);
    }
    expect((await stat(join(dir, "pub"))).mode & 0o777).toBe(0o644);
    await writeFileAtomic(join(dir, "default"), "k");
    expect((await stat(join(dir, "default"))).mode & 0o777).toBe(0o600);
  });

  it("removes its temp file when the rename fails", async () => {
    const target = join(dir, "occupied");
    await mkdir(join(target, "child"), { recursive: true });
    await expect(writeFileAtomic(target, "x")).rejects.toThrow();
    expect(await readdir(dir)).toEqual(["occupied"]);
  });

  it("replaces a symlink instead of writing through it", async () => {
    const outside = join(dir, "outside");
    await writeFile(outside, "untouched");
    await symlink(outside, join(dir, "link"));
    await writeFileAtomic(join(dir, "link"), "new");
    expect(await readFile(outside, "utf8")).toBe("untouched");
    expect((await lstat(join(dir, "link"))).isFile()).toBe(true);
  });
});

describe("createFileExclusive", () => {
  it("creates once; later calls leave the first content", async () => {
    const target = join(dir, "once");
    expect(await createFileExclusive(target, "first")).toBe(true);
    expect(await createFileExclusive(target, "second")).toBe(false);
    expect(await createFileExclusive(target, "third", { durable: false })).toBe(false);
    expect(await readFile(target, "utf8")).toBe("first");
    expect(await readdir(dir)).toEqual(["once"]);
  });

  it("lets exactly one of many concurrent creators win", async () => {
    const target = join(dir, "race");
    const results = await Promise.all(Array.from({ length: 20 }, (_, n) => createFileExclusive(target, `w${n}`)));
    expect(results.filter(Boolean)).toHaveLength(1);
    expect(await readFile(target, "utf8")).toBe(`w${results.indexOf(true)}`);
  });
});

describe("readJsonRecord", () => {
  it("tells missing, parsed and unparseable apart", async () => {
    expect(await readJsonRecord(join(dir, "none"))).toEqual({ status: "missing" });
    await writeFile(join(dir, "ok"), '{"a":1}');
    expect(await readJsonRecord(join(dir, "ok"))).toMatchObject({ status: "parsed", value: { a: 1 } });
    await writeFile(join(dir, "torn"), '{"a":');
    expect(await readJsonRecord(join(dir, "torn"))).toMatchObject({
      status: "unparseable",
      reason: expect.stringMatching(/^is not valid JSON/),
    });
    await writeFile(join(dir, "empty"), "");
    expect(await readJsonRecord(join(dir, "empty"))).toMatchObject({ status: "unparseable", reason: "is empty" });
    await mkdir(join(dir, "adir"));
    expect(await readJsonRecord(join(dir, "adir"))).toMatchObject({ status: "unparseable", reason: "is not a regular file" });
    await symlink(join(dir, "ok"), join(dir, "link"));
    expect(await readJsonRecord(join(dir, "link"))).toMatchObject({
      status: "unparseable",
      reason: expect.stringMatching(/symbolic link/),
    });
  });
});

describe("temp files", () => {
  it("names temp files beside the target with the writer pid", () => {
    const temp = tempPathFor("/a/b/instance.json");
    expect(dirname(temp)).toBe("/a/b");
    expect(parseTempName(basename(temp))).toEqual({ target: "instance.json", pid: process.pid });
    expect(tempPathFor("/a/x")).not.toBe(tempPathFor("/a/x"));
    expect(parseTempName("instance.json")).toBeNull();
    expect(parseTempName(".x.0.0123456789ab.tmp")).toBeNull();
  });

  it("removes only temp files whose writer is gone", async () => {
    const dead = ".r.json.4194305.0123456789ab.tmp";
    const live = `.r.json.${process.pid}.0123456789ab.tmp`;
    for (const name of [dead, live, "r.json", ".hidden"]) await writeFile(join(dir, name), "x");
    expect(await removeAbandonedTempFiles(dir)).toEqual([join(dir, dead)]);
    expect((await readdir(dir)).sort()).toEqual([".hidden", live, "r.json"].sort());
    expect(await removeAbandonedTempFiles(join(dir, "missing"))).toEqual([]);
  });
});
