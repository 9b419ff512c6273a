// The domain records of SPEC §2. These are mvm's own types: the protobuf contract in gen/ is converted to and from
// them at the API edge, and the store persists them as JSON. Field names are camelCase; units are in the names.
// Every timestamp is an RFC 3339 UTC string with milliseconds (Date.prototype.toISOString()).

/** Version of the on-disk record layout. Bumped on an incompatible change; readers refuse newer versions. */
export const SCHEMA_VERSION = 1;

export type Timestamp = string;

export interface TenantQuota {
  /** vCPUs of running + warm instances. Default 16. */
  maxVcpus: number;
  /** Guest memory (MiB) of running + warm instances. Default 32768. */
  maxMemMib: number;
  /** Instances in `running`. Default 8. */
  maxRunning: number;
  /** Instances in `warm`. Default 4. */
  maxWarm: number;
  /** Pools of the tenant. Default 4. */
  maxPools: number;
  /** Instance records per pool (any state but destroyed). Default 16. */
  maxInstancesPerPool: number;
  /** Data disks plus snapshot bytes of the tenant, GiB. Default 100. */
  maxDiskGib: number;
}

export const DEFAULT_QUOTA: Readonly<TenantQuota> = Object.freeze({
  maxVcpus: 16,
  maxMemMib: 32768,
  maxRunning: 8,
  maxWarm: 4,
  maxPools: 4,
  maxInstancesPerPool: 16,
  maxDiskGib: 100,
});

export interface TenantNetwork {
  /** 0–4095, unique in the fleet. */
  netId: number;
  /** CIDR, prefix /16 to /29, network address (host bits zero). */
  ipv4Subnet: string;
  /** First usable address of the subnet. */
  gatewayIp: string;
  /** Derived from netId (see naming.ts), at most 15 bytes. */
  bridgeName: string;
}

export interface Tenant {
  schemaVersion: number;
  tenantId: string;
  quotas: TenantQuota;
  network: TenantNetwork;
  /** OpenSSH-format ed25519 public key; the private key lives beside the record, 0600. */
  sshPublicKey: string;
  secretsEpoch: number;
  /** Hash of the tenant's secret set (Store.putTenantSecrets); absent or "" when it has none. */
  secretsHash?: string;
  labels: Record<string, string>;
  createdAt: Timestamp;
  updatedAt: Timestamp;
}

export type ImageSource =
  | { kind: "debian"; suite: string; packages: string[]; extraFiles: Record<string, string> }
  | { kind: "nix"; flakeRef: string; profile: string };

export interface PoolResources {
  /** 1–32. */
  vcpus: number;
  /** 128–262144. */
  memMib: number;
  /** 0 means no data disk. */
  dataDiskMib: number;
}

export interface DesiredCounts {
  running: number;
  warm: number;
  sleeping: number;
}

export interface SleepPolicy {
  warmAfterIdleS: number;
  sleepAfterIdleS: number;
  cpuIdlePct: number;
  netIdleBytes: number;
}

export const DEFAULT_SLEEP_POLICY: Readonly<SleepPolicy> = Object.freeze({
  warmAfterIdleS: 300,
  sleepAfterIdleS: 900,
  cpuIdlePct: 5,
  netIdleBytes: 1024,
});

export const HYPERVISORS = ["auto", "firecracker", "qemu"] as const;
export type HypervisorChoice = (typeof HYPERVISORS)[number];
export type HypervisorKind = Exclude<HypervisorChoice, "auto">;

export const SECCOMP_POLICIES = ["default", "strict"] as const;
export type SeccompPolicy = (typeof SECCOMP_POLICIES)[number];

export const COMPRESSIONS = ["none", "lz4", "zstd"] as const;
export type Compression = (typeof COMPRESSIONS)[number];

export interface WorkerPool {
  schemaVersion: number;
  tenantId: string;
  poolId: string;
  image: ImageSource;
  resources: PoolResources;
  desiredCounts: DesiredCounts;
  hypervisor: HypervisorChoice;
  seccompPolicy: SeccompPolicy;
  snapshotCompression: Compression;
  metadataEnabled: boolean;
  /** Served at GET /v1/user-data on the metadata endpoint; absent when the pool has none. */
  userData?: string;
  sleepPolicy: SleepPolicy;
  pinned: boolean;
  critical: boolean;
  /** Set by a successful build; empty until then. */
  currentRevision: string;
  /** Set by reconcile (`NotBuilt`, `Reconciled`); absent on pools it never touched. */
  conditions?: Condition[];
  createdAt: Timestamp;
  updatedAt: Timestamp;
}

export interface BuildArtifact {
  /** Path relative to the revision directory. */
  path: string;
  sha256: string;
  sizeBytes: number;
}

export interface BuildRevision {
  revision: string;
  image: ImageSource;
  flakeLockHash: string;
  kernel: BuildArtifact;
  initrd: BuildArtifact | null;
  rootfs: BuildArtifact;
  builder: string;
  builtAt: Timestamp;
  durationMs: number;
}

export const INSTANCE_STATUSES = ["created", "ready", "running", "warm", "sleeping", "stopped", "destroyed"] as const;
export type InstanceStatus = (typeof INSTANCE_STATUSES)[number];

export interface InstanceNet {
  tapName: string;
  mac: string;
  guestIp: string;
  gatewayIp: string;
  prefixLen: number;
}

export interface InstanceVmm {
  hypervisor: HypervisorKind;
  pid: number;
  /** Field 22 of /proc/PID/stat (clock ticks since boot): with pid, identifies the process. */
  pidStartTime: number;
  /** QMP or Firecracker API socket. */
  apiSocket: string;
  /** Network namespace the VMM and its TAP live in; null for the root namespace. */
  netns: string | null;
}

export type ConditionStatus = "true" | "false" | "unknown";

export interface Condition {
  type: string;
  status: ConditionStatus;
  reason: string;
  message: string;
  lastTransitionAt: Timestamp;
}

export interface IdleMetrics {
  idleS: number;
  cpuPct: number;
  netBytes: number;
  lastSampleAt: Timestamp | null;
}

export interface Instance {
  schemaVersion: number;
  instanceId: string;
  tenantId: string;
  poolId: string;
  status: InstanceStatus;
  revision: string;
  net: InstanceNet;
  vmm: InstanceVmm | null;
  conditions: Condition[];
  idle: IdleMetrics;
  createdAt: Timestamp;
  updatedAt: Timestamp;
  lastStartedAt: Timestamp | null;
  lastStoppedAt: Timestamp | null;
  lastSnapshotAt: Timestamp | null;
  healthy: boolean;
  lastHealthCheckAt: Timestamp | null;
}

export interface NodeRecord {
  schemaVersion: number;
  /** Persistent, generated on first use. */
  nodeId: string;
  createdAt: Timestamp;
}
