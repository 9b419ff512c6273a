// Revision directories on a real filesystem: what is listed, what removing one would free, and removal.

import { existsSync } from "node:fs";
import { link, mkdir, mkdtemp, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isMvmError } from "../../../src/core/errors.js";
import { createRevisionFiles } from "../../../src/runtime/images/revision-files.js";

let root: string;
const revisionsOf = (t: string, p: string) => join(root, t, p, "revisions");

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "mvm-revisions-"));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("revision files", () => {
  it("lists revision directories only, counting the bytes of files linked from nowhere else", async () => {
    const files = createRevisionFiles(revisionsOf);
    expect(await files.list("acme", "web")).toEqual([]);
    const dir = revisionsOf("acme", "web");
    await mkdir(join(dir, "0123abcd"), { recursive: true });
    await mkdir(join(dir, ".tmp-0123abcd-x"), { recursive: true });
    await mkdir(join(root, "cache"));
    // The builder's artifacts are hard links into its cache: removing the revision frees none of that.
    await writeFile(join(root, "cache", "rootfs"), Buffer.alloc(256 * 1024, 1));
    await link(join(root, "cache", "rootfs"), join(dir, "0123abcd", "rootfs.ext4"));
    await writeFile(join(dir, "0123abcd", "manifest.json"), Buffer.alloc(8192, 1));

    const listed = await files.list("acme", "web");
    expect(listed.map((r) => r.revision)).toEqual(["0123abcd"]);
    expect(listed[0]!.freedBytes).toBeGreaterThanOrEqual(8192);
    expect(listed[0]!.freedBytes).toBeLessThan(256 * 1024);
    const hourAgo = new Date(Date.now() - 3_600_000);
    await utimes(join(dir, "0123abcd"), hourAgo, hourAgo);
    expect(Math.abs((await files.list("acme", "web"))[0]!.changedAtMs - hourAgo.getTime())).toBeLessThan(1);
  });

  it("removes a revision directory idempotently and refuses a name that is no revision ID", async () => {
    const files = createRevisionFiles(revisionsOf);
    const dir = join(revisionsOf("acme", "web"), "89abcdef");
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "vmlinux"), "x");
    await files.remove("acme", "web", "89abcdef");
    await files.remove("acme", "web", "89abcdef");
    expect(existsSync(dir)).toBe(false);
    for (const bad of ["..", "../../etc", "ABCDEF12", "abc"]) {
      const error = await files.remove("acme", "web", bad).catch((e: unknown) => e);
      expect(isMvmError(error) && error.kind).toBe("invalid");
    }
  });
});
