// Wires the real adapters of one node into a NodeRuntime: the store, audit log, watch hub, hypervisor, network,
// cgroups, disks, image builder and guest channel. Used by `mvm agent serve` and by the CLI when it acts in-process.

import { join } from "node:path";
import { failedPrecondition, invalid } from "../core/errors.js";
import type { HypervisorKind, WorkerPool } from "../core/model.js";
import { observeInstanceWrites } from "../core/observed-store.js";
import type { InstanceEventSink } from "../core/observability-ports.js";
import { DEFAULT_NETWORK_POOL, DEFAULT_TENANT_PREFIX } from "../core/subnet.js";
import type { AuditActor, AuditEntry, OperationObserver } from "../core/observability-ports.js";
import { FsAuditLog } from "../runtime/audit/fs-audit-log.js";
import { cgroupLimitsFor } from "../runtime/cgroups/cgroup-limits.js";
import { PARENT_RULE, parentViolations } from "../runtime/cgroups/cgroup-files.js";
import { createCgroups, DEFAULT_CGROUP_PARENT } from "../runtime/cgroups/linux-cgroups.js";
import { createDebianImageBuilder } from "../runtime/images/debian-image-builder.js";
import { createRevisionFiles } from "../runtime/images/revision-files.js";
import { createCommandHelperRunner } from "../runtime/exec/command-helper.js";
import { createLinuxNetwork } from "../runtime/network/linux-network.js";
import { createQemuVmm } from "../runtime/qemu/qemu-vmm.js";
import { createFirecrackerVmm } from "../runtime/firecracker/firecracker-vmm.js";
import type { VmmCapabilities } from "../core/data-plane-ports.js";
import { createFsSnapshotStore } from "../runtime/snapshots/fs-snapshot-store.js";
import { createEd25519KeyGenerator } from "../runtime/ssh/ed25519-key-generator.js";
import { createSshGuestChannel } from "../runtime/ssh/ssh-guest-channel.js";
import { withControlPort } from "../runtime/qemu/control-port.js";
import { resolveDataRoot } from "../runtime/store/data-root.js";
import { FsStore } from "../runtime/store/fs-store.js";
import { createRandomIds } from "../runtime/system/random-ids.js";
import { createSystemClock } from "../runtime/system/system-clock.js";
import { createLinuxVolumes } from "../runtime/volumes/linux-volumes.js";
import type { NodeRuntime } from "./node-runtime-types.js";

export const METADATA_PORT = 8169;
/** Cold boot under software emulation takes seconds; KVM hosts can lower it with MVM_BOOT_TIMEOUT_MS. */
const DEFAULT_BOOT_TIMEOUT_MS = 120_000;
const DEFAULT_STOP_TIMEOUT_MS = 10_000;

export interface NodeRuntimeOptions {
  dataDir?: string;
  env: NodeJS.ProcessEnv;
  /** Network namespace of the data plane; default `$MVM_NETNS`, else none. */
  netns?: string | null;
  actor: AuditActor;
  /** Receives every instance write (the agent's watch hub); default: nobody. */
  events?: InstanceEventSink;
  onBrokenRecord?: (path: string, reason: string) => void;
  /** Told how long each audited operation took (the agent's metrics); default: nobody. */
  operations?: OperationObserver;
  /** Called after every audit entry is written (the agent counts them in its metrics). */
  onAuditEntry?: (entry: AuditEntry) => void;
}

/**
 * The group all instance cgroups nest under, `$MVM_CGROUP_PARENT` (default `mvm`): one directory name below the
 * cgroup root, such as a slice an operator made for mvm, or one per test run so that its groups can be removed.
 */
export function cgroupParentFromEnv(env: NodeJS.ProcessEnv): string {
  const parent = env.MVM_CGROUP_PARENT || DEFAULT_CGROUP_PARENT;
  if (parentViolations(parent).length > 0) throw invalid([{ field: "MVM_CGROUP_PARENT", rule: PARENT_RULE }]);
  return parent;
}

function positiveIntegerFromEnv(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const value = Number(env[name]);
  return Number.isInteger(value) && value > 0 ? value : fallback;
}

export async function openNodeRuntime(options: NodeRuntimeOptions): Promise<NodeRuntime> {
  const { env } = options;
  // Checked before anything is opened or made: a bad value changes nothing.
  const cgroupParent = cgroupParentFromEnv(env);
  const dataRoot = resolveDataRoot({ dataDir: options.dataDir, env, uid: process.getuid?.() });
  const events: InstanceEventSink = options.events ?? { publish: () => undefined };
  const fsStore = await FsStore.open(dataRoot, {
    onBroken: (b) => options.onBrokenRecord?.(b.path, b.reason),
  });
  const store = observeInstanceWrites(fsStore, events);
  const netns = options.netns !== undefined ? options.netns : (env.MVM_NETNS || null);
  // ip, nft and sysctl start from a small helper shell rather than from the agent (see command-helper.ts).
  const hostCommands = createCommandHelperRunner();
  const qemu = createQemuVmm({});
  const firecracker = createFirecrackerVmm({
    // Jailed when MVM_FIRECRACKER_JAILER is set: jails live under the data root, so resources can be hard-linked.
    jailer: env.MVM_FIRECRACKER_JAILER ? { chrootBaseDir: join(dataRoot, "jailer") } : null,
    diffSnapshots: env.MVM_FIRECRACKER_DIFF_SNAPSHOTS === "1",
    seccomp: { filterBpf: env.MVM_SECCOMP_FILTER_BPF || null, filterJson: env.MVM_SECCOMP_FILTER_JSON || null },
  });
  // Probed once per runtime: the probe boots a tiny guest, and what the host can do does not change while it runs.
  let firecrackerCaps: Promise<VmmCapabilities> | null = null;
  const firecrackerUsable = async (): Promise<VmmCapabilities> => {
    firecrackerCaps ??= firecracker.capabilities();
    return firecrackerCaps;
  };
  const poolDir = (tenantId: string, poolId: string) => join(dataRoot, "tenants", tenantId, "pools", poolId);

  return {
    store,
    clock: createSystemClock(),
    ids: createRandomIds(),
    keys: createEd25519KeyGenerator(),
    networkPool: { cidr: env.MVM_NETWORK_POOL ?? DEFAULT_NETWORK_POOL, prefixLen: DEFAULT_TENANT_PREFIX },
    audit: new FsAuditLog(dataRoot, options.onAuditEntry ? { onAppend: options.onAuditEntry } : {}),
    actor: options.actor,
    operations: options.operations,
    events,
    vmm(kind: HypervisorKind) {
      return kind === "qemu" ? qemu : firecracker;
    },
    async chooseHypervisor(pool: WorkerPool): Promise<HypervisorKind> {
      if (pool.hypervisor === "qemu") return "qemu";
      const caps = await firecrackerUsable();
      const usable = caps.available && caps.kvmUsable;
      if (pool.hypervisor === "firecracker" && !usable) {
        throw failedPrecondition(
          `pool ${pool.tenantId}/${pool.poolId} asks for firecracker, which this node cannot run (${caps.notes.join("; ")}): see mvm doctor`,
        );
      }
      return usable ? "firecracker" : "qemu";
    },
    network: createLinuxNetwork({ netns, run: hostCommands.run }),
    cgroups: createCgroups({ parent: cgroupParent }),
    volumes: createLinuxVolumes(),
    snapshots: createFsSnapshotStore(),
    guest: withControlPort(createSshGuestChannel()),
    // A shared cache (MVM_IMAGE_CACHE) lets several data roots on one host, such as test runs, build each image once.
    imageBuilder: createDebianImageBuilder({ cacheDir: env.MVM_IMAGE_CACHE || join(dataRoot, "images", "cache") }),
    revisionsDir: (tenantId, poolId) => join(poolDir(tenantId, poolId), "revisions"),
    revisionFiles: createRevisionFiles((tenantId, poolId) => join(poolDir(tenantId, poolId), "revisions")),
    paths: {
      revisionDir: (tenantId, poolId, revision) => join(poolDir(tenantId, poolId), "revisions", revision),
      instanceDir: (tenantId, poolId, instanceId) => fsStore.instanceDir(tenantId, poolId, instanceId),
      tenantPrivateKey: (tenantId) => fsStore.tenantSshKeyPaths(tenantId).privateKey,
      keptDataDisk: (tenantId, poolId, instanceId) => join(poolDir(tenantId, poolId), "kept-volumes", instanceId, "data.ext4"),
    },
    cgroupLimits: (pool) => cgroupLimitsFor(pool.resources),
    metadataPort: METADATA_PORT,
    bootTimeoutMs: positiveIntegerFromEnv(env, "MVM_BOOT_TIMEOUT_MS", DEFAULT_BOOT_TIMEOUT_MS),
    stopTimeoutMs: positiveIntegerFromEnv(env, "MVM_STOP_TIMEOUT_MS", DEFAULT_STOP_TIMEOUT_MS),
    async close() {
      await qemu.close?.();
      await hostCommands.close();
    },
  };
}
