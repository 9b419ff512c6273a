// What /proc says about a process: its start time (which, with the pid, names it across pid reuse), whether that
// exact process still runs, its command line and its network namespace. The /proc/PID/stat parsing is shared with
// the store's lock identities (store/process-identity.ts), so both agree on what "the same process" means.

import { readFile, readlink } from "node:fs/promises";
import { errnoCode, isProcessAlive, parseProcStat, processStartTime } from "../store/process-identity.js";

export { parseProcStat };

/** Field 22 of /proc/PID/stat (clock ticks since boot), or null when no such process exists. */
export function readProcStartTime(pid: number): Promise<number | null> {
  return processStartTime(pid);
}

/**
 * Whether `pid` is still the process that started at `startTime`. A zombie counts as gone: it runs nothing and will
 * be reaped. A pid now used by another process (different start time) counts as gone.
 */
export function isSameProcess(pid: number, startTime: number): Promise<boolean> {
  return isProcessAlive({ pid, startTime, bootId: null });
}

/** Splits the NUL-separated content of /proc/PID/cmdline into its arguments. */
export function parseProcCmdline(raw: string): string[] {
  if (raw === "") return [];
  const args = raw.split("\0");
  if (args[args.length - 1] === "") args.pop();
  return args;
}

/** Arguments of `pid` (empty for a zombie or a kernel thread), or null when no such process exists. */
export async function readProcCmdline(pid: number): Promise<string[] | null> {
  try {
    return parseProcCmdline(await readFile(`/proc/${pid}/cmdline`, "utf8"));
  } catch (e) {
    if (errnoCode(e) === "ENOENT" || errnoCode(e) === "ESRCH") return null;
    throw e;
  }
}

/** The network namespace of `pid` as the kernel names it (`net:[4026531992]`), or null when no such process exists. */
export async function readProcNetNamespace(pid: number | "self"): Promise<string | null> {
  try {
    return await readlink(`/proc/${pid}/ns/net`);
  } catch (e) {
    if (errnoCode(e) === "ENOENT" || errnoCode(e) === "ESRCH") return null;
    throw e;
  }
}

/** Resolved path of the executable `pid` runs, or null when no such process exists (or it is a zombie). */
export async function readProcExe(pid: number): Promise<string | null> {
  try {
    return await readlink(`/proc/${pid}/exe`);
  } catch (e) {
    const code = errnoCode(e);
    if (code === "ENOENT" || code === "ESRCH") return null;
    throw e;
  }
}
