// Readiness is what the guest says, not that the VMM runs (SPEC §6.1): the guest's init writes `MVM-READY <instance
// id>` to its serial console once it can serve, or `MVM-FAILED <reason>` when it cannot. The serial log is a file the
// VMM writes; it is followed from the start, by polling, until one of the two lines appears.

import { open } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { errnoCode } from "../store/process-identity.js";

export const READY_MARKER = "MVM-READY";
export const FAILED_MARKER = "MVM-FAILED";

export type GuestReport = { kind: "ready" } | { kind: "failed"; line: string } | null;

/**
 * What one serial line says about `instanceId`. Kernel messages may be interleaved with the guest's output on the same
 * line, so the markers are searched for, not required at the start. A ready line for another instance is ignored.
 */
export function parseGuestReport(line: string, instanceId: string): GuestReport {
  const failed = line.indexOf(FAILED_MARKER);
  if (failed >= 0) return { kind: "failed", line: line.slice(failed).trim() };
  const ready = new RegExp(`${READY_MARKER} (\\S+)`).exec(line);
  if (ready !== null && ready[1] === instanceId) return { kind: "ready" };
  return null;
}

export type GuestReadyOutcome =
  | { kind: "ready" }
  | { kind: "failed"; line: string }
  | { kind: "timeout" }
  | { kind: "aborted" };

export interface WaitForGuestReadyOptions {
  /** Epoch ms after which the wait gives up. */
  deadline: number;
  /** Ends the wait early, e.g. when the VMM has exited. */
  signal?: AbortSignal;
  /** Poll interval, ms. Default 20. */
  pollMs?: number;
}

/** Follows `serialLog` (which may not exist yet) until the guest reports, the deadline passes or `signal` aborts. */
export async function waitForGuestReady(
  serialLog: string,
  instanceId: string,
  options: WaitForGuestReadyOptions,
): Promise<GuestReadyOutcome> {
  const pollMs = options.pollMs ?? 20;
  let offset = 0;
  let partial = "";
  const decoder = new TextDecoder("utf-8");
  const chunk = Buffer.alloc(64 * 1024);
  for (;;) {
    // Read what is there before looking at the abort signal: a guest that reported and then exited still reported.
    const handle = await openIfPresent(serialLog);
    if (handle !== null) {
      try {
        for (;;) {
          const { bytesRead } = await handle.read(chunk, 0, chunk.length, offset);
          if (bytesRead === 0) break;
          offset += bytesRead;
          partial += decoder.decode(chunk.subarray(0, bytesRead), { stream: true });
          const lines = partial.split("\n");
          partial = lines.pop() ?? "";
          for (const line of lines) {
            const report = parseGuestReport(line, instanceId);
            if (report !== null) return report;
          }
        }
      } finally {
        await handle.close();
      }
    }
    if (options.signal?.aborted) return { kind: "aborted" };
    if (Date.now() >= options.deadline) return { kind: "timeout" };
    await sleep(Math.min(pollMs, Math.max(1, options.deadline - Date.now())));
  }
}

async function openIfPresent(path: string) {
  try {
    return await open(path, "r");
  } catch (e) {
    if (errnoCode(e) === "ENOENT") return null;
    throw e;
  }
}
