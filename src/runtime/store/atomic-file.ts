// Crash-safe file replacement (SPEC §5): a reader, or the next process after a kill -9 or power loss, sees either the
// whole old content or the whole new content of a file, never a mix and never nothing. Imports only node:* and
// sibling store modules so tests can transpile it and run it in child processes that they SIGKILL.

import { randomBytes } from "node:crypto";
import { closeSync, constants, fstatSync, lstatSync, openSync, readSync, type BigIntStats } from "node:fs";
import { link, lstat, open, readdir, rename, unlink } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { errnoCode, isPidRunning } from "./process-identity.js";

export interface WriteFileAtomicOptions {
  /** Permission bits of the file, applied exactly (not filtered by the umask). Default 0o600. */
  mode?: number;
  /**
   * Whether the write must survive a crash of the machine (fsync of the file and of its directory). Default true.
   * Still atomic without: readers never see a torn file, only possibly the previous one after a power loss.
   */
  durable?: boolean;
}

/** `durable: false` suits files that mean nothing after a reboot, such as lock files. */
export type CreateFileExclusiveOptions = WriteFileAtomicOptions;

const DEFAULT_MODE = 0o600;

/**
 * Temp files are hidden (leading dot) and carry the writer's pid, so a sweep can tell an abandoned one (writer gone)
 * from one being written right now: `.<target name>.<pid>.<12 hex>.tmp`.
 */
const TEMP_NAME = /^\.(.+)\.([1-9][0-9]*)\.([0-9a-f]{12})\.tmp$/;

/** A fresh temp path beside `target` (same directory, hence same filesystem, so `rename` is atomic). */
export function tempPathFor(target: string): string {
  return join(dirname(target), `.${basename(target)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
}

/** The target name and writer pid encoded in a temp file's name, or null when `name` is not one of ours. */
export function parseTempName(name: string): { target: string; pid: number } | null {
  const m = TEMP_NAME.exec(name);
  if (m === null) return null;
  return { target: m[1] as string, pid: Number(m[2]) };
}

/**
 * Replaces `path` with `data`: temp file in the same directory, fsync, rename over the target, fsync the directory
 * (the fsyncs only when `durable`, the default). The temp file is removed on failure. A symlink at `path` is
 * replaced, never followed.
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  options: WriteFileAtomicOptions = {},
): Promise<void> {
  const durable = options.durable ?? true;
  const temp = await writeTemp(path, data, options.mode ?? DEFAULT_MODE, durable);
  try {
    await rename(temp, path);
  } catch (e) {
    await unlinkIfPresent(temp);
    throw e;
  }
  if (durable) await syncDirectory(dirname(path));
}

/**
 * Creates `path` with `data` only if nothing exists there yet, atomically and durably; another process racing to
 * create the same path either wins (and this returns false) or loses. The file is complete from the moment it
 * appears, unlike `open(path, "wx")` followed by a write.
 */
export async function createFileExclusive(
  path: string,
  data: string | Uint8Array,
  options: CreateFileExclusiveOptions = {},
): Promise<boolean> {
  const durable = options.durable ?? true;
  const temp = await writeTemp(path, data, options.mode ?? DEFAULT_MODE, durable);
  let created = true;
  try {
    await link(temp, path);
  } catch (e) {
    if (errnoCode(e) !== "EEXIST") {
      await unlinkIfPresent(temp);
      throw e;
    }
    created = false;
  }
  await unlinkIfPresent(temp);
  if (created && durable) await syncDirectory(dirname(path));
  return created;
}

async function writeTemp(target: string, data: string | Uint8Array, mode: number, durable: boolean): Promise<string> {
  const temp = tempPathFor(target);
  let handle: FileHandle | undefined;
  try {
    handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
    await handle.writeFile(data);
    await handle.chmod(mode);
    if (durable) await handle.sync();
    await handle.close();
    handle = undefined;
    return temp;
  } catch (e) {
    await handle?.close().catch(() => undefined);
    await unlinkIfPresent(temp);
    throw e;
  }
}

/** Makes a rename, link or unlink in `dir` durable. EINVAL (no directory fsync) is tolerated. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } catch (e) {
    if (errnoCode(e) !== "EINVAL") throw e;
  } finally {
    await handle.close();
  }
}

export async function unlinkIfPresent(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (e) {
    if (errnoCode(e) !== "ENOENT") throw e;
  }
}

export type JsonReadResult =
  | { status: "missing" }
  /** `ino` identifies the file that was read, so a caller can check it is still the one at the path. */
  /** `stat` is the fstat of the descriptor the text was read from (for RecordCache). */
  | { status: "parsed"; value: unknown; text: string; ino: number; stat: BigIntStats }
  | { status: "unparseable"; reason: string; ino: number };

/**
 * Reads and parses one JSON record file without following a symlink at `path`. A symlink, a non-regular file or
 * text that is not JSON is reported as unparseable with the reason; a missing file as missing.
 *
 * Synchronous on purpose: records are small files on a local disk, read from the page cache in a few microseconds,
 * while each asynchronous step (open, stat, read, close) costs a thread-pool round trip of tens of microseconds —
 * most of a unary RPC's time. Writes stay asynchronous (they fsync).
 */
export async function readJsonRecord(path: string): Promise<JsonReadResult> {
  return readJsonRecordSync(path);
}

function readJsonRecordSync(path: string): JsonReadResult {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = errnoCode(e);
    if (code === "ENOENT") return { status: "missing" };
    if (code === "ELOOP") {
      let ino = -1;
      try {
        ino = lstatSync(path).ino;
      } catch {
        // Gone meanwhile: still reported as the symlink it was.
      }
      return { status: "unparseable", reason: "is a symbolic link, which is never followed", ino };
    }
    throw e;
  }
  try {
    const stat = fstatSync(fd, { bigint: true });
    const ino = Number(stat.ino);
    if (!stat.isFile()) return { status: "unparseable", reason: "is not a regular file", ino };
    const text = readWholeFile(fd, Number(stat.size));
    try {
      return { status: "parsed", value: JSON.parse(text) as unknown, text, ino, stat };
    } catch (e) {
      const detail = e instanceof Error ? e.message : String(e);
      const what = text.length === 0 ? "is empty" : `is not valid JSON (${detail})`;
      return { status: "unparseable", reason: what, ino };
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * The text of the open file `fd`, `size` bytes long. Records are replaced by rename, never written in place, so the
 * size just fstat'ed is the whole file: usually one read(2), where readFileSync would fstat again and read to EOF.
 */
function readWholeFile(fd: number, size: number): string {
  const buffer = Buffer.allocUnsafe(size);
  let filled = 0;
  while (filled < size) {
    const got = readSync(fd, buffer, filled, size - filled, filled);
    if (got === 0) break;
    filled += got;
  }
  return buffer.toString("utf8", 0, filled);
}

/**
 * Removes temp files in `dir` left by writers that no longer run (killed between creating and renaming them).
 * Returns the removed paths. Temp files of running writers are left alone.
 */
export async function removeAbandonedTempFiles(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    if (errnoCode(e) === "ENOENT" || errnoCode(e) === "ENOTDIR") return [];
    throw e;
  }
  const removed: string[] = [];
  for (const name of names) {
    const parsed = parseTempName(name);
    if (parsed === null || (await isPidRunning(parsed.pid))) continue;
    await unlinkIfPresent(join(dir, name));
    removed.push(join(dir, name));
  }
  return removed;
}
