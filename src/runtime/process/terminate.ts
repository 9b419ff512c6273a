// Ending a process that is named by pid and start time. Every signal is preceded by a check that the pid still
// belongs to that process, so a pid the kernel has handed to someone else is never signalled.

import { setTimeout as sleep } from "node:timers/promises";
import { MvmError } from "../../core/errors.js";
import { errnoCode } from "../store/process-identity.js";
import { isSameProcess } from "./proc-stat.js";

const POLL_MS = 20;

/** Resolves true once the process is gone (or was never there), false when it still runs after `timeoutMs`. */
export async function waitForProcessExit(pid: number, startTime: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + Math.max(0, timeoutMs);
  for (;;) {
    if (!(await isSameProcess(pid, startTime))) return true;
    if (Date.now() >= deadline) return false;
    await sleep(Math.min(POLL_MS, Math.max(1, deadline - Date.now())));
  }
}

/** Sends `signal` if `pid` is still the process that started at `startTime`; false when it was already gone. */
export async function signalProcess(pid: number, startTime: number, signal: NodeJS.Signals): Promise<boolean> {
  if (!(await isSameProcess(pid, startTime))) return false;
  try {
    process.kill(pid, signal);
    return true;
  } catch (e) {
    if (errnoCode(e) === "ESRCH") return false;
    throw e;
  }
}

export interface TerminateOptions {
  /** How long the process may take to exit after SIGTERM before it gets SIGKILL, ms. Default 3000. */
  termGraceMs?: number;
  /** How long to wait for the exit after SIGKILL, ms. Default 5000. */
  killWaitMs?: number;
}

/** SIGTERM, then SIGKILL when it lingers. Idempotent; throws only when the process survives SIGKILL. */
export async function terminateProcess(pid: number, startTime: number, options: TerminateOptions = {}): Promise<void> {
  if (await signalProcess(pid, startTime, "SIGTERM")) {
    if (await waitForProcessExit(pid, startTime, options.termGraceMs ?? 3_000)) return;
  }
  if (await signalProcess(pid, startTime, "SIGKILL")) {
    if (!(await waitForProcessExit(pid, startTime, options.killWaitMs ?? 5_000))) {
      throw new MvmError("internal", `process ${pid} still runs after SIGKILL`);
    }
  }
}

/** An AbortSignal that fires once the process (pid + start time) is gone; stop() ends the polling. */
export function watchForExit(pid: number, startTime: number, pollMs = 50): { signal: AbortSignal; stop(): void } {
  const controller = new AbortController();
  let stopped = false;
  const poll = async (): Promise<void> => {
    while (!stopped) {
      if (!(await isSameProcess(pid, startTime))) {
        controller.abort();
        return;
      }
      await sleep(pollMs);
    }
  };
  void poll().catch(() => controller.abort());
  return { signal: controller.signal, stop: () => void (stopped = true) };
}
