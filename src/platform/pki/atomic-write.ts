// Crash-safe replacement of one file (SPEC §5): a reader, or the next process after a kill -9, sees the whole old
// content or the whole new content, never a mix. A small copy of the record store's writeFileAtomic
// (src/runtime/store/atomic-file.ts), because src/platform may not import src/runtime.

import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { open, rename, unlink } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/**
 * Writes `data` to a temp file beside `path` with permission bits `mode` (set exactly, not filtered by the umask),
 * fsyncs it, renames it over `path` and fsyncs the directory. A symlink at `path` is replaced, never followed.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode: number): Promise<void> {
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  let handle: FileHandle | undefined;
  try {
    handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
    await handle.writeFile(data);
    await handle.chmod(mode);
    await handle.sync();
    await handle.close();
    handle = undefined;
    await rename(temp, path);
  } catch (e) {
    await handle?.close().catch(() => undefined);
    await unlink(temp).catch(() => undefined);
    throw e;
  }
  await syncDirectory(dirname(path));
}

/** Makes a rename in `dir` durable. Filesystems without directory fsync (EINVAL) are tolerated. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EINVAL") throw e;
  } finally {
    await handle.close();
  }
}
