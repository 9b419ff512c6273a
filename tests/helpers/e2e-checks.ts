// Checks the real-VM e2e tests share.

import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { expect } from "vitest";
import type { CliResult } from "./mvm-cli.js";

/** The JSON a CLI command printed, after checking it exited 0 (its stderr is the failure message otherwise). */
export function okJson<T = any>(r: CliResult): T {
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as T;
}

/** Gone, or a zombie that PID 1 has not reaped yet (its parent, a CLI process, has exited); waits up to `timeoutMs`. */
export function processGone(pid: number, timeoutMs = 5_000): boolean {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let state: string | undefined;
    try {
      state = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0];
    } catch {
      return true;
    }
    if (state === "Z") return true;
    if (Date.now() > deadline) return false;
    spawnSync("sleep", ["0.1"]);
  }
}
