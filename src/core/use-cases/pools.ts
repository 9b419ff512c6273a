// WorkerPool records: create (max_pools enforced), read, update, scale, destroy.

import { alreadyExists, failedPrecondition, invalid, notFound, type FieldViolation } from "../errors.js";
import { idViolations } from "../ids.js";
import {
  COMPRESSIONS,
  DEFAULT_SLEEP_POLICY,
  HYPERVISORS,
  SCHEMA_VERSION,
  SECCOMP_POLICIES,
  type Compression,
  type DesiredCounts,
  type HypervisorChoice,
  type ImageSource,
  type PoolResources,
  type SeccompPolicy,
  type SleepPolicy,
  type WorkerPool,
} from "../model.js";
import { assertQuota, computeUsage, desiredCountsExcess, type DesiredTotalExcess } from "../quota.js";
import {
  desiredCountsViolations,
  enumViolations,
  imageSourceViolations,
  resourcesViolations,
  sleepPolicyViolations,
  userDataViolations,
} from "../validation.js";
import { audited } from "./audit-trail.js";
import { timestamp, type RecordDeps } from "./deps.js";

/** The user-settable part of a pool; everything but the IDs is optional on update. */
export interface PoolSpecInput {
  image?: ImageSource;
  resources?: Partial<PoolResources>;
  desiredCounts?: Partial<DesiredCounts>;
  hypervisor?: HypervisorChoice;
  seccompPolicy?: SeccompPolicy;
  snapshotCompression?: Compression;
  metadataEnabled?: boolean;
  /** "" removes it. */
  userData?: string;
  sleepPolicy?: Partial<SleepPolicy>;
  pinned?: boolean;
  critical?: boolean;
}

export interface PoolKey {
  tenantId: string;
  poolId: string;
}

export const DEFAULT_IMAGE: ImageSource = { kind: "debian", suite: "bookworm", packages: [], extraFiles: {} };
export const DEFAULT_RESOURCES: PoolResources = { vcpus: 1, memMib: 256, dataDiskMib: 0 };

function keyViolations(key: PoolKey): FieldViolation[] {
  return [...idViolations(key.tenantId, "tenant_id"), ...idViolations(key.poolId, "pool_id")];
}

function specViolations(spec: PoolSpecInput): FieldViolation[] {
  return [
    ...(spec.image === undefined ? [] : imageSourceViolations(spec.image, "image")),
    ...(spec.resources === undefined ? [] : resourcesViolations(spec.resources, "resources")),
    ...(spec.desiredCounts === undefined ? [] : desiredCountsViolations(spec.desiredCounts, "desired_counts")),
    ...(spec.hypervisor === undefined ? [] : enumViolations(spec.hypervisor, HYPERVISORS, "hypervisor")),
    ...(spec.seccompPolicy === undefined ? [] : enumViolations(spec.seccompPolicy, SECCOMP_POLICIES, "seccomp_policy")),
    ...(spec.snapshotCompression === undefined
      ? []
      : enumViolations(spec.snapshotCompression, COMPRESSIONS, "snapshot_compression")),
    ...(spec.sleepPolicy === undefined ? [] : sleepPolicyViolations(spec.sleepPolicy, "sleep_policy")),
    ...(spec.userData === undefined ? [] : userDataViolations(spec.userData, "user_data")),
  ];
}

/** Applies a partial spec to a pool and re-checks the merged result, so that cross-field rules see final values. */
function applySpec(pool: WorkerPool, spec: PoolSpecInput): WorkerPool {
  const merged: WorkerPool = {
    ...pool,
    image: spec.image ?? pool.image,
    resources: { ...pool.resources, ...spec.resources },
    desiredCounts: { ...pool.desiredCounts, ...spec.desiredCounts },
    hypervisor: spec.hypervisor ?? pool.hypervisor,
    seccompPolicy: spec.seccompPolicy ?? pool.seccompPolicy,
    snapshotCompression: spec.snapshotCompression ?? pool.snapshotCompression,
    metadataEnabled: spec.metadataEnabled ?? pool.metadataEnabled,
    sleepPolicy: { ...pool.sleepPolicy, ...spec.sleepPolicy },
    pinned: spec.pinned ?? pool.pinned,
    critical: spec.critical ?? pool.critical,
  };
  const userData = spec.userData ?? pool.userData ?? "";
  if (userData === "") delete merged.userData;
  else merged.userData = userData;
  const violations = [
    ...resourcesViolations(merged.resources, "resources"),
    ...sleepPolicyViolations(merged.sleepPolicy, "sleep_policy"),
  ];
  if (violations.length > 0) throw invalid(violations);
  return merged;
}

export async function createPool(deps: RecordDeps, key: PoolKey, spec: PoolSpecInput): Promise<WorkerPool> {
  return audited(deps, { tenantId: key.tenantId, action: "pool_create", target: `${key.tenantId}/${key.poolId}` }, async () => {
    const violations = [...keyViolations(key), ...specViolations(spec)];
    if (violations.length > 0) throw invalid(violations);
    const now = timestamp(deps.clock);
    const draft: WorkerPool = {
      schemaVersion: SCHEMA_VERSION,
      tenantId: key.tenantId,
      poolId: key.poolId,
      image: DEFAULT_IMAGE,
      resources: DEFAULT_RESOURCES,
      desiredCounts: { running: 0, warm: 0, sleeping: 0 },
      hypervisor: "auto",
      seccompPolicy: "default",
      snapshotCompression: "none",
      metadataEnabled: true,
      sleepPolicy: { ...DEFAULT_SLEEP_POLICY },
      pinned: false,
      critical: false,
      currentRevision: "",
      createdAt: now,
      updatedAt: now,
    };
    const pool = applySpec(draft, spec);
    const { store } = deps;
    return store.withTenantLock(key.tenantId, async () => {
      const tenant = await store.getTenant(key.tenantId);
      if (!tenant) throw notFound(`tenant ${key.tenantId}`);
      if (await store.getPool(key.tenantId, key.poolId)) throw alreadyExists(`pool ${key.tenantId}/${key.poolId}`);
      const pools = await store.listPools(key.tenantId);
      assertQuota(tenant.tenantId, tenant.quotas, computeUsage(pools, []), { kind: "create_pool" });
      await store.putPool(pool);
      return pool;
    });
  });
}

export async function getPool(deps: RecordDeps, key: PoolKey): Promise<WorkerPool> {
  const violations = keyViolations(key);
  if (violations.length > 0) throw invalid(violations);
  const pool = await deps.store.getPool(key.tenantId, key.poolId);
  if (!pool) throw notFound(`pool ${key.tenantId}/${key.poolId}`);
  return pool;
}

export async function listPools(deps: RecordDeps, tenantId?: string): Promise<WorkerPool[]> {
  if (tenantId !== undefined) {
    const violations = idViolations(tenantId, "tenant_id");
    if (violations.length > 0) throw invalid(violations);
    if (!(await deps.store.getTenant(tenantId))) throw notFound(`tenant ${tenantId}`);
    return deps.store.listPools(tenantId);
  }
  const tenants = await deps.store.listTenants();
  const all = await Promise.all(tenants.map((t) => deps.store.listPools(t.tenantId)));
  return all.flat();
}

export async function updatePool(deps: RecordDeps, key: PoolKey, spec: PoolSpecInput): Promise<WorkerPool> {
  return audited(deps, { tenantId: key.tenantId, action: spec.desiredCounts && Object.keys(spec).length === 1 ? "pool_scale" : "pool_update", target: `${key.tenantId}/${key.poolId}` }, async () => {
    const violations = [...keyViolations(key), ...specViolations(spec)];
    if (violations.length > 0) throw invalid(violations);
    const { store } = deps;
    return store.withTenantLock(key.tenantId, async () => {
      const tenant = await store.getTenant(key.tenantId);
      if (!tenant) throw notFound(`tenant ${key.tenantId}`);
      const pool = await store.getPool(key.tenantId, key.poolId);
      if (!pool) throw notFound(`pool ${key.tenantId}/${key.poolId}`);
      const updated = { ...applySpec(pool, spec), updatedAt: timestamp(deps.clock) };
      if (spec.desiredCounts) await assertScaleWithinQuota(deps, updated);
      await store.putPool(updated);
      return updated;
    });
  });
}

/**
 * Desired counts must fit the tenant's quota together with every other pool's desired counts (quota.ts). Data disks
 * are left to instance create and start, which see the real usage including snapshots.
 */
async function assertScaleWithinQuota(deps: RecordDeps, pool: WorkerPool): Promise<void> {
  const tenant = await deps.store.getTenant(pool.tenantId);
  if (!tenant) throw notFound(`tenant ${pool.tenantId}`);
  const others = (await deps.store.listPools(pool.tenantId)).filter((p) => p.poolId !== pool.poolId);
  const desired = [...others, pool].map((p) => ({ counts: p.desiredCounts, resources: p.resources }));
  const excess = desiredCountsExcess(desired, tenant.quotas);
  const q = tenant.quotas;
  const wanted: Record<DesiredTotalExcess["limit"], (total: number) => string> = {
    maxRunning: (n) => `max_running ${q.maxRunning} < ${n} desired running`,
    maxWarm: (n) => `max_warm ${q.maxWarm} < ${n} desired warm`,
    maxVcpus: (n) => `max_vcpus ${q.maxVcpus} < ${n} vCPUs desired`,
    maxMemMib: (n) => `max_mem_mib ${q.maxMemMib} < ${n} MiB desired`,
    maxDiskGib: () => "",
  };
  const problems = excess.totals.filter((e) => e.limit !== "maxDiskGib").map((e) => wanted[e.limit](e.total));
  const own = excess.poolsAboveInstanceLimit.find((e) => e.index === desired.length - 1);
  if (own) problems.push(`max_instances_per_pool ${q.maxInstancesPerPool} < ${own.instances} instances desired`);
  if (problems.length > 0) {
    throw invalid([{ field: "desired_counts", rule: `must fit tenant ${tenant.tenantId}'s quota: ${problems.join(", ")}` }]);
  }
}

export async function scalePool(deps: RecordDeps, key: PoolKey, counts: Partial<DesiredCounts>): Promise<WorkerPool> {
  return updatePool(deps, key, { desiredCounts: counts });
}

export interface DestroyPoolInput extends PoolKey {
  /** Also destroy the pool's instance records; without it a pool with instances is refused. */
  force?: boolean;
}

export async function destroyPool(deps: RecordDeps, input: DestroyPoolInput): Promise<WorkerPool> {
  return audited(deps, { tenantId: input.tenantId, action: "pool_delete", target: `${input.tenantId}/${input.poolId}` }, async () => {
    const violations = keyViolations(input);
    if (violations.length > 0) throw invalid(violations);
    const { store } = deps;
    return store.withTenantLock(input.tenantId, async () => {
      const pool = await store.getPool(input.tenantId, input.poolId);
      if (!pool) throw notFound(`pool ${input.tenantId}/${input.poolId}`);
      const instances = await store.listInstances(input.tenantId, input.poolId);
      if (instances.length > 0 && !input.force) {
        throw failedPrecondition(
          `pool ${input.tenantId}/${input.poolId} still has ${instances.length} instance(s): destroy them first, or pass --force`,
        );
      }
      await store.deletePool(input.tenantId, input.poolId);
      return pool;
    });
  });
}
