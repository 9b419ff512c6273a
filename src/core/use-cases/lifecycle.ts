// Instance lifecycle on the data plane: start, stop, destroy, exec, logs, stats, and noticing a VMM that died.
// Every operation asks the state machine first, runs under the tenant lock (so operations on one instance are
// serialised and quota checks see a consistent tenant), and undoes what it did when a later step fails.

import { failedPrecondition, invalid, MvmError, notFound } from "../errors.js";
import { withoutIdleMark } from "../idle-mark.js";
import { idViolations, instanceIdViolations } from "../ids.js";
import type { Condition, HypervisorKind, Instance, Tenant, WorkerPool } from "../model.js";
import { assertQuota, computeUsage } from "../quota.js";
import { planTransition } from "../state-machine.js";
import { netmask } from "../subnet.js";
import type { SecretFiles } from "../tenant-secrets.js";
import type {
  CgroupKey,
  CgroupLimits,
  CgroupUsage,
  Cgroups,
  ExecResult,
  GuestChannel,
  Network,
  SnapshotStore,
  TenantNetworkPlan,
  VmDisk,
  VmLaunchSpec,
  Vmm,
  VmmProcess,
  Volumes,
} from "../data-plane-ports.js";
import { audited } from "./audit-trail.js";
import { timestamp, type RecordDeps } from "./deps.js";
import type { InstanceKey } from "./instances.js";

/** Where a pool's built revisions live and where an instance keeps its files; computed by the composition root. */
export interface DataPlanePaths {
  revisionDir(tenantId: string, poolId: string, revision: string): string;
  instanceDir(tenantId: string, poolId: string, instanceId: string): string;
  tenantPrivateKey(tenantId: string): string;
  /** Where `destroy --keep-volumes` puts an instance's data disk. */
  keptDataDisk(tenantId: string, poolId: string, instanceId: string): string;
}

export interface DataPlaneDeps extends RecordDeps {
  /** The adapter for a hypervisor kind; the pool's `auto` is resolved by `chooseHypervisor`. */
  vmm(kind: HypervisorKind): Vmm;
  chooseHypervisor(pool: WorkerPool): Promise<HypervisorKind>;
  network: Network;
  cgroups: Cgroups;
  volumes: Volumes;
  /** Snapshot directories of sleeping instances (compression, hashes, meta file). */
  snapshots: SnapshotStore;
  guest: GuestChannel;
  paths: DataPlanePaths;
  cgroupLimits(pool: WorkerPool): CgroupLimits;
  metadataPort: number;
  bootTimeoutMs: number;
  stopTimeoutMs: number;
}

/** Fixed artifact names inside a revision directory (see docs/guest-contract.md). */
export const REVISION_FILES = { kernel: "vmlinux", initrd: "initramfs.cpio.gz", rootfs: "rootfs.ext4" } as const;

export function tenantNetworkPlan(tenant: Tenant, metadataPort: number): TenantNetworkPlan {
  return {
    tenantId: tenant.tenantId,
    netId: tenant.network.netId,
    bridgeName: tenant.network.bridgeName,
    gatewayIp: tenant.network.gatewayIp,
    subnet: tenant.network.ipv4Subnet,
    prefixLen: Number(tenant.network.ipv4Subnet.split("/")[1]),
    metadataPort,
  };
}

function keyViolations(key: InstanceKey) {
  return [
    ...idViolations(key.tenantId, "tenant_id"),
    ...idViolations(key.poolId, "pool_id"),
    ...instanceIdViolations(key.instanceId, "instance_id"),
  ];
}

export interface Loaded {
  tenant: Tenant;
  pool: WorkerPool;
  instance: Instance;
}

export async function load(deps: RecordDeps, key: InstanceKey): Promise<Loaded> {
  const violations = keyViolations(key);
  if (violations.length > 0) throw invalid(violations);
  const tenant = await deps.store.getTenant(key.tenantId);
  if (!tenant) throw notFound(`tenant ${key.tenantId}`);
  const pool = await deps.store.getPool(key.tenantId, key.poolId);
  if (!pool) throw notFound(`pool ${key.tenantId}/${key.poolId}`);
  const instance = await deps.store.getInstance(key.tenantId, key.poolId, key.instanceId);
  if (!instance) throw notFound(`instance ${key.tenantId}/${key.poolId}/${key.instanceId}`);
  return { tenant, pool, instance };
}

export function cgroupKey(i: Instance): CgroupKey {
  return { tenantId: i.tenantId, poolId: i.poolId, instanceId: i.instanceId };
}

export function setCondition(conditions: readonly Condition[], next: Omit<Condition, "lastTransitionAt">, at: string): Condition[] {
  const previous = conditions.find((c) => c.type === next.type);
  const changed = !previous || previous.status !== next.status;
  const merged: Condition = { ...next, lastTransitionAt: changed ? at : previous.lastTransitionAt };
  return [...conditions.filter((c) => c.type !== next.type), merged];
}

export function instanceFiles(paths: DataPlanePaths, i: Instance) {
  const dir = paths.instanceDir(i.tenantId, i.poolId, i.instanceId);
  return {
    dir,
    runDir: `${dir}/run`,
    serialLog: `${dir}/run/serial.log`,
    rootOverlay: `${dir}/volumes/root.qcow2`,
    /** The raw root disk of a Firecracker instance (Firecracker cannot read qcow2). */
    rootRaw: `${dir}/volumes/root.raw`,
    dataDisk: `${dir}/volumes/data.ext4`,
    dataPlaceholder: `${dir}/volumes/data-placeholder.raw`,
    secretsDisk: `${dir}/run/secrets.ext4`,
    /** The snapshot of a sleeping instance (SPEC §5 `snapshot/`); removed on wake, stop and destroy. */
    snapshotDir: `${dir}/snapshot`,
  };
}

/** Undo steps run newest first; a failing undo is remembered but does not stop the others. */
export class Rollback {
  private readonly steps: Array<{ what: string; undo: () => Promise<void> }> = [];

  add(what: string, undo: () => Promise<void>): void {
    this.steps.push({ what, undo });
  }

  async run(): Promise<string[]> {
    const failures: string[] = [];
    for (const step of this.steps.reverse()) {
      try {
        await step.undo();
      } catch (e) {
        failures.push(`${step.what}: ${(e as Error).message}`);
      }
    }
    return failures;
  }
}

export function withRollbackFailures(error: unknown, failures: string[]): unknown {
  if (failures.length === 0) return error;
  const message = `${(error as Error).message}; cleanup also failed: ${failures.join("; ")}`;
  return error instanceof MvmError ? new MvmError(error.kind, message, error.violations, { cause: error }) : new Error(message, { cause: error });
}

export function secretsFiles(
  tenant: Tenant,
  pool: WorkerPool,
  instance: Instance,
  revision: string,
  userSecrets: SecretFiles = {},
): Record<string, string | Uint8Array> {
  return {
    ...Object.fromEntries(Object.entries(userSecrets).map(([name, content]) => [`user-secrets/${name}`, content])),
    authorized_keys: `${tenant.sshPublicKey}\n`,
    "identity.json": `${JSON.stringify({
      instance_id: instance.instanceId,
      tenant_id: tenant.tenantId,
      pool_id: pool.poolId,
      revision,
      secrets_epoch: tenant.secretsEpoch,
    })}\n`,
  };
}

/** Cold boot: ready/stopped/created → running. Starting a running instance returns it unchanged. */
export async function startInstance(deps: DataPlaneDeps, key: InstanceKey): Promise<Instance> {
  return audited(deps, { tenantId: key.tenantId, action: "instance_start", target: `${key.tenantId}/${key.poolId}/${key.instanceId}` }, async () => {
    return deps.store.withTenantLock(key.tenantId, async () => {
      const { tenant, pool, instance } = await load(deps, key);
      const plan = planTransition(instance.status, "start");
      if (plan.kind === "noop") return instance;
      if (!pool.currentRevision) {
        throw failedPrecondition(`pool ${pool.tenantId}/${pool.poolId} has no built revision: run mvm pool build ${pool.tenantId}/${pool.poolId}`);
      }
      const pools = await deps.store.listPools(tenant.tenantId);
      const instances = (await Promise.all(pools.map((p) => deps.store.listInstances(tenant.tenantId, p.poolId)))).flat();
      assertQuota(tenant.tenantId, tenant.quotas, computeUsage(pools, instances), {
        kind: "start",
        vcpus: pool.resources.vcpus,
        memMib: pool.resources.memMib,
      });

      const hypervisor = await deps.chooseHypervisor(pool);
      const revision = pool.currentRevision;
      const revisionDir = deps.paths.revisionDir(tenant.tenantId, pool.poolId, revision);
      const netPlan = tenantNetworkPlan(tenant, deps.metadataPort);
      const rollback = new Rollback();
      try {
        // Network, cgroups and disks do not depend on each other: prepared side by side. Each undo is registered
        // before its step (the undos are idempotent), so a step that fails half way is cleaned up too.
        rollback.add("remove TAP", () => deps.network.removeTap(netPlan, instance.net.tapName));
        rollback.add("remove cgroup", () => deps.cgroups.remove(cgroupKey(instance)));
        const prepareNetwork = () =>
          deps.network.ensureInstanceNetwork(netPlan, { name: instance.net.tapName, mac: instance.net.mac, guestIp: instance.net.guestIp });
        const [network, cgroup, prepared] = await Promise.allSettled([
          prepareNetwork(),
          deps.cgroups.ensure(cgroupKey(instance), deps.cgroupLimits(pool)),
          instanceDisks(deps, { tenant, pool, instance, revision, hypervisor, root: "create" }),
        ]);
        for (const step of [network, cgroup, prepared]) if (step.status === "rejected") throw step.reason;
        const procsFiles = (cgroup as PromiseFulfilledResult<{ procsFiles: string[] }>).value.procsFiles;
        const disks = (prepared as PromiseFulfilledResult<VmDisk[]>).value;

        const vmm = deps.vmm(hypervisor);
        const process: VmmProcess = await vmm.boot(vmLaunchSpec(deps, pool, instance, revision, disks, procsFiles));
        rollback.add("stop VMM", () => vmm.shutdown(process, 0));

        const now = timestamp(deps.clock);
        const running: Instance = {
          ...instance,
          status: "running",
          revision,
          vmm: {
            hypervisor,
            pid: process.pid,
            pidStartTime: process.pidStartTime,
            apiSocket: process.apiSocket,
            netns: deps.network.netns,
          },
          conditions: setCondition(withoutIdleMark(instance.conditions), { type: "Ready", status: "true", reason: "GuestReady", message: "guest reported ready" }, now),
          healthy: true,
          lastHealthCheckAt: now,
          lastStartedAt: now,
          updatedAt: now,
        };
        await deps.store.putInstance(running);
        return running;
      } catch (error) {
        throw withRollbackFailures(error, await rollback.run());
      }
    });
  });
}

/**
 * The launch spec of `instance` running `revision`. A wake builds it the same way as the cold start did: QEMU restores
 * a migration stream only into the same machine, devices and ids.
 */
export function vmLaunchSpec(
  deps: DataPlaneDeps,
  pool: WorkerPool,
  instance: Instance,
  revision: string,
  disks: VmDisk[],
  procsFiles: string[],
): VmLaunchSpec {
  const revisionDir = deps.paths.revisionDir(instance.tenantId, pool.poolId, revision);
  return {
    instanceId: instance.instanceId,
    vcpus: pool.resources.vcpus,
    memMib: pool.resources.memMib,
    kernelPath: `${revisionDir}/${REVISION_FILES.kernel}`,
    initrdPath: `${revisionDir}/${REVISION_FILES.initrd}`,
    kernelArgs: [
      `ip=${instance.net.guestIp}::${instance.net.gatewayIp}:${netmask(instance.net.prefixLen)}::eth0:off`,
      `mvm.instance=${instance.instanceId}`,
    ],
    disks,
    tap: { name: instance.net.tapName, mac: instance.net.mac },
    runDir: instanceFiles(deps.paths, instance).runDir,
    netns: deps.network.netns,
    cgroupProcsFiles: procsFiles,
    bootTimeoutMs: deps.bootTimeoutMs,
    seccompPolicy: pool.seccompPolicy,
  };
}

/**
 * The disks of a launch in the fixed device order: root (a qcow2 overlay, or a raw copy for Firecracker, which reads
 * raw images only), data (or its placeholder), and a secrets disk rebuilt every time. `root: "keep"` is for a wake:
 * the root disk must be exactly the one the instance slept with, so it is not made again.
 */
export async function instanceDisks(
  deps: DataPlaneDeps,
  launch: { tenant: Tenant; pool: WorkerPool; instance: Instance; revision: string; hypervisor: HypervisorKind; root: "create" | "keep" },
): Promise<VmDisk[]> {
  const { tenant, pool, instance, revision, hypervisor } = launch;
  const files = instanceFiles(deps.paths, instance);
  const baseImage = `${deps.paths.revisionDir(instance.tenantId, pool.poolId, revision)}/${REVISION_FILES.rootfs}`;
  const disks: VmDisk[] = [];
  if (hypervisor === "firecracker") {
    if (launch.root === "create") await deps.volumes.createRootCopy(baseImage, files.rootRaw);
    disks.push({ role: "root", path: files.rootRaw, format: "raw", readOnly: false });
  } else {
    if (launch.root === "create") await deps.volumes.createRootOverlay(baseImage, files.rootOverlay);
    disks.push({ role: "root", path: files.rootOverlay, format: "qcow2", readOnly: false });
  }
  if (pool.resources.dataDiskMib > 0) {
    await deps.volumes.ensureDataDisk(files.dataDisk, pool.resources.dataDiskMib);
    disks.push({ role: "data", path: files.dataDisk, format: "raw", readOnly: false });
  } else {
    await deps.volumes.ensureDataDisk(files.dataPlaceholder, 0);
    disks.push({ role: "data", path: files.dataPlaceholder, format: "raw", readOnly: true });
  }
  const userSecrets = await deps.store.getTenantSecrets(tenant.tenantId);
  await deps.volumes.buildSecretsDisk(files.secretsDisk, secretsFiles(tenant, pool, instance, revision, userSecrets), {
    // The guest keeps the capacity it saw at boot across a restore.
    keepSize: launch.root === "keep",
  });
  disks.push({ role: "secrets", path: files.secretsDisk, format: "raw", readOnly: true });
  return disks;
}

/** Releases what a stopped instance no longer needs: VMM, TAP, cgroup, snapshot. Each step is idempotent. */
async function teardownRuntime(deps: DataPlaneDeps, tenant: Tenant, instance: Instance): Promise<void> {
  if (instance.vmm) {
    const vmm = deps.vmm(instance.vmm.hypervisor);
    const proc: VmmProcess = {
      hypervisor: instance.vmm.hypervisor,
      pid: instance.vmm.pid,
      pidStartTime: instance.vmm.pidStartTime,
      apiSocket: instance.vmm.apiSocket,
      serialLog: instanceFiles(deps.paths, instance).serialLog,
    };
    if (await vmm.isAlive(proc)) {
      // A clean poweroff from inside flushes the guest's filesystems; the VMM's own shutdown is the fallback.
      await deps.guest
        .exec(guestTarget(deps, instance), ["sh", "-c", "sync; poweroff"], { timeoutMs: 5_000 })
        .catch(() => undefined);
      await vmm.shutdown(proc, deps.stopTimeoutMs);
    }
  }
  const netPlan = tenantNetworkPlan(tenant, deps.metadataPort);
  await deps.network.removeTap(netPlan, instance.net.tapName);
  await deps.cgroups.remove(cgroupKey(instance));
  await deps.snapshots.remove(instanceFiles(deps.paths, instance).snapshotDir);
}

export function guestTarget(deps: DataPlaneDeps, instance: Instance) {
  return {
    guestIp: instance.net.guestIp,
    netns: instance.vmm?.netns ?? deps.network.netns,
    privateKeyPath: deps.paths.tenantPrivateKey(instance.tenantId),
    runDir: instanceFiles(deps.paths, instance).runDir,
  };
}

/** running/warm/sleeping → stopped: graceful shutdown, then kill after the timeout; TAP and cgroup released. */
export async function stopInstance(deps: DataPlaneDeps, key: InstanceKey): Promise<Instance> {
  return audited(deps, { tenantId: key.tenantId, action: "instance_stop", target: `${key.tenantId}/${key.poolId}/${key.instanceId}` }, async () => {
    return deps.store.withTenantLock(key.tenantId, async () => {
      const { tenant, instance } = await load(deps, key);
      const plan = planTransition(instance.status, "stop");
      if (plan.kind === "noop") return instance;
      await teardownRuntime(deps, tenant, instance);
      const now = timestamp(deps.clock);
      const stopped: Instance = {
        ...instance,
        status: "stopped",
        vmm: null,
        healthy: false,
        conditions: setCondition(withoutIdleMark(instance.conditions), { type: "Ready", status: "false", reason: "Stopped", message: "instance stopped" }, now),
        lastStoppedAt: now,
        updatedAt: now,
      };
      await deps.store.putInstance(stopped);
      return stopped;
    });
  });
}

export interface DestroyOptions {
  /** Keep the data disk (moved aside under the pool's `kept-volumes/`); default false. */
  keepVolumes?: boolean;
}

/** any → destroyed: stops the VMM if needed, releases TAP, cgroup, disks and the IP (the record goes). */
export async function destroyInstance(deps: DataPlaneDeps, key: InstanceKey, options: DestroyOptions = {}): Promise<Instance> {
  return audited(deps, { tenantId: key.tenantId, action: "instance_destroy", target: `${key.tenantId}/${key.poolId}/${key.instanceId}` }, async () => {
    return deps.store.withTenantLock(key.tenantId, async () => {
      const { tenant, instance } = await load(deps, key);
      planTransition(instance.status, "destroy");
      await teardownRuntime(deps, tenant, instance);
      if (options.keepVolumes && instance.status !== "created") {
        await deps.volumes.preserveDataDisk(
          instanceFiles(deps.paths, instance).dataDisk,
          deps.paths.keptDataDisk(instance.tenantId, instance.poolId, instance.instanceId),
        );
      }
      await deps.store.deleteInstance(key.tenantId, key.poolId, key.instanceId);
      return { ...instance, status: "destroyed", vmm: null, updatedAt: timestamp(deps.clock) };
    });
  });
}

/** Runs a command in a running guest over SSH with the tenant key. */
export async function execInInstance(
  deps: DataPlaneDeps,
  key: InstanceKey,
  argv: readonly string[],
  options: { timeoutMs: number; input?: string },
): Promise<ExecResult> {
  return audited(deps, { tenantId: key.tenantId, action: "instance_exec", target: `${key.tenantId}/${key.poolId}/${key.instanceId}`, details: { command: argv[0] ?? "" } }, async () => {
    if (argv.length === 0) throw invalid([{ field: "command", rule: "must name a program to run" }]);
    const { instance } = await load(deps, key);
    if (instance.status !== "running") {
      throw failedPrecondition(`instance ${key.instanceId} is ${instance.status}: exec needs a running instance`);
    }
    return deps.guest.exec(guestTarget(deps, instance), argv, options);
  });
}

export interface InstanceStats {
  instance: Instance;
  cgroup: CgroupUsage | null;
  cgroupLimits: CgroupLimits | null;
  tap: { rxBytes: number; txBytes: number } | null;
}

export async function instanceStats(deps: DataPlaneDeps, key: InstanceKey): Promise<InstanceStats> {
  const { instance } = await load(deps, key);
  const [cgroup, cgroupLimits, tap] = await Promise.all([
    deps.cgroups.usage(cgroupKey(instance)),
    deps.cgroups.limits(cgroupKey(instance)),
    deps.network.tapCounters(instance.net.tapName),
  ]);
  return { instance, cgroup, cgroupLimits, tap };
}

export async function instanceLogPath(deps: DataPlaneDeps, key: InstanceKey): Promise<string> {
  const { instance } = await load(deps, key);
  return instanceFiles(deps.paths, instance).serialLog;
}

/**
 * Health: an instance recorded as running or warm whose VMM (pid + start time) is gone is marked stopped, with a
 * condition saying so, and its TAP and cgroup are released. Returns the (possibly updated) record.
 */
export async function refreshInstanceHealth(deps: DataPlaneDeps, key: InstanceKey): Promise<Instance> {
  return deps.store.withTenantLock(key.tenantId, async () => {
    const { tenant, instance } = await load(deps, key);
    if ((instance.status !== "running" && instance.status !== "warm") || !instance.vmm) return instance;
    const vmm = deps.vmm(instance.vmm.hypervisor);
    const alive = await vmm.isAlive({
      hypervisor: instance.vmm.hypervisor,
      pid: instance.vmm.pid,
      pidStartTime: instance.vmm.pidStartTime,
      apiSocket: instance.vmm.apiSocket,
      serialLog: instanceFiles(deps.paths, instance).serialLog,
    });
    const now = timestamp(deps.clock);
    if (alive) {
      const checked = { ...instance, lastHealthCheckAt: now };
      await deps.store.putInstance(checked);
      return checked;
    }
    await teardownRuntime(deps, tenant, { ...instance, vmm: null });
    const stopped: Instance = {
      ...instance,
      status: "stopped",
      vmm: null,
      healthy: false,
      conditions: setCondition(
        withoutIdleMark(instance.conditions),
        { type: "Ready", status: "false", reason: "VmmExited", message: `VMM process ${instance.vmm.pid} exited without a stop` },
        now,
      ),
      lastStoppedAt: now,
      lastHealthCheckAt: now,
      updatedAt: now,
    };
    await deps.store.putInstance(stopped);
    return stopped;
  });
}
