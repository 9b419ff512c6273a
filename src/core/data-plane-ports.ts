// Ports of the host data plane (SPEC §6): the hypervisor, tenant networks, cgroups, disks, images and the channel
// into a guest. Real adapters live in src/runtime/{qemu,firecracker,network,cgroups,volumes,images,ssh}; in-memory
// fakes in src/runtime/fake are for unit tests only.

import type { BuildArtifact, Compression, HypervisorKind, ImageSource, SeccompPolicy, Timestamp } from "./model.js";

// ── Hypervisor ────────────────────────────────────────────────────────────────────────────────────────────────────

/**
 * Disks in the fixed device order every guest relies on: root is always the first virtio-blk device (/dev/vda), the
 * data disk the second (/dev/vdb), the secrets disk the third (/dev/vdc). When a pool has no data disk, the adapter
 * still attaches a tiny empty placeholder in its slot, so the secrets disk never moves (the predecessor shifted it).
 */
export interface VmDisk {
  role: "root" | "data" | "secrets";
  path: string;
  format: "qcow2" | "raw";
  readOnly: boolean;
}

export interface VmLaunchSpec {
  /** Used as the VMM's name and in its runtime paths; already validated (`i-` + 8 hex). */
  instanceId: string;
  vcpus: number;
  memMib: number;
  kernelPath: string;
  initrdPath: string | null;
  /** Guest kernel arguments chosen by core (network, identity); the adapter adds its own (console, timing). */
  kernelArgs: string[];
  disks: VmDisk[];
  tap: { name: string; mac: string };
  /** 0700 directory owned by the instance: sockets, serial log, pid file. */
  runDir: string;
  /** Network namespace the VMM runs in (the TAP lives there); null for the root namespace. */
  netns: string | null;
  /** `cgroup.procs` files the VMM joins before it runs any guest code (one per v1 controller, or one for v2). */
  cgroupProcsFiles: string[];
  /** How long boot may take until the guest reports ready, ms. */
  bootTimeoutMs: number;
  /** The pool's seccomp policy (Firecracker only; QEMU ignores it). Absent: the adapter's configured default. */
  seccompPolicy?: SeccompPolicy;
}

/** A running VMM, identified by pid and start time so that a recycled pid is never mistaken for it. */
export interface VmmProcess {
  hypervisor: HypervisorKind;
  pid: number;
  /** Field 22 of /proc/PID/stat. */
  pidStartTime: number;
  /** QMP socket (QEMU) or API socket (Firecracker). */
  apiSocket: string;
  /** Serial console log of the guest. */
  serialLog: string;
}

export interface VmmCapabilities {
  kind: HypervisorKind;
  available: boolean;
  version: string | null;
  /** Hardware acceleration that was probed and works (not merely a /dev/kvm that exists). */
  kvmUsable: boolean;
  diffSnapshots: boolean;
  /** Why it is unavailable or degraded, for `mvm doctor`. */
  notes: string[];
}

export type VmSnapshotType = "full" | "diff";

/** Files of one VM snapshot as the VMM wrote them (uncompressed; compression and hashing are the caller's). */
export interface VmSnapshotFiles {
  type: VmSnapshotType;
  /** Guest memory (Firecracker's memory file) or the whole QEMU migration stream. */
  memoryFile: string;
  /** Firecracker's device-state file; null for QEMU, whose migration stream holds both. */
  stateFile: string | null;
  /** For a diff snapshot: the full snapshot it applies on; null otherwise. */
  baseMemoryFile: string | null;
}

export interface Vmm {
  readonly kind: HypervisorKind;
  capabilities(): Promise<VmmCapabilities>;
  /** Starts the VMM and returns once the guest has reported ready; on failure nothing of it is left running. */
  boot(spec: VmLaunchSpec): Promise<VmmProcess>;
  pause(vmm: VmmProcess): Promise<void>;
  resume(vmm: VmmProcess): Promise<void>;
  /** Writes a snapshot of a paused VM into `dir` (which exists); the VM stays paused. */
  snapshot(vmm: VmmProcess, dir: string, type: VmSnapshotType): Promise<VmSnapshotFiles>;
  /**
   * Starts a new VMM from `snapshot` with the devices of `spec` (same disks and TAP, a fresh secrets disk) and
   * resumes it; returns once the VM runs (the guest's wake hook is the caller's job). On failure nothing of it is left
   * running.
   */
  restore(spec: VmLaunchSpec, snapshot: VmSnapshotFiles): Promise<VmmProcess>;
  /**
   * Optional: readies, while the caller still checks the snapshot, what the `restore` of the instance with this run
   * directory starts from (QEMU: a launcher already placed in the cgroups, which runs nothing until the restore hands
   * it the VMM's command). Starts no VMM. What no restore takes is ended by `discardPrepared`.
   */
  prepareRestore?(launch: { runDir: string; cgroupProcsFiles: readonly string[] }): Promise<void>;
  /** Ends what `prepareRestore` readied for this run directory, if a restore did not take it. Idempotent. */
  discardPrepared?(runDir: string): Promise<void>;
  /** Asks the guest to power off, waits up to `timeoutMs`, then kills the VMM. Idempotent. */
  shutdown(vmm: VmmProcess, timeoutMs: number): Promise<void>;
  /** True when the process with this pid and start time still runs. */
  isAlive(vmm: VmmProcess): Promise<boolean>;
  /**
   * Optional: ends what the adapter keeps ready for later calls (QEMU: a launcher started ahead of a wake). VMMs
   * are not touched: they outlive whoever started them.
   */
  close?(): Promise<void>;
}

// ── Snapshots ─────────────────────────────────────────────────────────────────────────────────────────────────────

/** The host properties a snapshot depends on; a snapshot is restored only on a host with the same stamp. */
export interface HostCompatibility {
  /** `model name` of /proc/cpuinfo. */
  cpuModel: string;
  /** Host kernel release (`uname -r`). */
  hostKernel: string;
  /** Version of the hypervisor that wrote (or would restore) the snapshot. */
  vmmVersion: string;
}

/** SPEC §2 SnapshotMeta: what `meta.json` in an instance's snapshot directory records. */
export interface SnapshotMeta {
  type: VmSnapshotType;
  hypervisor: HypervisorKind;
  hypervisorVersion: string;
  revision: string;
  memMib: number;
  compression: Compression;
  /** Name (inside the snapshot directory) of the memory file or QEMU migration stream as stored (maybe compressed). */
  memoryFile: string;
  /** Name of Firecracker's device-state file (never compressed); null for QEMU. */
  stateFile: string | null;
  /** Bytes of the memory file as stored. */
  memorySizeBytes: number;
  stateSizeBytes: number;
  /** Bytes of the memory file before compression. */
  uncompressedSizeBytes: number;
  /** Lowercase hex SHA-256 of the memory file as stored. */
  sha256: string;
  /**
   * SHA-256 of each `memoryChunkBytes` chunk of the memory file as stored, so that a wake can check it on several
   * cores at once. Absent in snapshots written before they were recorded (the whole-file digest is checked then).
   */
  memoryChunkBytes?: number;
  memoryChunkSha256s?: string[];
  /** Lowercase hex SHA-256 of the state file; empty when there is none. */
  stateSha256: string;
  createdAt: Timestamp;
  host: HostCompatibility;
}

/** What the caller knows about a snapshot the VMM has just written. */
export interface SnapshotSealInfo {
  hypervisor: HypervisorKind;
  revision: string;
  memMib: number;
  compression: Compression;
  createdAt: Timestamp;
  host: HostCompatibility;
}

/** Snapshot files checked and ready for `Vmm.restore`; `release` removes what opening made (a decompressed copy). */
export interface SetAsideSnapshot {
  /** Frees the set-aside files. Best effort: what stays is freed by the next create, remove or setAside of the directory. */
  purge(): Promise<void>;
}

export interface OpenedSnapshot {
  files: VmSnapshotFiles;
  release(): Promise<void>;
}

/** Snapshot directories on disk: compression, hashing, the meta file, the host stamp. */
export interface SnapshotStore {
  /** Makes `dir` an empty snapshot directory (0700), removing an earlier snapshot there. */
  create(dir: string): Promise<void>;
  /** This host's stamp for a hypervisor of version `vmmVersion`. */
  hostStamp(vmmVersion: string): Promise<HostCompatibility>;
  /** Compresses the VMM's files as asked, hashes them and writes `meta.json` last (a snapshot without it is torn). */
  seal(dir: string, files: VmSnapshotFiles, info: SnapshotSealInfo): Promise<SnapshotMeta>;
  /** The meta of the snapshot in `dir`; null when there is none (no directory or no meta file). */
  readMeta(dir: string): Promise<SnapshotMeta | null>;
  /**
   * Checks the stored files against the meta's sizes and SHA-256 (a mismatch is a `failed_precondition` that names the
   * file) and decompresses when needed; the snapshot itself is left as it is.
   */
  open(dir: string, meta: SnapshotMeta): Promise<OpenedSnapshot>;
  /** Bytes the files in the snapshot directory take on disk; null when there is no such directory. */
  diskBytes(dir: string): Promise<number | null>;
  /** Removes the snapshot directory: `setAside`, then its files are freed in the background. Idempotent. */
  remove(dir: string): Promise<void>;
  /**
   * Takes the snapshot directory out of use at once (it can no longer be read or restored) and leaves freeing its
   * files, as large as the guest's memory, to the caller's `purge`. Freeing them goes into the file system's next
   * journal commit (and with `-o discard` trims them), which an fsync the caller still has to make would wait for.
   * Idempotent.
   */
  setAside(dir: string): Promise<SetAsideSnapshot>;
}

// ── Tenant networks ───────────────────────────────────────────────────────────────────────────────────────────────

export interface TenantNetworkPlan {
  tenantId: string;
  netId: number;
  bridgeName: string;
  gatewayIp: string;
  /** CIDR of the tenant subnet. */
  subnet: string;
  prefixLen: number;
  /** TCP port of the metadata endpoint on the gateway: the only host port guests may reach. */
  metadataPort: number;
}

export interface TapPlan {
  name: string;
  mac: string;
  guestIp: string;
}

export interface NetworkCheck {
  check: string;
  ok: boolean;
  detail: string;
}

export interface TenantNetworkReport {
  tenantId: string;
  bridgeName: string;
  ok: boolean;
  checks: NetworkCheck[];
  /** TAPs on the bridge that belong to no known instance. */
  strayTaps: string[];
  /** Instances whose TAP is missing. */
  missingTaps: string[];
}

export interface Network {
  /** The network namespace the data plane lives in, or null for the root namespace. */
  readonly netns: string | null;
  /** Bridge with the gateway address, NAT, forward and isolation rules. Idempotent. */
  ensureTenant(plan: TenantNetworkPlan): Promise<void>;
  removeTenant(plan: TenantNetworkPlan): Promise<void>;
  /** TAP in the tenant bridge, with anti-spoofing rules for its MAC and IP. Idempotent. */
  ensureTap(plan: TenantNetworkPlan, tap: TapPlan): Promise<void>;
  removeTap(plan: TenantNetworkPlan, tapName: string): Promise<void>;
  /**
   * `ensureTenant` then `ensureTap`, as the start path needs them, with the same guarantees; an adapter may do both
   * in fewer host commands.
   */
  ensureInstanceNetwork(plan: TenantNetworkPlan, tap: TapPlan): Promise<void>;
  /** Bytes through the TAP since it was created; null when it does not exist. */
  tapCounters(tapName: string): Promise<{ rxBytes: number; txBytes: number } | null>;
  verify(plan: TenantNetworkPlan, expectedTaps: readonly TapPlan[], fix: boolean): Promise<TenantNetworkReport>;
  /** The net IDs that bridges and TAPs named the way mvm names them carry in the namespace, whoever owns them. */
  netIdsPresent(): Promise<number[]>;
  /** Removes what a tenant with that net ID left: its TAPs, its bridge and its nftables entries. Idempotent. */
  removeNetIdLeftovers(netId: number): Promise<void>;
}

// ── cgroups ───────────────────────────────────────────────────────────────────────────────────────────────────────

export interface CgroupKey {
  tenantId: string;
  poolId: string;
  instanceId: string;
}

export interface CgroupLimits {
  /** Guest RAM plus VMM overhead. */
  memoryBytes: number;
  /** CPU time per period, µs (vCPUs × period). */
  cpuQuotaUs: number;
  cpuPeriodUs: number;
  /**
   * CPU time per period, µs, that the group may use beyond its quota out of what it left unused in earlier periods
   * (0: none). The long-run average stays within the quota. At most the quota; ignored by kernels before 5.14.
   */
  cpuBurstUs: number;
  pidsMax: number;
}

export interface CgroupUsage {
  /** Cumulative CPU time, µs. */
  cpuUsageUs: number;
  memoryBytes: number;
}

export interface Cgroups {
  readonly version: 1 | 2;
  /** Creates the instance's groups (nested under tenant and pool) with the limits; returns the procs files to join. */
  ensure(key: CgroupKey, limits: CgroupLimits): Promise<{ procsFiles: string[] }>;
  /** Removes the instance's groups once no process is left in them. Idempotent. */
  remove(key: CgroupKey): Promise<void>;
  usage(key: CgroupKey): Promise<CgroupUsage | null>;
  limits(key: CgroupKey): Promise<CgroupLimits | null>;
  /** Every instance group under mvm's parent (in any hierarchy), whoever owns it: what garbage collection checks. */
  list(): Promise<CgroupKey[]>;
  /** The processes in the instance's groups; none when the groups do not exist. */
  processes(key: CgroupKey): Promise<number[]>;
  /**
   * Kills (SIGKILL) every process in the instance's groups, which only mvm puts there, and waits up to `timeoutMs`
   * for them to be gone. Returns the PIDs it killed.
   */
  killProcesses(key: CgroupKey, timeoutMs: number): Promise<number[]>;
}

// ── Disks ─────────────────────────────────────────────────────────────────────────────────────────────────────────

export interface Volumes {
  /** Copy-on-write disk of the instance over the revision's root image. */
  createRootOverlay(baseImage: string, overlayPath: string): Promise<void>;
  /**
   * A raw copy of the revision's root image (reflinked or sparse where the filesystem allows), for hypervisors that
   * read raw images only (Firecracker). Kept across stop/start while the base is the same, replaced otherwise.
   */
  createRootCopy(baseImage: string, copyPath: string): Promise<void>;
  /** ext4 data disk, created once; an existing one is kept as it is. */
  ensureDataDisk(path: string, sizeMib: number): Promise<void>;
  /**
   * Small ext4 image holding `files` (relative path → content), 0600 inside; rebuilt at every start and wake, one
   * fixed size that holds the largest secret set a tenant may have. `keepSize` (a wake) keeps the size of the disk
   * already there, which the restored guest still expects; content that does not fit it is refused.
   */
  buildSecretsDisk(path: string, files: Record<string, string | Uint8Array>, options?: { keepSize?: boolean }): Promise<void>;
  /** Moves a data disk out of an instance that is being destroyed (`--keep-volumes`); a missing disk is no error. */
  preserveDataDisk(path: string, destination: string): Promise<void>;
}

// ── Images ────────────────────────────────────────────────────────────────────────────────────────────────────────

export interface BuildProgressEvent {
  phase: string;
  /** 0–100 for the whole build. */
  percent: number;
  message: string;
}

export interface BuiltImage {
  /** Content hash of the artifacts: the revision ID. */
  revision: string;
  kernel: BuildArtifact;
  initrd: BuildArtifact | null;
  rootfs: BuildArtifact;
  builder: string;
  flakeLockHash: string;
}

export interface ImageBuilder {
  /** Builds (or finds in the cache) the artifacts of `source` into `revisionsDir/<revision>/`. */
  build(source: ImageSource, revisionsDir: string, onProgress: (e: BuildProgressEvent) => void): Promise<BuiltImage>;
}

/** A built revision's directory as garbage collection sees it. */
export interface RevisionOnDisk {
  revision: string;
  /**
   * Bytes that removing the directory frees: files linked from nowhere else. Artifacts are hard links into the image
   * cache, so a revision whose cache entries live on frees little.
   */
  freedBytes: number;
  /**
   * When the directory was last modified, ms since the epoch. A build fills it just before renaming it into place (or
   * touches one it reuses), then waits for the tenant lock to record it.
   */
  changedAtMs: number;
}

/** The built revisions of a pool on disk. */
export interface RevisionFiles {
  /** The revision directories present for the pool, in no particular order; none when the pool has none. */
  list(tenantId: string, poolId: string): Promise<RevisionOnDisk[]>;
  /** Removes a revision directory. Idempotent. */
  remove(tenantId: string, poolId: string, revision: string): Promise<void>;
}

// ── Guest channel ─────────────────────────────────────────────────────────────────────────────────────────────────

export interface GuestTarget {
  guestIp: string;
  netns: string | null;
  privateKeyPath: string;
  /** The instance's run directory, where a QEMU VM's control port lives; absent when the caller has none. */
  runDir?: string;
}

/** Hooks the host runs in a guest (docs/guest-contract.md), and where the default image keeps them. */
export type GuestHook = "sleep-prep" | "wake";
export const GUEST_HOOK_PATHS: Readonly<Record<GuestHook, string>> = {
  "sleep-prep": "/usr/lib/mvm/hooks/sleep-prep",
  wake: "/usr/lib/mvm/hooks/wake",
};

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface GuestChannel {
  exec(target: GuestTarget, argv: readonly string[], options: { timeoutMs: number; input?: string }): Promise<ExecResult>;
  /**
   * Runs one of the guest's hooks with `args` (each a plain word): through the VM's control port when the guest
   * serves one there, else over SSH as `exec` would. Throws when the guest cannot be reached in time; a hook that
   * ran and failed is an ExecResult with its exit code and standard error.
   */
  runHook(target: GuestTarget, hook: GuestHook, args: readonly string[], options: { timeoutMs: number }): Promise<ExecResult>;
}
