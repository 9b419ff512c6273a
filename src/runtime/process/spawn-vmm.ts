// Starts a VMM as a long-lived process that outlives whoever started it (a CLI run, an agent that restarts): its own
// session, stdin from /dev/null, stdout and stderr appended to a log file, not waited for.
//
// Placement happens before the VMM runs any code of its own: a tiny fixed shell script writes its own pid into each
// cgroup.procs file and then execs the VMM, so the VMM starts inside its groups (SPEC §6.4). The network namespace is
// entered after that, with `ip netns exec`, because entering it remounts /sys and hides /sys/fs/cgroup. exec keeps
// the pid at every step (sh → ip → VMM), so the pid returned here is the VMM's.
//
// A launcher can also be parked (`parkVmmLauncher`): started and placed in its cgroups ahead of time, it waits for
// its command on stdin and runs nothing until it gets one. A wake parks one while the snapshot's hash is checked, so
// that neither the spawn nor the first cgroup join (which waits for an RCU grace period, 6-15 ms here) is left for
// after the check; the VMM itself still starts only once the check has passed.
//
// Starting a launcher forks the agent, whose page tables make that cost ~5 ms of its main thread per 150 MB of
// memory; during a wake that time is taken from the hash check it runs beside. So a launcher can be started earlier
// still, placed nowhere (`startStandbyLauncher`): it waits for where to go (directory, log, groups) and only then for
// its command.

import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { readFile, realpath } from "node:fs/promises";
import { isAbsolute } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { MvmError, invalidField } from "../../core/errors.js";
import { writeFileAtomic } from "../store/atomic-file.js";
import { errnoCode } from "../store/process-identity.js";
import { readProcExe, readProcStartTime } from "./proc-stat.js";

/**
 * Run as `sh -c SCRIPT sh <procs file>... -- <argv>...`. It never interpolates anything: paths and the command only
 * ever arrive as positional parameters. Exit status 125 means a cgroup could not be joined (nothing was exec'd).
 */
export const JOIN_CGROUPS_THEN_EXEC_SCRIPT = [
  'while [ "$#" -gt 0 ]; do',
  '  if [ "$1" = "--" ]; then shift; exec "$@"; fi',
  '  echo "$$" > "$1" || exit 125',
  "  shift",
  "done",
  'echo "launcher: no command after --" >&2',
  "exit 125",
].join("\n");

/**
 * Run as `sh -c SCRIPT sh` with stdin a pipe from the caller and output to /dev/null. It first reads where to go, a
 * line each: its working directory, its log file (appended to), the number of procs files, then one per line; it
 * enters the directory, sends its output to the log and joins the groups. It then reads the command (a line with the
 * number of arguments, then one argument per line) and execs it with stdin from /dev/null. End of input before a
 * whole message (the caller discarded it, or went away) ends it with status 125, having run nothing.
 */
export const VMM_LAUNCHER_SCRIPT = [
  "IFS= read -r dir || exit 125",
  "IFS= read -r log || exit 125",
  'exec >> "$log" 2>&1',
  'cd "$dir" || exit 125',
  "IFS= read -r count || exit 125",
  'case "$count" in ""|*[!0-9]*) exit 125;; esac',
  'while [ "$count" -gt 0 ]; do',
  '  IFS= read -r file || exit 125',
  '  echo "$$" > "$file" || exit 125',
  "  count=$((count - 1))",
  "done",
  "IFS= read -r count || exit 125",
  'case "$count" in ""|*[!0-9]*) exit 125;; esac',
  "set --",
  'while [ "$count" -gt 0 ]; do',
  '  IFS= read -r arg || exit 125',
  '  set -- "$@" "$arg"',
  "  count=$((count - 1))",
  "done",
  'exec "$@" < /dev/null',
].join("\n");

const SHELL = "/bin/sh";
const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_START_TIMEOUT_MS = 5_000;
const EXEC_POLL_MS = 2;
const LOG_TAIL_BYTES = 2_048;

export interface SpawnVmmOptions {
  /**
   * The VMM program and its arguments; a bare program name is looked up on PATH. The program must not be /bin/sh
   * itself: the exec out of the launcher is recognised by the executable changing.
   */
  argv: readonly string[];
  /** Network namespace the VMM runs in (entered after the cgroups are joined); null keeps the current one. */
  netns: string | null;
  /** Absolute `cgroup.procs` paths the process joins before it execs the VMM. May be empty. */
  cgroupProcsFiles: readonly string[];
  /** Receives the VMM's stdout and stderr (appended, created 0600). */
  logFile: string;
  /** Written with `<pid> <start time>` once the process runs. */
  pidFile: string;
  /** Working directory of the VMM. */
  cwd: string;
  /** How long the launcher may take to join the cgroups and exec, ms. Default 5000. */
  startTimeoutMs?: number;
  /** The `ip` program used to enter the namespace. Default `ip` (looked up on PATH). */
  ipBinary?: string;
}

export interface SpawnedVmm {
  pid: number;
  /** Field 22 of /proc/PID/stat. */
  startTime: number;
}

/** What the launcher execs: the VMM's argv, behind `ip netns exec <netns>` when it runs in a namespace. */
export function vmmCommand(options: Pick<SpawnVmmOptions, "argv" | "netns" | "ipBinary">): string[] {
  if (options.argv.length === 0 || options.argv[0] === "") throw invalidField("argv", "must name a program");
  if (options.netns !== null && !/^[A-Za-z0-9_.-]{1,64}$/.test(options.netns)) {
    throw invalidField("netns", "must be 1-64 characters of [A-Za-z0-9_.-]");
  }
  return options.netns === null ? [...options.argv] : [options.ipBinary ?? "ip", "netns", "exec", options.netns, ...options.argv];
}

/** Full argv of the launcher: the fixed script, the procs files as parameters, `--`, then the command to exec. */
export function vmmLauncherArgv(options: Pick<SpawnVmmOptions, "argv" | "netns" | "cgroupProcsFiles" | "ipBinary">): string[] {
  const command = vmmCommand(options);
  for (const [i, file] of options.cgroupProcsFiles.entries()) {
    if (!isAbsolute(file)) throw invalidField(`cgroup_procs_files[${i}]`, "must be an absolute path");
  }
  return [SHELL, "-c", JOIN_CGROUPS_THEN_EXEC_SCRIPT, "sh", ...options.cgroupProcsFiles, "--", ...command];
}

/**
 * Starts the VMM and returns once it runs inside its cgroups (the launcher has exec'd). On failure the launcher has
 * already exited and the error carries the end of the log.
 */
export async function spawnVmm(options: SpawnVmmOptions): Promise<SpawnedVmm> {
  const [program, ...args] = vmmLauncherArgv(options);
  const shellExe = await realpath(SHELL);
  const { child, exit } = await startDetached(program as string, args, "ignore", options);
  return awaitExec(child, exit, shellExe, options);
}

/**
 * Starts `program` in its own session, its output appended to the log file (null: to /dev/null), and resolves once it
 * runs. The child is unreferenced: the caller's process may exit while it runs on.
 */
async function startDetached(
  program: string,
  args: readonly string[],
  stdin: "ignore" | "pipe",
  options: { logFile: string | null; cwd: string },
): Promise<{ child: ChildProcess; exit: { status(): string | null } }> {
  const logFd = options.logFile === null ? null : openSync(options.logFile, "a", 0o600);
  let child: ChildProcess;
  try {
    child = spawn(program, args, {
      cwd: options.cwd,
      detached: true,
      stdio: [stdin, logFd ?? "ignore", logFd ?? "ignore"],
      // The VMM needs nothing from the caller's environment, which may hold credentials.
      env: { PATH: process.env.PATH ?? DEFAULT_PATH },
    });
  } finally {
    if (logFd !== null) closeSync(logFd);
  }
  const exit = watchExit(child);
  try {
    await started(child);
  } catch (e) {
    throw new MvmError("unavailable", `starting vmm: ${describe(e)}`, [], { cause: e });
  }
  child.unref();
  return { child, exit };
}

/** Waits until the launcher has exec'd the VMM, then writes the pid file. */
async function awaitExec(
  child: ChildProcess,
  exit: { status(): string | null },
  shellExe: string,
  options: Pick<SpawnVmmOptions, "logFile" | "pidFile" | "startTimeoutMs">,
): Promise<SpawnedVmm> {
  const pid = child.pid as number;
  const deadline = Date.now() + (options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS);
  let startTime: number | null = null;
  for (;;) {
    const exited = exit.status();
    if (exited !== null) {
      throw new MvmError("unavailable", `starting vmm: launcher exited (${exited}) before the vmm ran: ${await logTail(options.logFile)}`);
    }
    startTime ??= await readProcStartTime(pid);
    const exe = await readProcExe(pid);
    if (startTime !== null && exe !== null && exe !== shellExe) break;
    if (Date.now() > deadline) {
      // Through the child handle: Node refuses to signal a child it has already reaped, so no recycled pid is hit.
      child.kill("SIGKILL");
      throw new MvmError("unavailable", `starting vmm: launcher did not exec within the start timeout: ${await logTail(options.logFile)}`);
    }
    await sleep(EXEC_POLL_MS);
  }
  // Not fsync'ed: after a crash of the machine the VMM is gone too, and a missing or stale pid file reads as no VMM
  // (the start time must match as well).
  await writeFileAtomic(options.pidFile, `${pid} ${startTime}\n`, { mode: 0o600, durable: false });
  return { pid, startTime };
}

export interface ParkVmmLauncherOptions {
  /** Absolute `cgroup.procs` paths the launcher joins at once. May be empty. */
  cgroupProcsFiles: readonly string[];
  /** Absolute path; receives the launcher's and then the VMM's stdout and stderr (appended, created 0600). */
  logFile: string;
  /** Absolute working directory of the VMM. */
  cwd: string;
  /** A parked launcher not given its command within this time is ended, ms. Default 60000. */
  parkTimeoutMs?: number;
}

/** A launcher in its cgroups, waiting for the command it is to exec. */
export interface ParkedLauncher {
  readonly pid: number;
  readonly cgroupProcsFiles: readonly string[];
  /** True while it waits for its command: not used, not discarded (by the caller or its park timeout), not exited. */
  readonly waiting: boolean;
  /** Hands over the VMM's command (the same options as `spawnVmm`'s, less the groups) and waits until it runs. */
  exec(options: Omit<SpawnVmmOptions, "cgroupProcsFiles" | "logFile" | "cwd">): Promise<SpawnedVmm>;
  /** Ends the launcher, which has run nothing; idempotent, and a no-op once `exec` was called. */
  discard(): void;
}

/** A launcher placed nowhere yet: in the caller's groups, output to /dev/null, waiting to be told where to go. */
export interface StandbyLauncher {
  readonly pid: number;
  /** True while it waits to be placed: not placed, not discarded, not exited. */
  readonly waiting: boolean;
  /**
   * Sends it into its directory, log and groups (it joins them at once) and returns it parked, waiting for its
   * command. A standby can be placed once.
   */
  place(options: ParkVmmLauncherOptions): Promise<ParkedLauncher>;
  /** Ends the launcher, which has run nothing; idempotent, and a no-op once it was placed (discard the parked one). */
  discard(): void;
}

const DEFAULT_PARK_TIMEOUT_MS = 60_000;

/** Paths and arguments travel to the launcher one per line. */
function checkLine(value: string, field: string, absolute: boolean): void {
  if (absolute && !isAbsolute(value)) throw invalidField(field, "must be an absolute path");
  if (/[\n\0]/.test(value)) throw invalidField(field, "must not contain a newline or NUL (the launcher reads one per line)");
}

function checkPlacement(options: ParkVmmLauncherOptions): void {
  checkLine(options.cwd, "cwd", true);
  checkLine(options.logFile, "log_file", true);
  for (const [i, file] of options.cgroupProcsFiles.entries()) checkLine(file, `cgroup_procs_files[${i}]`, true);
}

/**
 * Starts a launcher, detached as `spawnVmm`'s is, that waits to be placed. While it waits it does not keep the
 * caller's process alive, and when that process ends (its end of the pipe closes) it exits having run nothing.
 */
export async function startStandbyLauncher(): Promise<StandbyLauncher> {
  const shellExe = await realpath(SHELL);
  const { child, exit } = await startDetached(SHELL, ["-c", VMM_LAUNCHER_SCRIPT, "sh"], "pipe", { logFile: null, cwd: "/" });
  const stdin = child.stdin!;
  // A write to a launcher that has already exited (it could not join a group) must not become an unhandled error.
  stdin.on("error", () => undefined);
  let state: "standby" | "parked" | "running" | "discarded" = "standby";
  let timer: NodeJS.Timeout | undefined;
  const end = () => {
    state = "discarded";
    clearTimeout(timer);
    // End of input alone would make it exit 125; the kill ends it at once, wherever it is in its script. It has
    // exec'd nothing, so nothing else is hit.
    stdin.end();
    if (exit.status() === null) child.kill("SIGKILL");
  };
  const alive = () => exit.status() === null;

  async function place(options: ParkVmmLauncherOptions): Promise<ParkedLauncher> {
    if (state !== "standby") throw new MvmError("unavailable", `starting vmm: the standby launcher was ${state === "discarded" ? "discarded" : "placed"} already`);
    try {
      checkPlacement(options);
      // Created here with its mode; the launcher's shell would create it under the caller's umask.
      closeSync(openSync(options.logFile, "a", 0o600));
    } catch (e) {
      end();
      throw e;
    }
    state = "parked";
    const files = [...options.cgroupProcsFiles];
    stdin.write(`${options.cwd}\n${options.logFile}\n${files.length}\n${files.map((f) => `${f}\n`).join("")}`);
    const discard = () => {
      if (state === "parked") end();
    };
    timer = setTimeout(discard, options.parkTimeoutMs ?? DEFAULT_PARK_TIMEOUT_MS);
    timer.unref();
    return {
      pid: child.pid as number,
      cgroupProcsFiles: files,
      get waiting() {
        return state === "parked" && alive();
      },
      async exec(command) {
        if (state !== "parked") throw new MvmError("unavailable", `starting vmm: the parked launcher was ${state === "running" ? "used" : "discarded"} already`);
        let argv: string[];
        try {
          argv = vmmCommand(command);
          for (const [i, arg] of argv.entries()) checkLine(arg, `argv[${i}]`, false);
        } catch (e) {
          end();
          throw e;
        }
        state = "running";
        clearTimeout(timer);
        stdin.end(`${argv.length}\n${argv.map((a) => `${a}\n`).join("")}`);
        return awaitExec(child, exit, shellExe, { ...command, logFile: options.logFile });
      },
      discard,
    };
  }

  return {
    pid: child.pid as number,
    get waiting() {
      return state === "standby" && alive();
    },
    place,
    discard: () => {
      if (state === "standby") end();
    },
  };
}

/**
 * Starts a launcher that joins `cgroupProcsFiles` now and execs nothing until `exec`. Resolves once the process
 * runs; a failure to join a group shows when `exec` is called.
 */
export async function parkVmmLauncher(options: ParkVmmLauncherOptions): Promise<ParkedLauncher> {
  // Checked before the fork as well: bad input starts nothing.
  checkPlacement(options);
  return (await startStandbyLauncher()).place(options);
}

/** The pid and start time a pid file written by `spawnVmm` holds, or null when it is missing or malformed. */
export async function readVmmPidFile(path: string): Promise<SpawnedVmm | null> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if (errnoCode(e) === "ENOENT") return null;
    throw e;
  }
  const m = /^([1-9][0-9]*) ([0-9]+)\n?$/.exec(text);
  if (m === null) return null;
  return { pid: Number(m[1]), startTime: Number(m[2]) };
}

function watchExit(child: ChildProcess): { status(): string | null } {
  let status: string | null = null;
  child.once("exit", (code, signal) => {
    status = signal !== null ? `signal ${signal}` : `status ${code}`;
  });
  return { status: () => status };
}

function started(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    child.once("spawn", () => resolve());
    child.once("error", reject);
  });
}

async function logTail(path: string): Promise<string> {
  try {
    const text = await readFile(path, "utf8");
    const tail = text.slice(-LOG_TAIL_BYTES).trim();
    return tail === "" ? "(log empty)" : tail;
  } catch {
    return "(log unreadable)";
  }
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
