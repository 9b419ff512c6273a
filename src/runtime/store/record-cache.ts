// Parsed records kept in memory and revalidated with one lstat per read. A record read costs about ten system calls
// otherwise (an lstat per directory on its path, then open, fstat, read, close), and under nested virtualisation each
// is several microseconds: most of a unary RPC's time (bench/rpc-latency.mjs).
//
// Why one lstat is enough. Every writer replaces a record by rename (atomic-file.ts), which gives the path a new
// inode and sets its ctime; the cache keeps the inode, size, mtime and ctime that were fstat'ed on the descriptor the
// cached record was read from. If all four still match, the path names the very file that was read and validated, not
// changed since (so the directory checks made on that read still hold for the data returned).
// One gap is closed by the settle rule: file timestamps come from a coarse clock (a few ms), and a freed inode number
// can be reused at once, so a record written twice within one tick could come back with the same inode, size and
// times as the one cached. A record is therefore cached only once its ctime is `settleMs` in the past: a later write
// gets a later ctime and can never look like it.

import { lstatSync, type BigIntStats } from "node:fs";

/**
 * A deep copy of a value made of what JSON.parse makes (plain objects, arrays, strings, numbers, booleans, null):
 * a few times cheaper than parsing the text again, and cheaper than structuredClone.
 */
export function cloneJson<T>(value: T): T {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) {
    const out = new Array<unknown>(value.length);
    for (let i = 0; i < value.length; i++) out[i] = cloneJson(value[i] as unknown);
    return out as T;
  }
  const out: Record<string, unknown> = {};
  for (const key in value) {
    const copy = cloneJson((value as Record<string, unknown>)[key]);
    // JSON.parse makes "__proto__" an own property; an assignment would set the copy's prototype instead.
    if (key === "__proto__") Object.defineProperty(out, key, { value: copy, enumerable: true, writable: true, configurable: true });
    else out[key] = copy;
  }
  return out as T;
}

export interface RecordCacheOptions {
  /** Records kept at most; the least recently stored goes first. */
  maxEntries?: number;
  /** How long a record must have been unchanged before it is cached, ms. */
  settleMs?: number;
  /** Wall clock in ms (file times are wall-clock times). */
  nowMs?: () => number;
}

interface CachedRecord {
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  /** The validated record, parsed once; each reader gets its own deep copy, so no two readers share an object. */
  value: unknown;
}

const DEFAULT_MAX_ENTRIES = 20_000;
const DEFAULT_SETTLE_MS = 50;

export class RecordCache {
  private readonly entries = new Map<string, CachedRecord>();
  private readonly maxEntries: number;
  private readonly settleNs: bigint;
  private readonly nowMs: () => number;

  constructor(options: RecordCacheOptions = {}) {
    this.maxEntries = options.maxEntries ?? DEFAULT_MAX_ENTRIES;
    this.settleNs = BigInt(Math.round((options.settleMs ?? DEFAULT_SETTLE_MS) * 1e6));
    this.nowMs = options.nowMs ?? Date.now;
  }

  /**
   * A fresh parse of the cached record at `path` if the file there is still the one it was read from; else
   * undefined.
   */
  lookup(path: string): unknown {
    const entry = this.entries.get(path);
    if (entry === undefined) return undefined;
    const now = lstatSync(path, { bigint: true, throwIfNoEntry: false });
    if (
      now !== undefined &&
      now.isFile() &&
      now.ino === entry.ino &&
      now.size === entry.size &&
      now.mtimeNs === entry.mtimeNs &&
      now.ctimeNs === entry.ctimeNs
    ) {
      return cloneJson(entry.value);
    }
    this.entries.delete(path);
    return undefined;
  }

  /**
   * Keeps `value`, parsed from the file that `stat` describes and found valid, if that file has settled. The cache
   * keeps a copy of its own: the caller may go on to change `value`.
   */
  remember(path: string, stat: BigIntStats, value: unknown): void {
    if (BigInt(Math.floor(this.nowMs())) * 1_000_000n - stat.ctimeNs < this.settleNs) return;
    this.entries.delete(path);
    if (this.entries.size >= this.maxEntries) {
      const oldest = this.entries.keys().next();
      if (oldest.done !== true) this.entries.delete(oldest.value);
    }
    this.entries.set(path, { ino: stat.ino, size: stat.size, mtimeNs: stat.mtimeNs, ctimeNs: stat.ctimeNs, value: cloneJson(value) });
  }

  get size(): number {
    return this.entries.size;
  }
}
