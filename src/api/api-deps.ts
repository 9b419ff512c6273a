// What the API handlers need, as interfaces: the composition root (src/agent) builds it from real adapters, handler
// tests from fakes. Nothing here is created by the API itself.

import type { Logger } from "pino";
import type { RevisionFiles } from "../core/data-plane-ports.js";
import type { AuditEntry, AuditLog } from "../core/observability-ports.js";
import type { BuildDeps } from "../core/use-cases/builds.js";
import type { DataPlaneDeps } from "../core/use-cases/lifecycle.js";
import type { ReconcileController } from "../core/use-cases/reconcile.js";
import type { WatchHub } from "../core/watch-hub.js";
import type { Metrics } from "../platform/metrics.js";
import type { CertStore } from "../platform/pki/cert-store.js";
import type { NodeCapabilities, NodeInfo } from "../../gen/mvm/v1/node_pb.js";

/** The use cases' dependencies, as the agent's runtime provides them. */
export interface ApiRuntime extends DataPlaneDeps, BuildDeps {
  audit: AuditLog;
  /** Built revisions on disk, for garbage collection. */
  revisionFiles: RevisionFiles;
}

/** Reading the audit log back (FsAuditLog has this shape). */
export interface AuditReader {
  /** Tenant IDs that have a log, "" first for the node-level log. */
  logs(): Promise<string[]>;
  /** The last `n` entries (before `beforeSeq`), oldest first. */
  tail(tenantId: string, n: number, options?: { beforeSeq?: number }): Promise<AuditEntry[]>;
  verify(tenantId: string): Promise<{ ok: boolean; entries: number; firstBadSeq?: number; reason?: string }>;
  /** New entries of one log, or of every log (`null`), as they are written; `backlog` recent ones first. */
  watch(tenantId: string | null, options?: { signal?: AbortSignal; backlog?: number }): AsyncIterable<AuditEntry>;
}

/** Disk use of one pool's directory, bytes (allocated blocks, not apparent sizes). */
export interface PoolDiskReport {
  poolId: string;
  /** Built revisions (kernel, initrd, rootfs). */
  artifactsBytes: number;
  /** Instance directories: root overlays, data disks, runtime files. */
  instancesBytes: number;
  /** The data disks alone (a part of instancesBytes). */
  dataDiskBytes: number;
  snapshotsBytes: number;
  /** Revision directories on disk. */
  revisions: number;
}

export interface TenantDiskReport {
  tenantId: string;
  pools: PoolDiskReport[];
  /** Everything of the tenant outside its pools (keys, secrets, audit log). */
  otherBytes: number;
}

export interface DiskReport {
  dataRoot: string;
  filesystemBytes: number;
  freeBytes: number;
  /** What the agent keeps free on the data root's filesystem. */
  reserveBytes: number;
  /** Shared caches under images/. */
  imageCacheBytes: number;
  /** Sorted by tenant ID; pools by pool ID. */
  tenants: TenantDiskReport[];
}

/** Facts about the host, probed by the agent (they have no domain model of their own). */
export interface NodeFacts {
  /** Static facts; `capabilities` filled in. */
  nodeInfo(): Promise<NodeInfo>;
  /** Cached from agent start unless `refresh`. */
  capabilities(refresh: boolean): Promise<NodeCapabilities>;
  /** Disk use of the data root, per tenant and pool (only `tenantId` when given). */
  diskUsage(tenantId: string | undefined): Promise<DiskReport>;
}

/** The node's TLS certificates, when the agent serves mTLS. */
export interface CertificateAccess {
  store: CertStore;
  /** Makes the running server use the store's current node certificate (after a rotation). */
  reload(): Promise<void>;
}

export interface ApiDeps {
  runtime: ApiRuntime;
  /** The hub the runtime's store publishes instance changes to. */
  watchHub: WatchHub;
  auditReader: AuditReader;
  node: NodeFacts;
  /** Absent when the agent serves only its local socket. */
  certificates?: CertificateAccess;
  metrics: Metrics;
  logger: Logger;
  /** Agent version (semver) and the git commit it was built from ("" when unknown). */
  version: { version: string; gitCommit: string };
  /** Aborted when the server shuts down: open streams end with Unavailable. */
  shutdownSignal: AbortSignal;
  /** Interval between WatchInstances heartbeats when the request gives none, ms. Default 15000. */
  defaultHeartbeatMs?: number;
  /** The agent's reconcile controller, shared with its periodic loop. Default: one of ReconcileService's own. */
  reconciler?: ReconcileController;
}
