// Restoring from a diff snapshot (SPEC §7): Firecracker writes a diff's memory file sparse, with data only where the
// guest dirtied pages since the previous snapshot; holes mean "unchanged, see the base". Firecracker loads only full
// memory images, so the diff is merged into its base first: every data extent of the diff is copied over the same
// offset of the base, and nothing else. Holes cannot be told from zeros by reading (a dirtied page may hold zeros),
// so the extents come from the file system (FIEMAP, through e2fsprogs' `filefrag`), not from comparing blocks.

import { open, stat } from "node:fs/promises";
import { execa } from "execa";
import { MvmError, failedPrecondition } from "../../core/errors.js";

export interface DataExtent {
  /** Byte offset in the file. */
  offset: number;
  length: number;
}

const COPY_CHUNK_BYTES = 4 * 1024 * 1024;

/**
 * Data extents from `filefrag -v` output (logical offsets in blocks of the size it states). Adjacent extents are
 * merged. Throws when the output has no block size (an unknown format must not silently mean "no data").
 */
export function parseFilefragExtents(output: string): DataExtent[] {
  const blockSize = /blocks? of (\d+) bytes/.exec(output)?.[1];
  if (blockSize === undefined) throw new MvmError("internal", "filefrag: no block size in its output");
  const size = Number(blockSize);
  const extents: DataExtent[] = [];
  for (const line of output.split("\n")) {
    const m = /^\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+\d+\.\.\s*\d+:\s+(\d+):/.exec(line);
    if (m === null) continue;
    const offset = Number(m[1]) * size;
    const length = Number(m[3]) * size;
    const last = extents[extents.length - 1];
    if (last !== undefined && last.offset + last.length === offset) last.length += length;
    else extents.push({ offset, length });
  }
  return extents;
}

/** The data extents of `path`, asked of the file system after a sync (so delayed allocations are counted). */
export async function listDataExtents(path: string, filefragBinary = "filefrag"): Promise<DataExtent[]> {
  const result = await execa(filefragBinary, ["-s", "-v", path], { timeout: 60_000, reject: false, stdin: "ignore" });
  if (result.exitCode !== 0) {
    throw new MvmError("unavailable", `filefrag ${path}: ${result.stderr.trim() || `exit ${result.exitCode}`}`);
  }
  return parseFilefragExtents(result.stdout);
}

/**
 * Writes every data extent of `diffPath` into `basePath` at the same offsets (in place: afterwards the base is the
 * full memory image of the diff's point in time, and the base of the next diff). Returns the bytes copied.
 */
export async function mergeDiffIntoBase(
  diffPath: string,
  basePath: string,
  extents: (path: string) => Promise<DataExtent[]> = listDataExtents,
): Promise<number> {
  const [diffStat, baseStat] = await Promise.all([stat(diffPath), stat(basePath)]);
  if (diffStat.size !== baseStat.size) {
    throw failedPrecondition(`diff snapshot ${diffPath} (${diffStat.size} bytes) does not match its base ${basePath} (${baseStat.size} bytes)`);
  }
  const diff = await open(diffPath, "r");
  try {
    const base = await open(basePath, "r+");
    try {
      const buffer = Buffer.alloc(COPY_CHUNK_BYTES);
      let copied = 0;
      for (const extent of await extents(diffPath)) {
        const end = Math.min(extent.offset + extent.length, diffStat.size);
        for (let position = extent.offset; position < end; ) {
          const want = Math.min(buffer.length, end - position);
          const { bytesRead } = await diff.read(buffer, 0, want, position);
          if (bytesRead === 0) break;
          await base.write(buffer, 0, bytesRead, position);
          position += bytesRead;
          copied += bytesRead;
        }
      }
      await base.sync();
      return copied;
    } finally {
      await base.close();
    }
  } finally {
    await diff.close();
  }
}
