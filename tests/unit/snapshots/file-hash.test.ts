import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hashFile } from "../../../src/runtime/snapshots/file-hash.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-file-hash-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("hashFile", () => {
  it("gives the SHA-256 and size of files across its block size, several at once", async () => {
    // Around the worker's 4 MiB block: empty, one byte, exactly one block, one block and a bit.
    const sizes = [0, 1, 4 * 1024 * 1024, 4 * 1024 * 1024 + 17];
    const files = await Promise.all(
      sizes.map(async (size, i) => {
        const bytes = randomBytes(size);
        const path = join(dir, `f${i}`);
        await writeFile(path, bytes);
        return { path, size, sha256: createHash("sha256").update(bytes).digest("hex") };
      }),
    );
    const digests = await Promise.all(files.map((f) => hashFile(f.path)));
    expect(digests).toEqual(files.map((f) => ({ sha256: f.sha256, sizeBytes: f.size })));
  });

  it("fails with the file's error code, and goes on working afterwards", async () => {
    await expect(hashFile(join(dir, "absent"))).rejects.toMatchObject({ code: "ENOENT" });
    await writeFile(join(dir, "after"), "x");
    expect((await hashFile(join(dir, "after"))).sizeBytes).toBe(1);
  });
});
