// The audit log of SPEC §10.3 on the local filesystem: one hash-chained JSON-lines file per tenant,
// `<dataRoot>/tenants/<t>/audit.log`, and one for node-level entries (tenantId ""), `<dataRoot>/audit/node.log`.
// The chain is defined in audit-chain.ts, the byte form in canonical-json.ts.
//
// Appending: under the log's file lock (`<log>.lock`, shared by every process on the host), the tail of the file is
// read to learn the last seq and hash, the new line is written with one write(2) on an O_APPEND descriptor, and the
// file is fsynced before the entry is returned. A crash can leave only the last line damaged; the next append finds
// it, copies the damaged bytes to `<log>.torn-<time>`, truncates the log to its valid prefix, and reports it through
// `onTornTail` — the bytes are never silently dropped. A last line that is well-formed JSON but fails its hash is
// not a torn write but an altered log: appends then fail with `failed_precondition` until an operator looks (the log
// is evidence; mvm does not rewrite it).
//
// Watching: appends in this process wake watchers at once; appends by other processes are found by checking the
// files' sizes every `pollIntervalMs`. Entries are read from the file, never queued in memory, so a slow watcher
// costs nothing but its read position.

import { constants } from "node:fs";
import { lstat, mkdir, open, readdir, truncate } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { MvmError, failedPrecondition, invalid } from "../../core/errors.js";
import type { FieldViolation } from "../../core/errors.js";
import { isValidId } from "../../core/ids.js";
import { AUDIT_ACTIONS } from "../../core/observability-ports.js";
import type { AuditEntry, AuditLog, AuditRecord } from "../../core/observability-ports.js";
import type { Clock } from "../../core/ports.js";
import { createFileExclusive, syncDirectory } from "../store/atomic-file.js";
import { withFileLock } from "../store/file-lock.js";
import { errnoCode } from "../store/process-identity.js";
import {
  ACTOR_KINDS,
  AUDIT_OUTCOMES,
  GENESIS_PREV_HASH,
  checkChainLine,
  entryHash,
  entryLine,
  parseAuditLine,
  startChain,
} from "./audit-chain.js";
import { linesBackward, linesForward } from "./log-lines.js";

export interface FsAuditLogOptions {
  /** Source of each entry's `at`. Default: the system clock. */
  clock?: Clock;
  /** Called when an append found and moved aside a torn last line. Default: a process warning. */
  onTornTail?: (report: TornTailReport) => void;
  /** How often watchers look for entries appended by other processes, ms. Default 500. */
  pollIntervalMs?: number;
  /** How long an append waits for the log's lock before failing with `unavailable`, ms. Default 30000. */
  lockTimeoutMs?: number;
  /** Called after each durable append (e.g. to count entries in metrics). Default: nothing. */
  onAppend?: (entry: AuditEntry) => void;
}

export interface TornTailReport {
  /** The log that was repaired. */
  logPath: string;
  /** Where the damaged bytes were saved. */
  asidePath: string;
  /** How many bytes were moved aside. */
  bytes: number;
  reason: string;
}

export interface AuditVerifyResult {
  /** True when every line is an entry in its place in the chain. */
  ok: boolean;
  /** Entries that verified (all of them when ok; the valid prefix otherwise). */
  entries: number;
  /** The seq at which the chain breaks. */
  firstBadSeq?: number;
  reason?: string;
}

export interface AuditReadOptions {
  /** Only entries with a greater seq. Default 0. */
  afterSeq?: number;
  /** At most this many entries. Default 1000. */
  limit?: number;
}

export interface AuditTailOptions {
  /** Only entries with a smaller seq (to page backwards). Default: none. */
  beforeSeq?: number;
}

export interface AuditWatchOptions {
  /** Ends the iteration cleanly. */
  signal?: AbortSignal;
  /** Most recent existing entries per log to yield before new ones. Default 0 (only new entries). */
  backlog?: number;
}

/** Largest line an append writes, bytes; keeps readers' memory bounded. */
export const MAX_AUDIT_LINE_BYTES = 64 * 1024;
export const NODE_AUDIT_LOG = join("audit", "node.log");
const LOG_NAME = "audit.log";
const DIR_MODE = 0o700;
const FILE_MODE = 0o600;
const DEFAULT_POLL_MS = 500;
const DEFAULT_READ_LIMIT = 1000;
/** Bytes a watcher reads from one log before yielding to the others. */
const WATCH_READ_BYTES = 1024 * 1024;

interface TailState {
  ino: number;
  size: number;
  seq: number;
  hash: string;
}

/** In-process appends, by log path, so watchers in this process need not wait for a poll. */
const appendListeners = new Set<(logPath: string) => void>();

function describeLog(tenantId: string): string {
  return tenantId === "" ? "node audit log" : `audit log of tenant ${tenantId}`;
}

function tornName(logPath: string, nowMs: number): string {
  const stamp = new Date(nowMs).toISOString().replace(/[-:]/g, "");
  return `${logPath}.torn-${stamp}`;
}

export class FsAuditLog implements AuditLog {
  readonly dataRoot: string;
  private readonly clock: Clock;
  private readonly onTornTail: (report: TornTailReport) => void;
  private readonly pollIntervalMs: number;
  private readonly lockTimeoutMs: number | undefined;
  private readonly onAppend: ((entry: AuditEntry) => void) | undefined;
  /** What this process last wrote or read at the end of each log, to skip re-reading the tail on every append. */
  private readonly tails = new Map<string, TailState>();

  constructor(dataRoot: string, options: FsAuditLogOptions = {}) {
    this.dataRoot = resolve(dataRoot);
    this.clock = options.clock ?? { nowMs: () => Date.now() };
    this.onTornTail =
      options.onTornTail ??
      ((r) => process.emitWarning(`${r.logPath}: ${r.reason}; ${r.bytes} bytes moved aside to ${r.asidePath}`, "MvmAuditWarning"));
    this.pollIntervalMs = options.pollIntervalMs ?? DEFAULT_POLL_MS;
    this.lockTimeoutMs = options.lockTimeoutMs;
    this.onAppend = options.onAppend;
  }

  /** The file holding `tenantId`'s entries ("" for the node-level log). */
  logPath(tenantId: string): string {
    assertLogTenant(tenantId);
    return tenantId === "" ? join(this.dataRoot, NODE_AUDIT_LOG) : join(this.dataRoot, "tenants", tenantId, LOG_NAME);
  }

  async append(record: AuditRecord): Promise<AuditEntry> {
    validateRecord(record);
    const path = this.logPath(record.tenantId);
    await this.ensureLogDir(record.tenantId);
    const entry = await withFileLock(
      `${path}.lock`,
      async () => {
        const tail = await this.recoverTail(path, record.tenantId);
        const base = {
          seq: tail.seq + 1,
          at: new Date(this.clock.nowMs()).toISOString(),
          tenantId: record.tenantId,
          actor: { kind: record.actor.kind, id: record.actor.id },
          action: record.action,
          target: record.target,
          outcome: record.outcome,
          reason: record.reason,
          details: { ...record.details },
          prevHash: tail.hash,
        };
        const full: AuditEntry = { ...base, hash: entryHash(base) };
        const line = entryLine(full);
        const bytes = Buffer.byteLength(line, "utf8");
        if (bytes > MAX_AUDIT_LINE_BYTES) {
          throw invalid([{ field: "details", rule: `the entry must be at most ${MAX_AUDIT_LINE_BYTES} bytes as JSON (got ${bytes})` }]);
        }
        const handle = await open(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, FILE_MODE);
        let size: number;
        let ino: number;
        try {
          const { bytesWritten } = await handle.write(line);
          if (bytesWritten !== bytes) {
            throw new MvmError("internal", `${describeLog(record.tenantId)}: short write (${bytesWritten} of ${bytes} bytes)`);
          }
          await handle.sync();
          const st = await handle.stat();
          size = st.size;
          ino = st.ino;
        } finally {
          await handle.close();
        }
        if (tail.size === 0) await syncDirectory(dirname(path));
        this.tails.set(path, { ino, size, seq: full.seq, hash: full.hash });
        return full;
      },
      { label: describeLog(record.tenantId), timeoutMs: this.lockTimeoutMs },
    );
    for (const listener of [...appendListeners]) listener(path);
    this.onAppend?.(entry);
    return entry;
  }

  /** Walks the whole chain of one log. A missing log is an intact empty one. */
  async verify(tenantId: string): Promise<AuditVerifyResult> {
    const path = this.logPath(tenantId);
    const handle = await openForRead(path);
    if (handle === null) return { ok: true, entries: 0 };
    try {
      const { size } = await handle.stat();
      const chain = startChain();
      for await (const line of linesForward(handle, 0, size)) {
        const reason = checkChainLine(chain, line.text, line.terminated, tenantId);
        if (reason !== null) return { ok: false, entries: chain.nextSeq - 1, firstBadSeq: chain.nextSeq, reason };
      }
      return { ok: true, entries: chain.nextSeq - 1 };
    } finally {
      await handle.close();
    }
  }

  /** The last `n` entries (before `beforeSeq` when given), oldest first. Lines that are not valid entries are skipped. */
  async tail(tenantId: string, n: number, options: AuditTailOptions = {}): Promise<AuditEntry[]> {
    const path = this.logPath(tenantId);
    if (!Number.isInteger(n) || n < 0) throw invalid([{ field: "n", rule: `must be an integer >= 0 (got ${n})` }]);
    if (n === 0) return [];
    const handle = await openForRead(path);
    if (handle === null) return [];
    const out: AuditEntry[] = [];
    try {
      const { size } = await handle.stat();
      for await (const line of linesBackward(handle, size)) {
        if (!line.terminated) continue;
        const parsed = parseAuditLine(line.text);
        if (!parsed.ok) continue;
        if (options.beforeSeq !== undefined && parsed.entry.seq >= options.beforeSeq) continue;
        out.push(parsed.entry);
        if (out.length >= n) break;
      }
    } finally {
      await handle.close();
    }
    return out.reverse();
  }

  /** Entries after `afterSeq`, oldest first, at most `limit`. Lines that are not valid entries are skipped. */
  async read(tenantId: string, options: AuditReadOptions = {}): Promise<AuditEntry[]> {
    const path = this.logPath(tenantId);
    const afterSeq = options.afterSeq ?? 0;
    const limit = options.limit ?? DEFAULT_READ_LIMIT;
    const handle = await openForRead(path);
    if (handle === null) return [];
    const out: AuditEntry[] = [];
    try {
      const { size } = await handle.stat();
      for await (const line of linesForward(handle, 0, size)) {
        if (out.length >= limit) break;
        if (!line.terminated) continue;
        const parsed = parseAuditLine(line.text);
        if (parsed.ok && parsed.entry.seq > afterSeq) out.push(parsed.entry);
      }
    } finally {
      await handle.close();
    }
    return out;
  }

  /** Tenant IDs that have a log, sorted, with "" first for the node-level log when it exists. */
  async logs(): Promise<string[]> {
    const out: string[] = [];
    if (await isFile(join(this.dataRoot, NODE_AUDIT_LOG))) out.push("");
    let names: string[] = [];
    try {
      names = await readdir(join(this.dataRoot, "tenants"));
    } catch (e) {
      if (errnoCode(e) !== "ENOENT") throw e;
    }
    for (const name of names.filter(isValidId).sort()) {
      if (await isFile(join(this.dataRoot, "tenants", name, LOG_NAME))) out.push(name);
    }
    return out;
  }

  /**
   * New entries of one log (`tenantId`, "" for the node log) or of every log (`null`, including logs created later),
   * as they are appended, in seq order per log. Ends when `signal` aborts or the consumer stops iterating.
   */
  watch(tenantId: string | null, options: AuditWatchOptions = {}): AsyncGenerator<AuditEntry, void, undefined> {
    if (tenantId !== null) assertLogTenant(tenantId);
    return this.watchLogs(tenantId, options);
  }

  private async *watchLogs(scope: string | null, options: AuditWatchOptions): AsyncGenerator<AuditEntry, void, undefined> {
    const { signal } = options;
    const backlog = options.backlog ?? 0;
    const cursors = new Map<string, WatchCursor>();
    let woken = false;
    let wake: (() => void) | null = null;
    const scopePath = scope === null ? null : this.logPath(scope);
    const listener = (path: string) => {
      if (scopePath !== null && path !== scopePath) return;
      woken = true;
      wake?.();
    };
    const onAbort = () => wake?.();
    appendListeners.add(listener);
    signal?.addEventListener("abort", onAbort);
    try {
      for (const t of scope === null ? await this.logs() : [scope]) {
        const cursor = await this.cursorAtEnd(t);
        cursors.set(t, cursor);
        if (backlog > 0) {
          for (const e of await this.tail(t, backlog, { beforeSeq: cursor.lastSeq + 1 })) {
            if (signal?.aborted) return;
            yield e;
          }
        }
      }
      while (!signal?.aborted) {
        woken = false;
        if (scope === null) {
          for (const t of await this.logs()) if (!cursors.has(t)) cursors.set(t, newCursor(t));
        }
        let delivered = false;
        for (const cursor of cursors.values()) {
          const { entries, more } = await this.readNew(cursor);
          for (const e of entries) {
            if (signal?.aborted) return;
            delivered = true;
            yield e;
          }
          if (more) delivered = true;
        }
        if (delivered || woken) continue;
        await new Promise<void>((r) => {
          const timer = setTimeout(r, this.pollIntervalMs);
          wake = () => {
            clearTimeout(timer);
            r();
          };
          if (woken || signal?.aborted) wake();
        });
        wake = null;
      }
    } finally {
      appendListeners.delete(listener);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /** A cursor past every entry the log holds now. */
  private async cursorAtEnd(tenantId: string): Promise<WatchCursor> {
    const cursor = newCursor(tenantId);
    const path = this.logPath(tenantId);
    const handle = await openForRead(path);
    if (handle === null) return cursor;
    try {
      const st = await handle.stat();
      cursor.ino = st.ino;
      // Stop before an unterminated last line: its entry is either being written now or torn.
      for await (const line of linesBackward(handle, st.size)) {
        if (!line.terminated) continue;
        if (cursor.offset === 0) cursor.offset = line.end;
        const parsed = parseAuditLine(line.text);
        if (parsed.ok) {
          cursor.lastSeq = parsed.entry.seq;
          break;
        }
      }
    } finally {
      await handle.close();
    }
    return cursor;
  }

  /** Entries after the cursor's position (at most WATCH_READ_BYTES of them); `more` when the read stopped early. */
  private async readNew(cursor: WatchCursor): Promise<{ entries: AuditEntry[]; more: boolean }> {
    const path = this.logPath(cursor.tenantId);
    // The common case on every poll: nothing new. One lstat instead of open, fstat and close.
    const quick = await lstat(path).catch(() => null);
    if (quick !== null && quick.ino === cursor.ino && quick.size === cursor.offset) return { entries: [], more: false };
    const handle = await openForRead(path);
    if (handle === null) {
      // The log went away (its tenant was deleted): a new log starts from seq 1 again.
      cursor.ino = -1;
      cursor.offset = 0;
      cursor.lastSeq = 0;
      return { entries: [], more: false };
    }
    const entries: AuditEntry[] = [];
    try {
      const st = await handle.stat();
      if (st.ino !== cursor.ino) {
        cursor.ino = st.ino;
        cursor.offset = 0;
        cursor.lastSeq = 0;
      } else if (st.size < cursor.offset) {
        // Cut below what was delivered: not a torn-tail repair (those only remove lines a watcher has not passed)
        // but a log edited by hand. Carry on from its new end rather than deliver old entries again.
        Object.assign(cursor, await this.cursorAtEnd(cursor.tenantId));
        return { entries, more: false };
      }
      if (st.size === cursor.offset) return { entries, more: false };
      const to = Math.min(st.size, cursor.offset + WATCH_READ_BYTES);
      let lastComplete = -1;
      const lines: { text: string; end: number }[] = [];
      for await (const line of linesForward(handle, cursor.offset, to)) {
        if (!line.terminated) break;
        lines.push({ text: line.text, end: line.end });
        lastComplete = line.end;
      }
      for (const [i, line] of lines.entries()) {
        const parsed = parseAuditLine(line.text);
        if (!parsed.ok) {
          // A damaged last line is left in place: an append is about to replace it with a good one.
          if (i === lines.length - 1 && line.end === st.size) break;
          cursor.offset = line.end;
          continue;
        }
        cursor.offset = line.end;
        if (parsed.entry.seq <= cursor.lastSeq) continue;
        cursor.lastSeq = parsed.entry.seq;
        entries.push(parsed.entry);
      }
      return { entries, more: lastComplete !== -1 && to < st.size };
    } finally {
      await handle.close();
    }
  }

  /** Creates the log's directory (0700), refusing symlinks where the data root's directories belong. */
  private async ensureLogDir(tenantId: string): Promise<void> {
    const segments = tenantId === "" ? ["audit"] : ["tenants", tenantId];
    await mkdir(this.dataRoot, { recursive: true, mode: DIR_MODE });
    let dir = this.dataRoot;
    for (const segment of segments) {
      dir = join(dir, segment);
      try {
        await mkdir(dir, { mode: DIR_MODE });
      } catch (e) {
        if (errnoCode(e) !== "EEXIST") throw e;
      }
      const st = await lstat(dir);
      if (st.isSymbolicLink() || !st.isDirectory()) {
        throw failedPrecondition(`${dir}: must be a directory, not a symlink or file (refusing to write the audit log there)`);
      }
    }
  }

  /** The seq and hash to chain the next entry to, repairing a torn last line first. Runs under the log's lock. */
  private async recoverTail(path: string, tenantId: string): Promise<TailState> {
    const handle = await openForRead(path);
    if (handle === null) return { ino: -1, size: 0, seq: 0, hash: GENESIS_PREV_HASH };
    try {
      const st = await handle.stat();
      const cached = this.tails.get(path);
      if (cached !== undefined && cached.ino === st.ino && cached.size === st.size) return cached;
      if (st.size === 0) return { ino: st.ino, size: 0, seq: 0, hash: GENESIS_PREV_HASH };
      let torn: { start: number; reason: string } | null = null;
      for await (const line of linesBackward(handle, st.size)) {
        if (torn === null && !line.terminated) {
          torn = { start: line.start, reason: "the last line is incomplete (torn write)" };
          continue;
        }
        const parsed = parseAuditLine(line.text);
        if (!parsed.ok && !parsed.json && torn === null) {
          torn = { start: line.start, reason: `the last line is damaged (${parsed.reason})` };
          continue;
        }
        if (!parsed.ok) {
          throw failedPrecondition(
            `${describeLog(tenantId)} (${path}) is damaged at its end: ${parsed.reason}; ` +
              "appends are refused until it is examined (mvm audit verify)",
          );
        }
        if (parsed.entry.tenantId !== tenantId) {
          throw failedPrecondition(`${describeLog(tenantId)} (${path}): its last entry belongs to tenant ${JSON.stringify(parsed.entry.tenantId)}`);
        }
        if (torn !== null) await this.moveTornTail(handle, path, torn.start, st.size, torn.reason);
        return { ino: st.ino, size: line.end, seq: parsed.entry.seq, hash: parsed.entry.hash };
      }
      // Nothing but a torn fragment: the log had no complete entry.
      if (torn !== null) await this.moveTornTail(handle, path, torn.start, st.size, torn.reason);
      return { ino: st.ino, size: 0, seq: 0, hash: GENESIS_PREV_HASH };
    } finally {
      await handle.close();
    }
  }

  /** Saves bytes [start, end) of the log durably beside it, then cuts them off the log. */
  private async moveTornTail(handle: FileHandle, path: string, start: number, end: number, reason: string): Promise<void> {
    const bytes = Buffer.alloc(end - start);
    await handle.read(bytes, 0, bytes.length, start);
    let asidePath = tornName(path, this.clock.nowMs());
    for (let n = 1; !(await createFileExclusive(asidePath, bytes, { mode: FILE_MODE })); n++) {
      asidePath = `${tornName(path, this.clock.nowMs())}-${n}`;
    }
    await truncate(path, start);
    const fd = await open(path, constants.O_WRONLY | constants.O_NOFOLLOW);
    try {
      await fd.sync();
    } finally {
      await fd.close();
    }
    this.onTornTail({ logPath: path, asidePath, bytes: bytes.length, reason });
  }
}

interface WatchCursor {
  tenantId: string;
  /** Inode of the file the offset refers to; -1 before the file exists. */
  ino: number;
  /** Byte offset of the next unread line. */
  offset: number;
  lastSeq: number;
}

function newCursor(tenantId: string): WatchCursor {
  return { tenantId, ino: -1, offset: 0, lastSeq: 0 };
}

function assertLogTenant(tenantId: string): void {
  if (tenantId !== "" && !isValidId(tenantId)) {
    throw invalid([{ field: "tenant_id", rule: "must be a tenant ID (1-63 characters of [a-z0-9-], no leading or trailing hyphen) or empty for the node log" }]);
  }
}

function validateRecord(record: AuditRecord): void {
  const violations: FieldViolation[] = [];
  if (typeof record.tenantId !== "string" || (record.tenantId !== "" && !isValidId(record.tenantId))) {
    violations.push({ field: "tenant_id", rule: "must be a tenant ID or empty for the node log" });
  }
  if (!(ACTOR_KINDS as readonly unknown[]).includes(record.actor?.kind)) {
    violations.push({ field: "actor.kind", rule: `must be one of ${ACTOR_KINDS.join(", ")}` });
  }
  if (typeof record.actor?.id !== "string" || record.actor.id === "") violations.push({ field: "actor.id", rule: "must be a non-empty string" });
  if (!(AUDIT_ACTIONS as readonly unknown[]).includes(record.action)) violations.push({ field: "action", rule: "must be a known audit action" });
  if (typeof record.target !== "string") violations.push({ field: "target", rule: "must be a string" });
  if (!(AUDIT_OUTCOMES as readonly unknown[]).includes(record.outcome)) {
    violations.push({ field: "outcome", rule: `must be one of ${AUDIT_OUTCOMES.join(", ")}` });
  }
  if (typeof record.reason !== "string") violations.push({ field: "reason", rule: "must be a string" });
  const details = record.details as unknown;
  if (typeof details !== "object" || details === null || Array.isArray(details)) {
    violations.push({ field: "details", rule: "must map strings to strings" });
  } else {
    for (const [k, v] of Object.entries(details)) {
      if (typeof v !== "string") violations.push({ field: `details.${k}`, rule: "must be a string" });
    }
  }
  if (violations.length > 0) throw invalid(violations);
}

async function openForRead(path: string): Promise<FileHandle | null> {
  try {
    return await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    if (errnoCode(e) === "ENOENT") return null;
    if (errnoCode(e) === "ELOOP") throw failedPrecondition(`${path}: is a symlink (refusing to read an audit log through it)`);
    throw e;
  }
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await lstat(path)).isFile();
  } catch (e) {
    if (errnoCode(e) === "ENOENT" || errnoCode(e) === "ENOTDIR") return false;
    throw e;
  }
}
