// An exclusive advisory lock between processes on one host, built from link(2) and rename(2) because Node has no
// flock. It survives its holder being SIGKILLed: the lock file names the holder as (boot id, pid, start time), and a
// lock whose holder no longer runs is stale and taken over.
//
// Protocol for lock file L:
//   acquire  write the holder record to a temp file and link(2) it to L. link fails with EEXIST while L exists, so
//            exactly one contender wins, and L is complete from the moment it appears (an open("wx") then write
//            would leave an empty L if the holder died in between).
//   wait     L exists and its holder runs: back off (5 ms doubling to 200 ms, jittered) until the timeout.
//   break    L exists and its holder is gone: take the breaker lock L.break with the same link(2) step, re-read L,
//            and only if it is still the same inode with a dead holder, rename it aside and unlink it. Serialising
//            breakers matters: an unserialised breaker that judged L stale could otherwise remove the fresh L of a
//            contender that won in between. A dead breaker is itself removed by rename-aside, checking the inode.
//   release  unlink L after checking it still carries this holder's token.
// Inside one process, a per-path async mutex queues tasks before they touch L, and an AsyncLocalStorage records which
// locks the current async chain holds, so taking a held lock again just runs the function (re-entrant).
// The data root must not be shared between hosts: a holder on another host would look dead here.

import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { link, lstat, open, rename, rm } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { MvmError } from "../../core/errors.js";
import { createFileExclusive, tempPathFor, unlinkIfPresent } from "./atomic-file.js";
import { currentProcessIdentity, errnoCode, isProcessAlive } from "./process-identity.js";
import type { ProcessIdentity } from "./process-identity.js";

export interface FileLockOptions {
  /** How long to wait for the lock before failing with `unavailable`, in ms. Default 30000. */
  timeoutMs?: number;
  /** What the lock protects, for messages (e.g. `tenant acme`). Default: the lock file's path. */
  label?: string;
}

export const DEFAULT_LOCK_TIMEOUT_MS = 30_000;
const BACKOFF_START_MS = 5;
const BACKOFF_MAX_MS = 200;

/** The content of a lock file. */
export interface LockHolder extends ProcessIdentity {
  /** Random per acquisition, so a holder recognises its own lock file when releasing it. */
  token: string;
  label: string;
  acquiredAt: string;
}

interface LockFileState {
  ino: number;
  /** Null when the file does not hold a readable holder record (it is then treated as abandoned). */
  holder: LockHolder | null;
}

/**
 * Shared through globalThis so that two copies of this module in one process (a bundler, a test loading the source
 * and a transpiled copy) still agree on who holds what.
 */
interface LockRegistry {
  /** Per lock path: the tail of the queue of in-process tasks waiting for or holding it. */
  queues: Map<string, Promise<void>>;
  /** Per lock path: the token of the lock file this process holds. */
  owned: Map<string, string>;
  /** Lock paths held by the current async chain. */
  chain: AsyncLocalStorage<readonly string[]>;
  /** Lock holders running now, in this process. */
  running?: number;
}

const REGISTRY_KEY = Symbol.for("mvm.store.file-lock.registry");
const globalSlots = globalThis as unknown as Record<symbol, LockRegistry | undefined>;
const registry: LockRegistry = (globalSlots[REGISTRY_KEY] ??= {
  queues: new Map(),
  owned: new Map(),
  chain: new AsyncLocalStorage<readonly string[]>(),
});

/** Absolute paths of the file locks held by the current async chain, outermost first. */
export function heldFileLocks(): readonly string[] {
  return registry.chain.getStore() ?? [];
}

/**
 * Runs `fn` while holding the exclusive lock `lockPath` (created if missing; its directory must exist). Re-entrant
 * within one async chain. Throws MvmError `unavailable` naming the lock and its holder's pid after `timeoutMs`.
 */
export async function withFileLock<T>(
  lockPath: string,
  fn: () => Promise<T>,
  options: FileLockOptions = {},
): Promise<T> {
  const path = resolve(lockPath);
  const held = heldFileLocks();
  if (held.includes(path)) return fn();
  const timeoutMs = options.timeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS;
  const label = options.label ?? path;
  const deadline = Date.now() + timeoutMs;

  const leaveQueue = await enterProcessQueue(path, deadline, label, timeoutMs);
  let token: string;
  try {
    token = await acquireLockFile(path, deadline, label, timeoutMs);
  } catch (e) {
    leaveQueue();
    throw e;
  }

  let outcome: { ok: true; value: T } | { ok: false; error: unknown };
  registry.running = (registry.running ?? 0) + 1;
  try {
    outcome = { ok: true, value: await registry.chain.run([...held, path], fn) };
  } catch (error) {
    outcome = { ok: false, error };
  } finally {
    // With no lock held anywhere in the process, the chain is switched off: an enabled AsyncLocalStorage makes
    // Node track the context of every promise the process creates (a cost on every RPC the agent serves), and
    // getStore() of a disabled one is undefined, which is the truth then. The next run() switches it back on.
    registry.running -= 1;
    if (registry.running === 0) registry.chain.disable();
  }
  let releaseError: unknown;
  try {
    await releaseLockFile(path, token, label);
  } catch (error) {
    releaseError = error;
  } finally {
    registry.owned.delete(path);
    leaveQueue();
  }
  if (!outcome.ok) throw outcome.error;
  if (releaseError !== undefined) throw releaseError;
  return outcome.value;
}

/** The holder recorded in `lockPath`, or null when it is not locked or its content is unreadable. */
export async function readLockHolder(lockPath: string): Promise<LockHolder | null> {
  return (await readLockFile(resolve(lockPath)))?.holder ?? null;
}

/** Waits for this process's earlier tasks on `path`; returns the function that lets the next one in. */
async function enterProcessQueue(
  path: string,
  deadline: number,
  label: string,
  timeoutMs: number,
): Promise<() => void> {
  const previous = registry.queues.get(path) ?? Promise.resolve();
  let leave!: () => void;
  const mine = new Promise<void>((r) => (leave = r));
  const tail = previous.then(() => mine);
  registry.queues.set(path, tail);
  void tail.then(() => {
    if (registry.queues.get(path) === tail) registry.queues.delete(path);
  });

  let timer: NodeJS.Timeout | undefined;
  const timedOut = await Promise.race([
    previous.then(() => false),
    new Promise<boolean>((r) => (timer = setTimeout(() => r(true), Math.max(0, deadline - Date.now())))),
  ]);
  clearTimeout(timer);
  if (timedOut) {
    // Our place in the queue must still be passed on, or every later task would wait forever.
    void previous.then(leave);
    throw new MvmError(
      "unavailable",
      `lock ${label} is held by another task in this process (pid ${process.pid}); gave up after ${timeoutMs} ms`,
    );
  }
  return leave;
}

async function acquireLockFile(path: string, deadline: number, label: string, timeoutMs: number): Promise<string> {
  const me = await currentProcessIdentity();
  const token = randomBytes(16).toString("hex");
  const holder: LockHolder = { ...me, token, label, acquiredAt: new Date().toISOString() };
  const content = `${JSON.stringify(holder)}\n`;
  let backoffMs = BACKOFF_START_MS;
  for (;;) {
    if (await createFileExclusive(path, content, { durable: false })) {
      registry.owned.set(path, token);
      return token;
    }
    const state = await readLockFile(path);
    if (state === null) continue; // released between our link and our read
    let progressed = false;
    if (!(await holderRuns(path, state.holder))) progressed = await breakStaleLock(path, state.ino);
    if (Date.now() >= deadline) {
      const who = state.holder === null ? "an unreadable holder" : `pid ${state.holder.pid}`;
      throw new MvmError("unavailable", `lock ${label} (${path}) is held by ${who}; gave up after ${timeoutMs} ms`);
    }
    if (progressed) continue;
    const jittered = backoffMs / 2 + Math.random() * backoffMs;
    await sleep(Math.min(jittered, Math.max(0, deadline - Date.now())));
    backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS);
  }
}

/** Whether the lock at `path` is held by a process that still runs. */
async function holderRuns(path: string, holder: LockHolder | null): Promise<boolean> {
  if (holder === null) return false;
  const me = await currentProcessIdentity();
  if (holder.pid === me.pid && holder.startTime === me.startTime && holder.bootId === me.bootId) {
    // This process: held only if this process says so; otherwise a leftover of a failed release.
    return registry.owned.get(path) === holder.token;
  }
  return isProcessAlive(holder);
}

/**
 * Removes the lock file at `path` if it is still inode `staleIno` and its holder is gone. Returns whether the lock
 * changed hands meanwhile or was removed (so the caller retries at once rather than backing off).
 */
async function breakStaleLock(path: string, staleIno: number): Promise<boolean> {
  const breakerPath = `${path}.break`;
  const me = await currentProcessIdentity();
  const breakerToken = randomBytes(16).toString("hex");
  const acquiredAt = new Date().toISOString();
  const breaker: LockHolder = { ...me, token: breakerToken, label: `breaker of ${path}`, acquiredAt };
  if (!(await createFileExclusive(breakerPath, `${JSON.stringify(breaker)}\n`, { durable: false }))) {
    const other = await readLockFile(breakerPath);
    if (other !== null && !(await holderRuns(breakerPath, other.holder))) {
      await removeIfSameInode(breakerPath, other.ino);
      return true;
    }
    return false;
  }
  try {
    const current = await readLockFile(path);
    if (current === null || current.ino !== staleIno) return true;
    if (await holderRuns(path, current.holder)) return false;
    // Holding the breaker, nobody else removes L, and nobody can create a new L while it exists: the rename below
    // moves exactly the stale file.
    await removeIfSameInode(path, staleIno);
    return true;
  } finally {
    const mine = await readLockFile(breakerPath);
    if (mine?.holder?.token === breakerToken) await unlinkIfPresent(breakerPath);
  }
}

/**
 * Removes `path` only if it is inode `ino`: renames it aside first (rename is atomic, so two removers never both
 * see it), then, if what was moved is a different file, puts it back with link(2), which cannot overwrite.
 */
async function removeIfSameInode(path: string, ino: number): Promise<void> {
  const aside = tempPathFor(path);
  try {
    await rename(path, aside);
  } catch (e) {
    if (errnoCode(e) === "ENOENT") return;
    throw e;
  }
  const moved = await lstat(aside);
  if (moved.ino !== ino) {
    try {
      await link(aside, path);
    } catch (e) {
      if (errnoCode(e) !== "EEXIST") {
        await rm(aside, { recursive: true, force: true });
        throw e;
      }
    }
  }
  await rm(aside, { recursive: true, force: true });
}

async function readLockFile(path: string): Promise<LockFileState | null> {
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = errnoCode(e);
    if (code === "ENOENT") return null;
    if (code === "ELOOP") {
      const s = await lstat(path).catch(() => null);
      return s === null ? null : { ino: s.ino, holder: null };
    }
    throw e;
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) return { ino: stat.ino, holder: null };
    return { ino: stat.ino, holder: parseHolder(await handle.readFile("utf8")) };
  } finally {
    await handle.close();
  }
}

function parseHolder(text: string): LockHolder | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  const v = value as Record<string, unknown>;
  if (typeof v.pid !== "number" || typeof v.token !== "string") return null;
  return {
    pid: v.pid,
    startTime: typeof v.startTime === "number" ? v.startTime : null,
    bootId: typeof v.bootId === "string" ? v.bootId : null,
    token: v.token,
    label: typeof v.label === "string" ? v.label : "",
    acquiredAt: typeof v.acquiredAt === "string" ? v.acquiredAt : "",
  };
}

async function releaseLockFile(path: string, token: string, label: string): Promise<void> {
  const state = await readLockFile(path);
  if (state?.holder?.token !== token) {
    throw new MvmError(
      "internal",
      `lock ${label} (${path}) was removed or taken over while this process held it; ` +
        "the work done under it may have raced",
    );
  }
  await unlinkIfPresent(path);
}
