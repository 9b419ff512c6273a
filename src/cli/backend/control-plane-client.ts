// What the CLI's record and lifecycle commands need from whoever acts on the node: the use cases in this process
// (`local`), or a node agent over its local socket or mTLS (`agent`). Both return the core records, so the renderers
// print the same thing whichever acts; both raise MvmError kinds, so the exit codes agree.

import type { BuildProgressEvent, TenantNetworkReport } from "../../core/data-plane-ports.js";
import type { BuildRevision, DesiredCounts, Instance, Tenant, WorkerPool } from "../../core/model.js";
import type { AuditEntry } from "../../core/observability-ports.js";
import type { SecretFiles } from "../../core/tenant-secrets.js";
import type { ReportedGarbageItem } from "../../api/convert/garbage.js";
import type { GarbageOptions, GarbageReport } from "../../core/use-cases/garbage.js";
import type { InstanceFilter, InstanceKey } from "../../core/use-cases/instances.js";
import type { PoolKey, PoolSpecInput } from "../../core/use-cases/pools.js";
import type { SleepOptions } from "../../core/use-cases/sleep-wake.js";
import type { CreateTenantInput, UpdateTenantInput } from "../../core/use-cases/tenants.js";

/** `mvm instance stats`: counters are null where the acting side cannot read them. */
export interface InstanceStatsRecord {
  instance: string;
  status: Instance["status"];
  pid: number | null;
  cpuUsageUs: number | null;
  memoryBytes: number | null;
  memoryLimitBytes: number | null;
  tapRxBytes: number | null;
  tapTxBytes: number | null;
  idle: Instance["idle"];
}

export interface ExecOutcome {
  stdout: string;
  stderr: string;
  exitCode: number;
}

/** `mvm audit verify` of one log: `path` is where the log lives on the node that holds it. */
export interface AuditVerifyReport {
  path: string;
  ok: boolean;
  entries: number;
  firstBadSeq?: number;
  reason?: string;
}

export interface LogStreamOptions {
  follow: boolean;
  /** Ends `follow`. */
  signal?: AbortSignal;
}

/** Where the commands' work happens, for messages and tests: `in-process`, a socket path or `HOST:PORT`. */
export type ControlPlaneKind = "local" | "agent";

export interface ControlPlaneClient {
  readonly kind: ControlPlaneKind;
  readonly target: string;

  createTenant(input: CreateTenantInput): Promise<Tenant>;
  getTenant(tenantId: string): Promise<Tenant>;
  listTenants(): Promise<Tenant[]>;
  updateTenant(input: UpdateTenantInput): Promise<Tenant>;
  /** A new secrets epoch; `files` replaces the secret set (absent: kept). */
  rotateSecrets(tenantId: string, files: SecretFiles | undefined): Promise<Tenant>;
  /** With `force`, its pools and instances go first (microVMs stopped). */
  destroyTenant(tenantId: string, force: boolean): Promise<void>;

  createPool(key: PoolKey, spec: PoolSpecInput): Promise<WorkerPool>;
  getPool(key: PoolKey): Promise<WorkerPool>;
  listPools(tenantId?: string): Promise<WorkerPool[]>;
  updatePool(key: PoolKey, spec: PoolSpecInput): Promise<WorkerPool>;
  scalePool(key: PoolKey, counts: Partial<DesiredCounts>): Promise<WorkerPool>;
  destroyPool(key: PoolKey, force: boolean): Promise<void>;
  buildPool(key: PoolKey, onProgress: (e: BuildProgressEvent) => void): Promise<BuildRevision>;
  /** Oldest first, as `builds.json` keeps them. */
  listBuilds(key: PoolKey): Promise<BuildRevision[]>;
  rollbackPool(key: PoolKey, revision: string): Promise<WorkerPool>;

  createInstance(pool: PoolKey): Promise<Instance>;
  /** The record after a health check (a VMM found gone marks the instance stopped). */
  getInstance(key: InstanceKey): Promise<Instance>;
  listInstances(filter: InstanceFilter): Promise<Instance[]>;
  startInstance(key: InstanceKey): Promise<Instance>;
  stopInstance(key: InstanceKey): Promise<Instance>;
  warmInstance(key: InstanceKey): Promise<Instance>;
  resumeInstance(key: InstanceKey): Promise<Instance>;
  sleepInstance(key: InstanceKey, options?: SleepOptions): Promise<Instance>;
  wakeInstance(key: InstanceKey): Promise<Instance>;
  destroyInstance(key: InstanceKey, options: { keepVolumes: boolean }): Promise<void>;
  execInstance(key: InstanceKey, argv: readonly string[], options: { timeoutMs: number }): Promise<ExecOutcome>;
  instanceStats(key: InstanceKey): Promise<InstanceStatsRecord>;
  /** Writes the guest's serial console to `write`; `warn` gets a note when there is none yet. */
  instanceLogs(key: InstanceKey, options: LogStreamOptions, write: (text: string) => void, warn: (text: string) => void): Promise<void>;

  /** `mvm node info`'s record. */
  nodeInfo(): Promise<Record<string, unknown>>;
  /** One report per tenant (only `tenantId` when given; invalid when it names no tenant). */
  verifyNetwork(tenantId: string | undefined, fix: boolean): Promise<TenantNetworkReport[]>;
  /** `mvm node gc`: what lost its owner and surplus revisions; removed when `apply`. */
  collectGarbage(options: GarbageOptions): Promise<Omit<GarbageReport, "items"> & { items: ReportedGarbageItem[] }>;

  /** The last `n` entries of a log (tenant "" is the node-level log), oldest first. */
  tailAudit(tenantId: string, n: number): Promise<AuditEntry[]>;
  /** The last `n` entries, then every new one until `signal` aborts. */
  followAudit(tenantId: string, n: number, signal: AbortSignal): AsyncIterable<AuditEntry>;
  verifyAudit(tenantId: string): Promise<AuditVerifyReport>;

  /** Releases the connection, if any. */
  close(): void;
}
