// In-memory Store, FOR UNIT TESTS ONLY: nothing survives the process and the locks do not reach other processes.
// It keeps the semantics of FsStore that callers can observe: IDs are checked before anything else, records are deep
// copies in and out and come back with the current schemaVersion, lists are sorted by ID, a pool needs its tenant
// and an instance its pool (not_found), deletes are idempotent and cascade, builds keep the newest `keep`, and the
// locks are re-entrant per async chain and enforce the same lock order (src/runtime/store/lock-order.ts).

import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes } from "node:crypto";
import { MvmError, invalidField, notFound } from "../../core/errors.js";
import { assertId, assertInstanceId } from "../../core/ids.js";
import { SCHEMA_VERSION } from "../../core/model.js";
import type { BuildRevision, Instance, NodeRecord, Tenant, WorkerPool } from "../../core/model.js";
import type { AppliedDesiredState, BrokenRecord, Clock, Ids, SshKeyPair, Store } from "../../core/ports.js";
import type { SecretFiles } from "../../core/tenant-secrets.js";
import { lockOrderViolation, sameLockKey } from "../store/lock-order.js";
import { secretSetHash } from "../store/secret-set-hash.js";
import type { StoreLockKey } from "../store/lock-order.js";

export interface MemoryStoreOptions {
  /** Reported as dataRoot and used to build instanceDir/tenantSshKeyPaths; nothing is written there. */
  dataRoot?: string;
  clock?: Clock;
  ids?: Ids;
}

interface PoolEntry {
  pool: WorkerPool;
  builds: BuildRevision[];
  instances: Map<string, Instance>;
}

interface TenantEntry {
  tenant: Tenant | null;
  sshKey: SshKeyPair | null;
  secrets: SecretFiles;
  pools: Map<string, PoolEntry>;
}

export class MemoryStore implements Store {
  readonly dataRoot: string;
  private readonly clock: Clock;
  private readonly ids: Ids;
  private nodeRecord: NodeRecord | null = null;
  private applied: AppliedDesiredState | null = null;
  private readonly tenants = new Map<string, TenantEntry>();
  private readonly broken: BrokenRecord[] = [];
  private readonly lockQueues = new Map<string, Promise<void>>();
  private readonly heldLocks = new AsyncLocalStorage<readonly StoreLockKey[]>();

  constructor(options: MemoryStoreOptions = {}) {
    this.dataRoot = options.dataRoot ?? "/nonexistent/mvm-memory-store";
    this.clock = options.clock ?? { nowMs: () => Date.now() };
    this.ids = options.ids ?? { randomHex: (bytes) => randomBytes(bytes).toString("hex") };
  }

  async node(): Promise<NodeRecord> {
    this.nodeRecord ??= {
      schemaVersion: SCHEMA_VERSION,
      nodeId: `n-${this.ids.randomHex(6)}`,
      createdAt: new Date(this.clock.nowMs()).toISOString(),
    };
    return copy(this.nodeRecord);
  }

  async listTenants(): Promise<Tenant[]> {
    return sortedValues(this.tenants)
      .map((e) => e.tenant)
      .filter((t): t is Tenant => t !== null)
      .map(copy);
  }

  async getTenant(tenantId: string): Promise<Tenant | null> {
    assertId(tenantId, "tenant_id");
    const tenant = this.tenants.get(tenantId)?.tenant;
    return tenant ? copy(tenant) : null;
  }

  async putTenant(tenant: Tenant): Promise<void> {
    assertId(tenant.tenantId, "tenant_id");
    this.tenantEntry(tenant.tenantId).tenant = stamped(tenant);
  }

  async deleteTenant(tenantId: string): Promise<void> {
    assertId(tenantId, "tenant_id");
    this.tenants.delete(tenantId);
  }

  async putTenantSshKey(tenantId: string, key: SshKeyPair): Promise<void> {
    assertId(tenantId, "tenant_id");
    this.tenantEntry(tenantId).sshKey = copy(key);
  }

  async getTenantSecrets(tenantId: string): Promise<SecretFiles> {
    assertId(tenantId, "tenant_id");
    const files = this.tenants.get(tenantId)?.secrets ?? {};
    return Object.fromEntries(Object.entries(files).map(([name, content]) => [name, new Uint8Array(content)]));
  }

  async putTenantSecrets(tenantId: string, files: SecretFiles): Promise<string> {
    assertId(tenantId, "tenant_id");
    const entry = this.tenants.get(tenantId);
    if (!entry?.tenant) throw notFound(`tenant ${tenantId}`);
    entry.secrets = Object.fromEntries(Object.entries(files).map(([name, content]) => [name, new Uint8Array(content)]));
    return secretSetHash(files);
  }

  /** The key pair last stored for `tenantId` (FsStore has files at tenantSshKeyPaths instead). */
  sshKey(tenantId: string): SshKeyPair | null {
    const key = this.tenants.get(tenantId)?.sshKey;
    return key ? copy(key) : null;
  }

  tenantSshKeyPaths(tenantId: string): { privateKey: string; publicKey: string } {
    assertId(tenantId, "tenant_id");
    const dir = `${this.dataRoot}/tenants/${tenantId}/ssh`;
    return { privateKey: `${dir}/id_ed25519`, publicKey: `${dir}/id_ed25519.pub` };
  }

  async listPools(tenantId: string): Promise<WorkerPool[]> {
    assertId(tenantId, "tenant_id");
    const entry = this.tenants.get(tenantId);
    return entry ? sortedValues(entry.pools).map((p) => copy(p.pool)) : [];
  }

  async getPool(tenantId: string, poolId: string): Promise<WorkerPool | null> {
    assertPoolIds(tenantId, poolId);
    const entry = this.poolEntry(tenantId, poolId);
    return entry ? copy(entry.pool) : null;
  }

  async putPool(pool: WorkerPool): Promise<void> {
    assertPoolIds(pool.tenantId, pool.poolId);
    const tenant = this.tenants.get(pool.tenantId);
    if (!tenant?.tenant) throw notFound(`tenant ${pool.tenantId}`);
    const existing = tenant.pools.get(pool.poolId);
    if (existing) existing.pool = stamped(pool);
    else tenant.pools.set(pool.poolId, { pool: stamped(pool), builds: [], instances: new Map() });
  }

  async deletePool(tenantId: string, poolId: string): Promise<void> {
    assertPoolIds(tenantId, poolId);
    this.tenants.get(tenantId)?.pools.delete(poolId);
  }

  async listBuilds(tenantId: string, poolId: string): Promise<BuildRevision[]> {
    assertPoolIds(tenantId, poolId);
    return copy(this.poolEntry(tenantId, poolId)?.builds ?? []);
  }

  async appendBuild(tenantId: string, poolId: string, revision: BuildRevision, keep: number): Promise<void> {
    assertPoolIds(tenantId, poolId);
    if (!Number.isSafeInteger(keep) || keep < 1) throw invalidField("keep", "must be an integer of at least 1");
    const entry = this.poolEntry(tenantId, poolId);
    if (!entry) throw notFound(`pool ${tenantId}/${poolId}`);
    entry.builds = [...entry.builds, copy(revision)].slice(-keep);
  }

  async removeBuilds(tenantId: string, poolId: string, revisions: readonly string[]): Promise<void> {
    assertPoolIds(tenantId, poolId);
    const entry = this.poolEntry(tenantId, poolId);
    if (!entry) return;
    const gone = new Set(revisions);
    entry.builds = entry.builds.filter((b) => !gone.has(b.revision));
  }

    async listInstances(tenantId: string, poolId: string): Promise<Instance[]> {
    assertPoolIds(tenantId, poolId);
    const entry = this.poolEntry(tenantId, poolId);
    return entry ? sortedValues(entry.instances).map(copy) : [];
  }

  async getInstance(tenantId: string, poolId: string, instanceId: string): Promise<Instance | null> {
    assertInstanceIds(tenantId, poolId, instanceId);
    const instance = this.poolEntry(tenantId, poolId)?.instances.get(instanceId);
    return instance ? copy(instance) : null;
  }

  async putInstance(instance: Instance): Promise<void> {
    assertInstanceIds(instance.tenantId, instance.poolId, instance.instanceId);
    const entry = this.poolEntry(instance.tenantId, instance.poolId);
    if (!entry) throw notFound(`pool ${instance.tenantId}/${instance.poolId}`);
    entry.instances.set(instance.instanceId, stamped(instance));
  }

  async deleteInstance(tenantId: string, poolId: string, instanceId: string): Promise<void> {
    assertInstanceIds(tenantId, poolId, instanceId);
    this.poolEntry(tenantId, poolId)?.instances.delete(instanceId);
  }

  instanceDir(tenantId: string, poolId: string, instanceId: string): string {
    assertInstanceIds(tenantId, poolId, instanceId);
    return `${this.dataRoot}/tenants/${tenantId}/pools/${poolId}/instances/${instanceId}`;
  }

  async withTenantLock<T>(tenantId: string, fn: () => Promise<T>): Promise<T> {
    assertId(tenantId, "tenant_id");
    return this.withLock({ kind: "tenant", tenantId }, fn);
  }

  async withNodeLock<T>(fn: () => Promise<T>): Promise<T> {
    return this.withLock({ kind: "node" }, fn);
  }

  async brokenRecords(): Promise<BrokenRecord[]> {
    return copy(this.broken);
  }

  async getDesiredState(): Promise<AppliedDesiredState | null> {
    return this.applied ? copy(this.applied) : null;
  }

  async putDesiredState(applied: AppliedDesiredState): Promise<void> {
    this.applied = stamped(applied);
  }

  /** Lets a test pretend a record was found corrupt and moved aside. */
  addBrokenRecord(record: BrokenRecord): void {
    this.broken.push(copy(record));
  }

  private async withLock<T>(key: StoreLockKey, fn: () => Promise<T>): Promise<T> {
    const held = this.heldLocks.getStore() ?? [];
    if (held.some((k) => sameLockKey(k, key))) return fn();
    const violation = lockOrderViolation(held, key);
    if (violation !== null) throw new MvmError("internal", violation);
    const name = key.kind === "node" ? "node" : `tenant/${key.tenantId}`;
    const previous = this.lockQueues.get(name) ?? Promise.resolve();
    let leave!: () => void;
    const tail = previous.then(() => new Promise<void>((r) => (leave = r)));
    this.lockQueues.set(name, tail);
    await previous;
    try {
      return await this.heldLocks.run([...held, key], fn);
    } finally {
      if (this.lockQueues.get(name) === tail) this.lockQueues.delete(name);
      leave();
    }
  }

  private tenantEntry(tenantId: string): TenantEntry {
    let entry = this.tenants.get(tenantId);
    if (!entry) {
      entry = { tenant: null, sshKey: null, secrets: {}, pools: new Map() };
      this.tenants.set(tenantId, entry);
    }
    return entry;
  }

  private poolEntry(tenantId: string, poolId: string): PoolEntry | undefined {
    return this.tenants.get(tenantId)?.pools.get(poolId);
  }
}

function copy<T>(value: T): T {
  return structuredClone(value);
}

function stamped<T extends { schemaVersion: number }>(record: T): T {
  return { ...copy(record), schemaVersion: SCHEMA_VERSION };
}

function sortedValues<V>(map: Map<string, V>): V[] {
  return [...map.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, v]) => v);
}

function assertPoolIds(tenantId: string, poolId: string): void {
  assertId(tenantId, "tenant_id");
  assertId(poolId, "pool_id");
}

function assertInstanceIds(tenantId: string, poolId: string, instanceId: string): void {
  assertPoolIds(tenantId, poolId);
  assertInstanceId(instanceId, "instance_id");
}
