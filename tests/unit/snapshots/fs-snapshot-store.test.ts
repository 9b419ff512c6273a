// The filesystem snapshot store with the real lz4 and zstd tools: seal, read back, verify, decompress, refuse.

import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { SnapshotSealInfo } from "../../../src/core/data-plane-ports.js";
import { isMvmError } from "../../../src/core/errors.js";
import { createFsSnapshotStore, metaProblems } from "../../../src/runtime/snapshots/fs-snapshot-store.js";

let root: string;
let dir: string;
const store = createFsSnapshotStore({ kernelRelease: () => "6.1.0-test" });

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "mvm-snap-"));
  dir = join(root, "snapshot");
  await store.create(dir);
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Compressible content (repeated blocks) with some random bytes, like guest memory. */
function memoryContent(): Buffer {
  const block = randomBytes(4096);
  return Buffer.concat([...Array.from({ length: 256 }, () => block), randomBytes(64 * 1024)]);
}

async function info(compression: SnapshotSealInfo["compression"]): Promise<SnapshotSealInfo> {
  return { hypervisor: "qemu", revision: "rev1", memMib: 128, compression, createdAt: "2024-01-01T00:00:00.000Z", host: await store.hostStamp("7.2.22") };
}

describe.each(["none", "lz4", "zstd"] as const)("compression %s", (compression) => {
  it("seals with a meta file and opens to the original bytes", async () => {
    const content = memoryContent();
    await writeFile(join(dir, "memory.mig"), content);
    const meta = await store.seal(dir, { type: "full", memoryFile: join(dir, "memory.mig"), stateFile: null, baseMemoryFile: null }, await info(compression));
    expect(meta.compression).toBe(compression);
    expect(meta.uncompressedSizeBytes).toBe(content.length);
    const stored = await readFile(join(dir, meta.memoryFile));
    expect(meta.memorySizeBytes).toBe(stored.length);
    expect(meta.sha256).toBe(createHash("sha256").update(stored).digest("hex"));
    if (compression !== "none") {
      expect(meta.memorySizeBytes).toBeLessThan(content.length);
      expect(existsSync(join(dir, "memory.mig"))).toBe(false);
    }
    expect(await store.readMeta(dir)).toEqual(meta);

    const opened = await store.open(dir, meta);
    expect((await readFile(opened.files.memoryFile)).equals(content)).toBe(true);
    await opened.release();
    expect((await readdir(dir)).sort()).toEqual([meta.memoryFile, "meta.json"].sort());
  });

  it("refuses a file whose bytes changed, naming it, and leaves it in place", async () => {
    await writeFile(join(dir, "memory.mig"), memoryContent());
    const meta = await store.seal(dir, { type: "full", memoryFile: join(dir, "memory.mig"), stateFile: null, baseMemoryFile: null }, await info(compression));
    const path = join(dir, meta.memoryFile);
    const bytes = await readFile(path);
    const middle = bytes.length >> 1;
    bytes[middle] = bytes[middle]! ^ 0xff;
    await writeFile(path, bytes);
    const error = await store.open(dir, meta).then(() => null, (e: unknown) => e);
    expect(isMvmError(error) && error.kind).toBe("failed_precondition");
    expect((error as Error).message).toMatch(new RegExp(`${meta.memoryFile} is corrupt: sha256`));
    expect((await stat(path)).size).toBe(meta.memorySizeBytes);
  });
});

describe("chunk digests", () => {
  async function sealedWithChunks(chunkBytes: number) {
    await writeFile(join(dir, "memory.mig"), memoryContent());
    const sealed = await store.seal(dir, { type: "full", memoryFile: join(dir, "memory.mig"), stateFile: null, baseMemoryFile: null }, await info("none"));
    const bytes = await readFile(join(dir, sealed.memoryFile));
    const sha256s = [];
    for (let at = 0; at < bytes.length; at += chunkBytes) sha256s.push(createHash("sha256").update(bytes.subarray(at, at + chunkBytes)).digest("hex"));
    return { meta: { ...sealed, memoryChunkBytes: chunkBytes, memoryChunkSha256s: sha256s }, bytes, path: join(dir, sealed.memoryFile) };
  }

  it("are recorded at seal time, one per chunk of the stored file", async () => {
    const { meta } = await sealedWithChunks(256 * 1024);
    const stored = await store.readMeta(dir);
    expect(stored?.memoryChunkSha256s).toHaveLength(Math.ceil(meta.memorySizeBytes / (stored?.memoryChunkBytes ?? 1)));
    expect(metaProblems({ ...stored, memoryChunkSha256s: ["not hex"] })).toEqual([expect.stringMatching(/^memoryChunkSha256s must list/)]);
    expect(metaProblems({ ...stored, memoryChunkBytes: 0 })).toContainEqual(expect.stringMatching(/^memoryChunkBytes must be a positive integer/));
  });

  it("are checked chunk by chunk, naming the bytes of a bad chunk; a meta without them is checked as a whole", async () => {
    const chunkBytes = 256 * 1024;
    const { meta, bytes, path } = await sealedWithChunks(chunkBytes);
    expect(meta.memoryChunkSha256s.length).toBeGreaterThan(3);
    const opened = await store.open(dir, meta);
    await opened.release();

    const at = bytes.length - 10; // in the last, short chunk
    bytes[at] = bytes[at]! ^ 0x01;
    await writeFile(path, bytes);
    const last = meta.memoryChunkSha256s.length - 1;
    await expect(store.open(dir, meta)).rejects.toThrow(new RegExp(`is corrupt: sha256 of bytes ${last * chunkBytes}-${bytes.length} is [0-9a-f]{64}, its meta records ${meta.memoryChunkSha256s[last]}`));
    const { memoryChunkBytes: _b, memoryChunkSha256s: _s, ...withoutChunks } = meta;
    await expect(store.open(dir, withoutChunks)).rejects.toThrow(/is corrupt: sha256 [0-9a-f]{64}, its meta records/);
  });
});

describe("snapshot directory", () => {
  it("reads no meta from an empty or missing directory and removes idempotently", async () => {
    expect(await store.readMeta(dir)).toBeNull();
    await store.remove(dir);
    await store.remove(dir);
    expect(existsSync(dir)).toBe(false);
    expect(await store.readMeta(dir)).toBeNull();
  });

  it("removes at once from the snapshot's place and deletes the set-aside files soon after; create sweeps leftovers", async () => {
    await writeFile(join(dir, "memory.mig"), Buffer.alloc(1024 * 1024));
    await store.remove(dir);
    expect(existsSync(dir)).toBe(false);
    await expect.poll(async () => (await readdir(root)).filter((n) => n.includes("removing"))).toEqual([]);

    // What a process that exited before its background delete finished would leave.
    await mkdir(join(root, ".snapshot.removing-0123456789ab"));
    await writeFile(join(root, ".snapshot.removing-0123456789ab", "memory.mig"), "x");
    await store.create(dir);
    expect(await readdir(root)).toEqual(["snapshot"]);
  });

  it("setAside takes the directory from its place and keeps its files until purge", async () => {
    await writeFile(join(dir, "memory.mig"), Buffer.alloc(64 * 1024));
    const aside = await store.setAside(dir);
    expect(existsSync(dir)).toBe(false);
    expect(await store.readMeta(dir)).toBeNull();
    await new Promise((resolve) => setTimeout(resolve, 20));
    const kept = (await readdir(root)).filter((n) => n.includes("removing"));
    expect(kept).toHaveLength(1);
    expect(await readdir(join(root, kept[0]!))).toEqual(["memory.mig"]);
    await aside.purge();
    expect(await readdir(root)).toEqual([]);
    // Idempotent: nothing there to set aside is no error.
    await (await store.setAside(dir)).purge();
  });

  it("counts the bytes a snapshot directory takes, a set-aside copy left behind included; none when there is nothing", async () => {
    expect(await store.diskBytes(join(root, "elsewhere"))).toBeNull();
    expect(await store.diskBytes(dir)).toBe(0);
    await writeFile(join(dir, "memory.mig"), randomBytes(256 * 1024));
    expect(await store.diskBytes(dir)).toBeGreaterThanOrEqual(256 * 1024);
    // What a process that died before purging would leave: counted, since the next remove deletes it.
    await mkdir(join(root, ".snapshot.removing-0123456789ab"));
    await writeFile(join(root, ".snapshot.removing-0123456789ab", "memory.mig"), randomBytes(128 * 1024));
    expect(await store.diskBytes(dir)).toBeGreaterThanOrEqual(384 * 1024);
    await store.remove(dir);
    await expect.poll(() => store.diskBytes(dir)).toBeNull();
  });

  it("refuses a meta file that names a path outside the directory", async () => {
    await writeFile(join(dir, "memory.mig"), "x");
    const meta = await store.seal(dir, { type: "full", memoryFile: join(dir, "memory.mig"), stateFile: null, baseMemoryFile: null }, await info("none"));
    await writeFile(join(dir, "meta.json"), JSON.stringify({ ...meta, memoryFile: "../../etc/passwd" }));
    await expect(store.readMeta(dir)).rejects.toThrow(/memoryFile must be a plain file name/);
    expect(metaProblems({ ...meta })).toEqual([]);
  });

  it("stamps the host with its cpu model, kernel and vmm version", async () => {
    const stamp = await store.hostStamp("7.2.22");
    expect(stamp).toMatchObject({ hostKernel: "6.1.0-test", vmmVersion: "7.2.22" });
    expect(stamp.cpuModel.length).toBeGreaterThan(0);
  });
});
