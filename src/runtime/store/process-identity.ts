// Who a process is, in a form that survives pid reuse: (boot id, pid, start time). Lock files and temp files record
// it so a later process can tell a live holder from the leftovers of one that was killed.

import { readFile } from "node:fs/promises";

/** The identity of a process on this host. */
export interface ProcessIdentity {
  pid: number;
  /** Field 22 of /proc/PID/stat (clock ticks since boot); null where /proc is unavailable. */
  startTime: number | null;
  /** /proc/sys/kernel/random/boot_id; null where unavailable. A different boot id means the process is gone. */
  bootId: string | null;
}

/** Index of `starttime` among the fields that follow the `(comm)` field of /proc/PID/stat (field 22 overall). */
const START_TIME_INDEX_AFTER_COMM = 22 - 3;
const STATE_INDEX_AFTER_COMM = 0;

interface ProcStat {
  state: string;
  startTime: number;
}

/** Parses /proc/PID/stat. `comm` may contain spaces and parentheses, so fields are counted from the last `)`. */
export function parseProcStat(text: string): ProcStat | null {
  const close = text.lastIndexOf(")");
  if (close < 0) return null;
  const fields = text.slice(close + 1).trim().split(/\s+/);
  const state = fields[STATE_INDEX_AFTER_COMM];
  const startTime = Number(fields[START_TIME_INDEX_AFTER_COMM]);
  if (state === undefined || !Number.isSafeInteger(startTime)) return null;
  return { state, startTime };
}

async function readProcStat(pid: number): Promise<ProcStat | null | "no-proc"> {
  try {
    return parseProcStat(await readFile(`/proc/${pid}/stat`, "utf8"));
  } catch (e) {
    if (errnoCode(e) === "ENOENT" || errnoCode(e) === "ESRCH") {
      return (await procAvailable()) ? null : "no-proc";
    }
    throw e;
  }
}

let procMounted: Promise<boolean> | undefined;
function procAvailable(): Promise<boolean> {
  procMounted ??= readFile("/proc/self/stat", "utf8").then(
    () => true,
    () => false,
  );
  return procMounted;
}

/** Start time (field 22) of `pid`, or null when there is no such process or /proc cannot be read. */
export async function processStartTime(pid: number): Promise<number | null> {
  const stat = await readProcStat(pid);
  return stat === null || stat === "no-proc" ? null : stat.startTime;
}

let cachedBootId: Promise<string | null> | undefined;
export function bootId(): Promise<string | null> {
  cachedBootId ??= readFile("/proc/sys/kernel/random/boot_id", "utf8").then(
    (text) => text.trim() || null,
    () => null,
  );
  return cachedBootId;
}

let selfIdentity: Promise<ProcessIdentity> | undefined;
export function currentProcessIdentity(): Promise<ProcessIdentity> {
  selfIdentity ??= (async () => ({
    pid: process.pid,
    startTime: await processStartTime(process.pid),
    bootId: await bootId(),
  }))();
  return selfIdentity;
}

/**
 * Whether the process that `identity` names is still running. A zombie counts as gone (it can hold nothing); a pid
 * now used by a process with another start time, or an identity from another boot, counts as gone. Where /proc is
 * missing, falls back to signal 0, which cannot detect pid reuse.
 */
export async function isProcessAlive(identity: ProcessIdentity): Promise<boolean> {
  if (!Number.isSafeInteger(identity.pid) || identity.pid <= 0) return false;
  const ourBoot = await bootId();
  if (identity.bootId !== null && ourBoot !== null && identity.bootId !== ourBoot) return false;
  const stat = await readProcStat(identity.pid);
  if (stat === "no-proc") return signalZeroReaches(identity.pid);
  if (stat === null) return false;
  if (stat.state === "Z" || stat.state === "X") return false;
  return identity.startTime === null || identity.startTime === stat.startTime;
}

/** Whether any process has `pid` (no start-time check; for names that carry only a pid). */
export async function isPidRunning(pid: number): Promise<boolean> {
  return isProcessAlive({ pid, startTime: null, bootId: null });
}

function signalZeroReaches(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return errnoCode(e) === "EPERM";
  }
}

export function errnoCode(e: unknown): string | undefined {
  return typeof e === "object" && e !== null && "code" in e && typeof e.code === "string" ? e.code : undefined;
}
