// Warm, resume, sleep and wake of one instance (SPEC §3, §7). Like the cold start in lifecycle.ts, each operation
// asks the state machine first, runs under the tenant lock and undoes what it did when a later step fails. An
// instance that fails to sleep stays running (or warm); one that fails to wake before its guest runs again stays
// sleeping with its snapshot untouched, so the operation can be retried. Once the guest has run, the snapshot is
// gone either way: a guest that then does not answer its wake hook keeps running, with Ready false, until a later
// try of the hook gets an answer (retryWakeHook; the agent's schedule of tries is in wake-hook-retry.ts).

import { withoutIdleMark } from "../idle-mark.js";
import { failedPrecondition, MvmError } from "../errors.js";
import type { Compression, Instance, Tenant } from "../model.js";
import { assertQuota, computeUsage, type QuotaRequest } from "../quota.js";
import { planTransition } from "../state-machine.js";
import { GUEST_HOOK_PATHS, type HostCompatibility, type OpenedSnapshot, type SetAsideSnapshot, type SnapshotMeta, type VmDisk, type Vmm, type VmmProcess } from "../data-plane-ports.js";
import type { OperationPhase } from "../observability-ports.js";
import { audited } from "./audit-trail.js";
import { timestamp } from "./deps.js";
import type { InstanceKey } from "./instances.js";
import {
  cgroupKey,
  guestTarget,
  instanceDisks,
  instanceFiles,
  load,
  Rollback,
  setCondition,
  tenantNetworkPlan,
  vmLaunchSpec,
  withRollbackFailures,
  type DataPlaneDeps,
} from "./lifecycle.js";

/** Guest hooks of the default image (docs/guest-contract.md). */
export const GUEST_HOOKS = {
  sleepPrep: GUEST_HOOK_PATHS["sleep-prep"],
  wake: GUEST_HOOK_PATHS.wake,
} as const;

export const DEFAULT_SLEEP_PREP_TIMEOUT_MS = 10_000;
export const DEFAULT_WAKE_READY_TIMEOUT_MS = 30_000;
/** How long a resume waits for the guest's wake hook (its clock) before it reports the instance running anyway, ms. */
export const DEFAULT_RESUME_HOOK_TIMEOUT_MS = 5_000;
/** Pause between attempts to reach a restored guest whose SSH server does not answer yet, ms. */
const WAKE_RETRY_MS = 200;
/** Ready false with this reason: the VM runs again after a wake, but its guest has not answered the wake hook. */
export const WAKE_HOOK_FAILED = "WakeHookFailed";

export interface SleepOptions {
  /** Overrides the pool's snapshot_compression. */
  compression?: Compression;
  /** How long the guest's sleep-prep hook may take, ms; when it runs out the snapshot is taken anyway. */
  prepTimeoutMs?: number;
}

export interface WakeOptions {
  /** How long the restored guest has to answer (its wake hook to finish), ms. */
  readyTimeoutMs?: number;
}

function target(key: InstanceKey): string {
  return `${key.tenantId}/${key.poolId}/${key.instanceId}`;
}

export function processOf(deps: DataPlaneDeps, instance: Instance): VmmProcess | null {
  if (!instance.vmm) return null;
  return {
    hypervisor: instance.vmm.hypervisor,
    pid: instance.vmm.pid,
    pidStartTime: instance.vmm.pidStartTime,
    apiSocket: instance.vmm.apiSocket,
    serialLog: instanceFiles(deps.paths, instance).serialLog,
  };
}

/** The instance's VMM, which must still run: a record that outlived its process is repaired by a health refresh. */
async function liveProcess(deps: DataPlaneDeps, instance: Instance, op: string): Promise<{ vmm: Vmm; process: VmmProcess }> {
  const process = processOf(deps, instance);
  const vmm = process ? deps.vmm(process.hypervisor) : null;
  if (!process || !vmm || !(await vmm.isAlive(process))) {
    throw failedPrecondition(
      `instance ${instance.instanceId} is ${instance.status} but its vmm is not running: ${op} needs a live vmm (stop it, then start it)`,
    );
  }
  return { vmm, process };
}

async function checkQuota(deps: DataPlaneDeps, tenant: Tenant, request: QuotaRequest): Promise<void> {
  const pools = await deps.store.listPools(tenant.tenantId);
  const instances = (await Promise.all(pools.map((p) => deps.store.listInstances(tenant.tenantId, p.poolId)))).flat();
  assertQuota(tenant.tenantId, tenant.quotas, computeUsage(pools, instances), request);
}

/** Where the stamp of a snapshot differs from this host's, one entry per field; empty when it may be restored. */
export function hostCompatibilityProblems(recorded: HostCompatibility, here: HostCompatibility): string[] {
  const fields: Array<[keyof HostCompatibility, string]> = [
    ["cpuModel", "cpu_model"],
    ["hostKernel", "host_kernel"],
    ["vmmVersion", "vmm_version"],
  ];
  return fields
    .filter(([field]) => recorded[field] !== here[field])
    .map(([field, name]) => `${name} was ${JSON.stringify(recorded[field])}, this host has ${JSON.stringify(here[field])}`);
}

/** running → warm (VM paused, process kept). A warm instance returns unchanged. */
export async function warmInstance(deps: DataPlaneDeps, key: InstanceKey): Promise<Instance> {
  return audited(deps, { tenantId: key.tenantId, action: "instance_warm", target: target(key) }, async () => {
    return deps.store.withTenantLock(key.tenantId, async () => {
      const { tenant, instance } = await load(deps, key);
      if (planTransition(instance.status, "warm").kind === "noop") return instance;
      await checkQuota(deps, tenant, { kind: "warm" });
      const { vmm, process } = await liveProcess(deps, instance, "warm");
      await vmm.pause(process);
      try {
        const now = timestamp(deps.clock);
        const warm: Instance = {
          ...instance,
          status: "warm",
          conditions: setCondition(instance.conditions, { type: "Ready", status: "false", reason: "Paused", message: "vcpus paused (warm)" }, now),
          updatedAt: now,
        };
        await deps.store.putInstance(warm);
        return warm;
      } catch (error) {
        throw withRollbackFailures(error, await undo("resume VM", () => vmm.resume(process)));
      }
    });
  });
}

export interface ResumeOptions {
  /** How long the guest's wake hook may take after the vCPUs run again, ms. */
  hookTimeoutMs?: number;
}

/**
 * warm → running. A running instance returns unchanged. The guest's clock stood still while its vCPUs were paused
 * (QEMU and Firecracker both stop the guest's clock with them), so the guest's wake hook runs with the host's time,
 * as after a wake. The VM was never stopped, so a hook that fails does not undo the resume: the instance runs, and its
 * Ready condition says the clock was not set.
 */
export async function resumeInstance(deps: DataPlaneDeps, key: InstanceKey, options: ResumeOptions = {}): Promise<Instance> {
  return audited(deps, { tenantId: key.tenantId, action: "instance_resume", target: target(key) }, async () => {
    return deps.store.withTenantLock(key.tenantId, async () => {
      const { tenant, pool, instance } = await load(deps, key);
      if (planTransition(instance.status, "resume").kind === "noop") return instance;
      await checkQuota(deps, tenant, { kind: "resume", vcpus: pool.resources.vcpus, memMib: pool.resources.memMib });
      const { vmm, process } = await liveProcess(deps, instance, "resume");
      await vmm.resume(process);
      try {
        const hook = await runResumeHook(deps, { ...instance, status: "running" }, options.hookTimeoutMs ?? DEFAULT_RESUME_HOOK_TIMEOUT_MS);
        const now = timestamp(deps.clock);
        const running: Instance = {
          ...instance,
          status: "running",
          conditions: setCondition(withoutIdleMark(instance.conditions), { type: "Ready", status: "true", reason: "Resumed", message: `vcpus resumed; ${hook}` }, now),
          updatedAt: now,
        };
        await deps.store.putInstance(running);
        return running;
      } catch (error) {
        throw withRollbackFailures(error, await undo("pause VM again", () => vmm.pause(process)));
      }
    });
  });
}

/** Runs the wake hook after a resume; says what became of the guest's clock, for the Ready condition. */
async function runResumeHook(deps: DataPlaneDeps, instance: Instance, timeoutMs: number): Promise<string> {
  try {
    await runWakeHook(deps, instance, timeoutMs);
    return "guest clock set from the host";
  } catch (e) {
    return `guest clock not set: ${(e as Error).message.slice(0, 200)}`;
  }
}

async function undo(what: string, step: () => Promise<void>): Promise<string[]> {
  const rollback = new Rollback();
  rollback.add(what, step);
  return rollback.run();
}

/**
 * running/warm → sleeping: the guest's sleep-prep hook runs while the guest still runs (a warm VM is resumed for it),
 * then the VM is paused, snapshotted into the instance's snapshot directory, compressed and hashed, and the VMM exits.
 * TAP, IP and cgroup stay reserved. A sleeping instance returns unchanged.
 */
export async function sleepInstance(deps: DataPlaneDeps, key: InstanceKey, options: SleepOptions = {}): Promise<Instance> {
  return audited(deps, { tenantId: key.tenantId, action: "instance_sleep", target: target(key) }, async () => {
    return deps.store.withTenantLock(key.tenantId, async () => {
      const { pool, instance } = await load(deps, key);
      if (planTransition(instance.status, "sleep").kind === "noop") return instance;
      const compression = options.compression ?? pool.snapshotCompression;
      const { vmm, process } = await liveProcess(deps, instance, "sleep");
      const caps = await vmm.capabilities();
      const host = await deps.snapshots.hostStamp(caps.version ?? "");
      const dir = instanceFiles(deps.paths, instance).snapshotDir;
      const wasWarm = instance.status === "warm";
      const rollback = new Rollback();
      try {
        if (wasWarm) {
          await vmm.resume(process);
          rollback.add("pause VM again", () => vmm.pause(process));
        }
        const prep = await runSleepPrep(deps, instance, options.prepTimeoutMs ?? DEFAULT_SLEEP_PREP_TIMEOUT_MS);
        await vmm.pause(process);
        // Undos run newest first: on failure a VM that was running runs again, one that was warm ends paused.
        if (!wasWarm) rollback.add("resume VM", () => vmm.resume(process));
        rollback.add("remove snapshot", () => deps.snapshots.remove(dir));
        await deps.snapshots.create(dir);
        const files = await vmm.snapshot(process, dir, "full");
        const now = timestamp(deps.clock);
        const meta = await deps.snapshots.seal(dir, files, {
          hypervisor: process.hypervisor,
          revision: instance.revision,
          memMib: pool.resources.memMib,
          compression,
          createdAt: now,
          host,
        });
        await vmm.shutdown(process, 0);

        const sleeping: Instance = {
          ...instance,
          status: "sleeping",
          vmm: null,
          healthy: false,
          conditions: setCondition(
            setCondition(instance.conditions, { type: "Ready", status: "false", reason: "Sleeping", message: `snapshot of ${meta.uncompressedSizeBytes} bytes on disk` }, now),
            { type: "SleepPrepared", status: prep.ok ? "true" : "false", reason: prep.ok ? "HookSucceeded" : "HookFailed", message: prep.detail },
            now,
          ),
          lastSnapshotAt: now,
          updatedAt: now,
        };
        await deps.store.putInstance(sleeping);
        return sleeping;
      } catch (error) {
        throw withRollbackFailures(error, await rollback.run());
      }
    });
  });
}

/** A failing or slow hook does not stop the sleep (SleepInstanceRequest: "the snapshot is taken anyway"). */
async function runSleepPrep(deps: DataPlaneDeps, instance: Instance, timeoutMs: number): Promise<{ ok: boolean; detail: string }> {
  try {
    const result = await deps.guest.runHook(guestTarget(deps, instance), "sleep-prep", [], { timeoutMs });
    if (result.exitCode === 0) return { ok: true, detail: "sleep-prep hook succeeded" };
    return { ok: false, detail: `sleep-prep hook exited ${result.exitCode}: ${result.stderr.trim().slice(0, 200)}` };
  } catch (e) {
    return { ok: false, detail: `sleep-prep hook did not run: ${(e as Error).message.slice(0, 200)}` };
  }
}

/** The snapshot meta of a sleeping instance; null when the instance is not sleeping or has none. */
export async function instanceSnapshot(deps: DataPlaneDeps, key: InstanceKey): Promise<SnapshotMeta | null> {
  const { instance } = await load(deps, key);
  if (instance.status !== "sleeping") return null;
  return deps.snapshots.readMeta(instanceFiles(deps.paths, instance).snapshotDir);
}

/**
 * sleeping → running: quota, snapshot hash and host stamp are checked before anything starts; then network, cgroup
 * and a fresh secrets disk are ensured, a new VMM restores the snapshot and resumes, and the guest's wake hook (clock,
 * secrets) runs. The instance is running (Ready) once that hook answers. The snapshot is removed once the guest has
 * run, answered or not; a guest that does not answer within the timeout keeps running with Ready false, and the wake
 * fails with Unavailable saying so. While the hash is checked, the VMM's launcher may already wait in the new cgroup
 * (Vmm.prepareRestore): it runs nothing until then.
 */
export async function wakeInstance(deps: DataPlaneDeps, key: InstanceKey, options: WakeOptions = {}): Promise<Instance> {
  // A wake whose guest did not answer left the VM running: waking it again asks the guest once more.
  const found = await deps.store.getInstance(key.tenantId, key.poolId, key.instanceId);
  if (found !== null && awaitsWakeHook(found)) return retryWakeHook(deps, key, { timeoutMs: options.readyTimeoutMs ?? DEFAULT_WAKE_READY_TIMEOUT_MS });
  const spent: { snapshot?: SetAsideSnapshot } = {};
  try {
    return await audited(deps, { tenantId: key.tenantId, action: "instance_wake", target: target(key) }, () =>
      wakeLocked(deps, key, options, (snapshot) => (spent.snapshot = snapshot)),
    );
  } finally {
    // Freed only once the record and the audit entry are durable: freeing a memory-sized file goes into the next
    // journal commit (with `-o discard`, trims too), which their fsyncs would otherwise wait for (~10 ms here).
    void spent.snapshot?.purge().catch(() => undefined);
  }
}

async function wakeLocked(deps: DataPlaneDeps, key: InstanceKey, options: WakeOptions, spent: (snapshot: SetAsideSnapshot) => void): Promise<Instance> {
  return deps.store.withTenantLock(key.tenantId, async () => {
    const startedMs = deps.clock.nowMs();
    const { tenant, pool, instance } = await load(deps, key);
    if (planTransition(instance.status, "wake").kind === "noop") return instance;
    const files = instanceFiles(deps.paths, instance);
    const meta = await deps.snapshots.readMeta(files.snapshotDir);
    if (!meta) {
      throw failedPrecondition(
        `instance ${instance.instanceId} is sleeping but has no snapshot in ${files.snapshotDir}: stop it and start it again (cold boot)`,
      );
    }
    await checkQuota(deps, tenant, { kind: "wake", vcpus: pool.resources.vcpus, memMib: pool.resources.memMib });
    if (meta.memMib !== pool.resources.memMib) {
      throw failedPrecondition(
        `snapshot of ${instance.instanceId} holds ${meta.memMib} MiB of guest memory but pool ${pool.poolId} now has mem_mib ${pool.resources.memMib}: stop the instance and start it again`,
      );
    }
    const vmm = deps.vmm(meta.hypervisor);
    const caps = await vmm.capabilities();
    if (!caps.available) throw new MvmError("unavailable", `${meta.hypervisor} is not available on this node: ${caps.notes.join("; ")}`);
    const problems = hostCompatibilityProblems(meta.host, await deps.snapshots.hostStamp(caps.version ?? ""));
    if (problems.length > 0) {
      throw failedPrecondition(`snapshot of ${instance.instanceId} does not fit this host (${problems.join("; ")}): stop the instance and start it again`);
    }

    // TAP and cgroup are reservations a sleeping instance keeps, so a failed wake leaves them in place. The
    // snapshot's hash is checked side by side with preparing them, but always before a VMM starts.
    const rollback = new Rollback();
    let woken: { instance: Instance; unanswered: MvmError | null; phases: Array<Pick<OperationPhase, "phase" | "durationMs">> };
    try {
      const netPlan = tenantNetworkPlan(tenant, deps.metadataPort);
      const prepareNetwork = () =>
        deps.network.ensureInstanceNetwork(netPlan, { name: instance.net.tapName, mac: instance.net.mac, guestIp: instance.net.guestIp });
      rollback.add("end the prepared launcher", () => vmm.discardPrepared?.(files.runDir) ?? Promise.resolve());
      const [snapshot, network, cgroup, prepared] = await Promise.allSettled([
        deps.snapshots.open(files.snapshotDir, meta),
        prepareNetwork(),
        // Once the cgroup exists the VMM's launcher can wait in it while the hash is checked (it runs nothing before
        // the restore); without it the restore simply starts one.
        deps.cgroups.ensure(cgroupKey(instance), deps.cgroupLimits(pool)).then(async (placed) => {
          await vmm.prepareRestore?.({ runDir: files.runDir, cgroupProcsFiles: placed.procsFiles }).catch(() => undefined);
          return placed;
        }),
        // The disks exactly as the instance slept with them (root and data kept), plus a fresh secrets disk.
        instanceDisks(deps, { tenant, pool, instance, revision: meta.revision, hypervisor: meta.hypervisor, root: "keep" }),
      ]);
      if (snapshot.status === "fulfilled") rollback.add("release opened snapshot", () => snapshot.value.release());
      for (const step of [snapshot, network, cgroup, prepared]) if (step.status === "rejected") throw step.reason;
      const opened = (snapshot as PromiseFulfilledResult<OpenedSnapshot>).value;
      const procsFiles = (cgroup as PromiseFulfilledResult<{ procsFiles: string[] }>).value.procsFiles;
      const disks = (prepared as PromiseFulfilledResult<VmDisk[]>).value;

      const preparedMs = deps.clock.nowMs();
      const process = await vmm.restore(vmLaunchSpec(deps, pool, instance, meta.revision, disks, procsFiles), opened.files);
      const restoredMs = deps.clock.nowMs();
      rollback.add("stop VMM", () => vmm.shutdown(process, 0));
      const running: Instance = {
        ...instance,
        status: "running",
        revision: meta.revision,
        vmm: { hypervisor: process.hypervisor, pid: process.pid, pidStartTime: process.pidStartTime, apiSocket: process.apiSocket, netns: deps.network.netns },
      };
      const hookFailure = await runWakeHook(deps, running, options.readyTimeoutMs ?? DEFAULT_WAKE_READY_TIMEOUT_MS).then(
        () => null,
        (e: unknown) => (e instanceof Error ? e : new Error(String(e))),
      );
      const answeredMs = deps.clock.nowMs();
      // The guest has run, answered or not: its disks no longer match the snapshot, which must never be restored
      // again, whatever happens next (a failed record write below included). A decompressed copy made for the
      // restore lies in the snapshot's directory and goes with it.
      await deps.snapshots
        .setAside(files.snapshotDir)
        .then(spent)
        .catch(() => opened.release().catch(() => undefined));

      const now = timestamp(deps.clock);
      const ready =
        hookFailure === null
          ? ({ type: "Ready", status: "true", reason: "Woken", message: "restored from snapshot; guest answered" } as const)
          : ({
              type: "Ready",
              status: "false",
              reason: "WakeHookFailed",
              message: `restored from snapshot, but the guest did not answer its wake hook: ${hookFailure.message}`,
            } as const);
      const awake: Instance = {
        ...running,
        conditions: setCondition(withoutIdleMark(instance.conditions), ready, now),
        healthy: hookFailure === null,
        lastHealthCheckAt: now,
        updatedAt: now,
      };
      await deps.store.putInstance(awake);
      // A guest that ran but did not answer keeps running: stopping it would lose its memory, and putting it back to
      // sleep on a snapshot its disks have outgrown could corrupt them at the next wake.
      const unanswered =
        hookFailure === null
          ? null
          : new MvmError(
              "unavailable",
              `${hookFailure.message}; instance ${instance.instanceId} is running again (Ready false) and its snapshot, which no longer matched its disks, is gone: look into the guest or stop the instance`,
              [],
              { cause: hookFailure },
            );
      woken = {
        instance: awake,
        unanswered,
        phases: [
          { phase: "prepare", durationMs: preparedMs - startedMs },
          { phase: "restore", durationMs: restoredMs - preparedMs },
          { phase: "guest", durationMs: answeredMs - restoredMs },
        ],
      };
    } catch (error) {
      throw withRollbackFailures(error, await rollback.run());
    }
    if (woken.unanswered !== null) throw woken.unanswered;
    const hypervisor = woken.instance.vmm?.hypervisor ?? meta.hypervisor;
    for (const p of woken.phases) deps.operations?.phase?.({ action: "instance_wake", target: target(key), hypervisor, ...p });
    return woken.instance;
  });
}

/** Whether `instance` runs again after a wake whose hook its guest has not answered (yet). */
export function awaitsWakeHook(instance: Instance): boolean {
  const ready = instance.conditions.find((c) => c.type === "Ready");
  return instance.status === "running" && instance.vmm !== null && ready?.status === "false" && ready.reason === WAKE_HOOK_FAILED;
}

export interface WakeHookRetryOptions {
  /** How long the guest has to answer this time, ms. */
  timeoutMs: number;
}

/**
 * Runs the wake hook once more for an instance whose guest did not answer it at its wake (a guest too busy then, a
 * hook mended since); when the guest answers, the instance is Ready again. An instance in any other state is
 * returned as it is. The hook runs outside the tenant lock, so a guest that still does not answer holds up none of
 * the tenant's other operations; the record is written only if it still describes the same VM, still waiting.
 */
export async function retryWakeHook(deps: DataPlaneDeps, key: InstanceKey, options: WakeHookRetryOptions): Promise<Instance> {
  const { instance } = await load(deps, key);
  if (!awaitsWakeHook(instance)) return instance;
  return audited(deps, { tenantId: key.tenantId, action: "instance_wake", target: target(key), details: { retry: "wake_hook" } }, async () => {
    await liveProcess(deps, instance, "asking its guest again");
    try {
      await runWakeHook(deps, instance, options.timeoutMs);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      throw new MvmError("unavailable", `${why}; instance ${instance.instanceId} runs on with Ready false: look into the guest or stop the instance`, [], { cause: e });
    }
    return deps.store.withTenantLock(key.tenantId, async () => {
      const { instance: current } = await load(deps, key);
      if (!awaitsWakeHook(current) || !sameVmm(current, instance)) return current;
      const now = timestamp(deps.clock);
      const answered: Instance = {
        ...current,
        conditions: setCondition(current.conditions, { type: "Ready", status: "true", reason: "Woken", message: "restored from snapshot; guest answered its wake hook on a later try" }, now),
        healthy: true,
        lastHealthCheckAt: now,
        updatedAt: now,
      };
      await deps.store.putInstance(answered);
      return answered;
    });
  });
}

/** Whether two records of an instance describe the same VMM process. */
export function sameVmm(a: Instance, b: Instance): boolean {
  return a.vmm !== null && b.vmm !== null && a.vmm.pid === b.vmm.pid && a.vmm.pidStartTime === b.vmm.pidStartTime;
}

/**
 * Runs the guest's wake hook with the host's time (whole seconds since the epoch), retrying while the guest cannot
 * be reached yet; the guest "answers" when the hook exits 0.
 */
async function runWakeHook(deps: DataPlaneDeps, instance: Instance, timeoutMs: number): Promise<void> {
  const deadline = deps.clock.nowMs() + timeoutMs;
  let lastError = "";
  for (;;) {
    const remaining = deadline - deps.clock.nowMs();
    if (remaining <= 0) break;
    const hostSeconds = String(Math.floor(deps.clock.nowMs() / 1000));
    try {
      const result = await deps.guest.runHook(guestTarget(deps, instance), "wake", [hostSeconds], { timeoutMs: remaining });
      if (result.exitCode === 0) return;
      throw new MvmError("unavailable", `wake hook in ${instance.instanceId} exited ${result.exitCode}: ${result.stderr.trim().slice(0, 300)}`);
    } catch (e) {
      if (e instanceof MvmError) throw e;
      lastError = (e as Error).message;
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(WAKE_RETRY_MS, Math.max(0, deadline - deps.clock.nowMs()))));
  }
  throw new MvmError("unavailable", `restored guest ${instance.instanceId} did not answer within ${timeoutMs} ms${lastError ? `: ${lastError}` : ""}`);
}
