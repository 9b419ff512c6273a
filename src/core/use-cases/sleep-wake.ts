// PLACEHOLDER signatures (issue 6, being written in this session): warm, resume, sleep and wake of one instance.
// Other use cases (reconcile, the idle policy) call these; the bodies are being written now.

import { MvmError } from "../errors.js";
import type { Compression, Instance } from "../model.js";
import type { InstanceKey } from "./instances.js";
import type { DataPlaneDeps } from "./lifecycle.js";

export interface SleepOptions {
  /** Overrides the pool's snapshot_compression. */
  compression?: Compression;
}

function notYet(op: string): never {
  throw new MvmError("unavailable", `${op}: not implemented yet`, []);
}

/** running → warm (VM paused, process kept). A warm instance returns unchanged. */
export async function warmInstance(_deps: DataPlaneDeps, _key: InstanceKey): Promise<Instance> {
  return notYet("warm");
}

/** warm → running. */
export async function resumeInstance(_deps: DataPlaneDeps, _key: InstanceKey): Promise<Instance> {
  return notYet("resume");
}

/** running/warm → sleeping (snapshot on disk, VMM gone, TAP/IP/cgroup reservations kept). */
export async function sleepInstance(_deps: DataPlaneDeps, _key: InstanceKey, _options: SleepOptions = {}): Promise<Instance> {
  return notYet("sleep");
}

/** sleeping → running (restored from the snapshot, guest wake hook run). */
export async function wakeInstance(_deps: DataPlaneDeps, _key: InstanceKey): Promise<Instance> {
  return notYet("wake");
}
