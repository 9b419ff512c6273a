// Ports: the narrow interfaces through which core reaches the world. Adapters live in src/runtime (real) and
// src/runtime/fake (in-memory, for unit tests only). Core never imports an adapter.

import type { DesiredState } from "./desired-state.js";
import type { BuildRevision, Instance, NodeRecord, Tenant, Timestamp, WorkerPool } from "./model.js";
import type { SecretFiles } from "./tenant-secrets.js";

/** A record file that could not be parsed and was moved aside (renamed to `<name>.broken`). */
export interface BrokenRecord {
  /** Path of the `.broken` file, absolute. */
  path: string;
  /** Why it was refused: a parse error, a schema_version newer than this build, a failed shape check. */
  reason: string;
}

/**
 * Persistent state of one node. Every write is atomic (a crash leaves the old or the new record, never a torn one).
 * Reads that meet a corrupt record move it aside as `*.broken`, report it, and go on without it.
 * Mutations must run inside `withTenantLock` (per tenant) or `withNodeLock` (tenant creation and deletion, which
 * touch the fleet-wide network allocation); both locks work across processes on one host.
 */
export interface Store {
  readonly dataRoot: string;

  /** The node record, created with a fresh node ID on first call. */
  node(): Promise<NodeRecord>;

  listTenants(): Promise<Tenant[]>;
  getTenant(tenantId: string): Promise<Tenant | null>;
  putTenant(tenant: Tenant): Promise<void>;
  /** Removes the tenant directory and everything under it. */
  deleteTenant(tenantId: string): Promise<void>;

  /** The tenant's secret files (none when it has no set). */
  getTenantSecrets(tenantId: string): Promise<SecretFiles>;
  /**
   * Replaces the tenant's secret set atomically (0600; an empty set is kept as such) and returns its hash: lowercase
   * hex SHA-256 over each file in name order as name, NUL, decimal length, NUL, content; "" for an empty set.
   */
  putTenantSecrets(tenantId: string, files: SecretFiles): Promise<string>;

  /** The tenant's SSH key pair: private key written 0600, public key 0644, both atomically. */
  putTenantSshKey(tenantId: string, key: SshKeyPair): Promise<void>;
  tenantSshKeyPaths(tenantId: string): { privateKey: string; publicKey: string };

  listPools(tenantId: string): Promise<WorkerPool[]>;
  getPool(tenantId: string, poolId: string): Promise<WorkerPool | null>;
  putPool(pool: WorkerPool): Promise<void>;
  deletePool(tenantId: string, poolId: string): Promise<void>;

  /** Build history of a pool, oldest first. */
  listBuilds(tenantId: string, poolId: string): Promise<BuildRevision[]>;
  /** Appends a revision and keeps only the newest `keep`. */
  appendBuild(tenantId: string, poolId: string, revision: BuildRevision, keep: number): Promise<void>;
  /** Drops the named revisions from the build history (their files are gone); others stay in order. */
  removeBuilds(tenantId: string, poolId: string, revisions: readonly string[]): Promise<void>;

  listInstances(tenantId: string, poolId: string): Promise<Instance[]>;
  getInstance(tenantId: string, poolId: string, instanceId: string): Promise<Instance | null>;
  putInstance(instance: Instance): Promise<void>;
  deleteInstance(tenantId: string, poolId: string, instanceId: string): Promise<void>;
  /** Directory owned by one instance (run/, volumes/, snapshot/ live under it). */
  instanceDir(tenantId: string, poolId: string, instanceId: string): string;

  withTenantLock<T>(tenantId: string, fn: () => Promise<T>): Promise<T>;
  withNodeLock<T>(fn: () => Promise<T>): Promise<T>;

  /** Every `*.broken` file under the data root, with the reason recorded when it was moved aside. */
  brokenRecords(): Promise<BrokenRecord[]>;

  /** The desired state last applied to this node (SPEC §9); null when none ever was. */
  getDesiredState(): Promise<AppliedDesiredState | null>;
  /** Replaces the applied desired state atomically. Callers serialise applies (withNodeLock). */
  putDesiredState(applied: AppliedDesiredState): Promise<void>;
}

/** The last applied desired state, kept so that the node keeps converging while its coordinator is away. */
export interface AppliedDesiredState {
  schemaVersion: number;
  /** The validated document, defaults filled in. */
  document: DesiredState;
  /** Rises by one with every apply that changes the document (by `hash`); an identical document keeps it. */
  generation: number;
  /** Lowercase hex SHA-256 of the document's canonical protobuf form. */
  hash: string;
  appliedAt: Timestamp;
}

export interface SshKeyPair {
  /** OpenSSH public key line: `ssh-ed25519 AAAA… comment`. */
  publicKey: string;
  /** OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`). */
  privateKey: string;
}

export interface KeyGenerator {
  ed25519(comment: string): SshKeyPair;
}

export interface Clock {
  /** Milliseconds since the epoch. */
  nowMs(): number;
}

export interface Ids {
  /** `n` random bytes as lowercase hex. */
  randomHex(bytes: number): string;
}
