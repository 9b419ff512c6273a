import { createHash, randomBytes } from "node:crypto";
import { closeSync, constants, openSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../../helpers/mvm-cli.js";
import { hashChunks, hashFile, snapshotChunkBytes } from "../../../src/runtime/snapshots/file-hash.js";

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
    expect(digests.map((d) => ({ sha256: d.sha256, sizeBytes: d.sizeBytes }))).toEqual(files.map((f) => ({ sha256: f.sha256, sizeBytes: f.size })));
  });

  it("records a digest per chunk, and several workers check chunks to the same digests", async () => {
    const chunkBytes = 1024 * 1024;
    // 5.5 chunks: the last one short, more chunks than workers so some take several.
    const bytes = randomBytes(5 * chunkBytes + chunkBytes / 2);
    const path = join(dir, "chunked");
    await writeFile(path, bytes);
    const expected = [];
    for (let at = 0; at < bytes.length; at += chunkBytes) {
      expected.push(createHash("sha256").update(bytes.subarray(at, at + chunkBytes)).digest("hex"));
    }
    const whole = await hashFile(path, chunkBytes);
    expect(whole.chunkSha256s).toEqual(expected);
    expect(whole.sha256).toBe(createHash("sha256").update(bytes).digest("hex"));
    expect(await hashChunks(path, chunkBytes, bytes.length)).toEqual(expected);
    // Only the bytes asked for: a file grown since is checked as it was.
    await writeFile(path, Buffer.concat([bytes, Buffer.from("appended")]));
    expect(await hashChunks(path, chunkBytes, bytes.length)).toEqual(expected);
    expect(await hashChunks(join(dir, "chunked"), chunkBytes, 0)).toEqual([]);
  });

  it("fails with the file's error code, and goes on working afterwards", async () => {
    await expect(hashFile(join(dir, "absent"))).rejects.toMatchObject({ code: "ENOENT" });
    await writeFile(join(dir, "after"), "x");
    expect((await hashFile(join(dir, "after"))).sizeBytes).toBe(1);
  });

  it("lets a process that hashed exit on its own: idle hashing threads, used or not, hold nothing open", () => {
    const module = pathToFileURL(join(REPO_ROOT, "dist/src/runtime/snapshots/file-hash.js")).href;
    const path = join(dir, "exit-check");
    spawnSync("sh", ["-c", `head -c 100000 /dev/urandom > ${path}`]);
    const script = `const m = await import(${JSON.stringify(module)}); const d = await m.hashFile(${JSON.stringify(path)}); console.log("hashed", d.sizeBytes);`;
    const run = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8", timeout: 20_000 });
    expect(run.stdout.trim(), run.stderr).toBe("hashed 100000");
    expect(run.status, "the process did not exit by itself").toBe(0);
  });
});

describe("a hash that hangs", () => {
  it("fails after its timeout, and a fresh worker serves the next request", async () => {
    // Opening a FIFO that nobody writes blocks the worker's read, as a stuck network filesystem would.
    const fifo = join(dir, "stuck.fifo");
    spawnSync("mkfifo", [fifo]);
    await expect(hashFile(fifo, 1024 * 1024, 300)).rejects.toThrow(/took longer than 300 ms/);
    const after = join(dir, "after");
    await writeFile(after, "after");
    expect((await hashFile(after)).sha256).toBe(createHash("sha256").update("after").digest("hex"));
    // Lets the abandoned thread's open return, so that its termination takes effect.
    closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
  });
});

describe("snapshotChunkBytes", () => {
  const MIB = 1024 * 1024;

  it("gives whole MiB, at least one, and at most 64 chunks", () => {
    expect(snapshotChunkBytes(0)).toBe(MIB);
    expect(snapshotChunkBytes(64 * MIB)).toBe(MIB);
    expect(snapshotChunkBytes(64 * MIB + 1)).toBe(2 * MIB);
    expect(snapshotChunkBytes(8 * 1024 * MIB)).toBe(128 * MIB);
    for (const size of [1, 5 * MIB, 66 * MIB, 300 * MIB + 7, 513 * MIB]) {
      const chunk = snapshotChunkBytes(size);
      expect(chunk % MIB).toBe(0);
      expect(Math.ceil(size / chunk)).toBeLessThanOrEqual(64);
    }
  });

  it("splits a 128 MiB guest's stream nearly evenly between two workers", () => {
    // A measured stream of an idle 128 MiB guest: 65.7 MiB.
    const size = Math.round(65.7 * MIB);
    const chunk = snapshotChunkBytes(size);
    const chunks = Math.ceil(size / chunk);
    const larger = Math.ceil(chunks / 2) * chunk;
    expect(larger / size).toBeLessThan(0.55);
  });
});
