// Instance records: create (quota, IP, TAP and MAC allocated under the tenant lock), read, list, destroy.
// Booting comes with the data plane; these use cases only own the records.

import { invalid, notFound, type FieldViolation } from "../errors.js";
import { idViolations, instanceIdViolations, newInstanceId } from "../ids.js";
import { INSTANCE_STATUSES, SCHEMA_VERSION, type Instance, type InstanceStatus, type WorkerPool } from "../model.js";
import { macAddress, tapName } from "../naming.js";
import { assertQuota, computeUsage } from "../quota.js";
import { allocateGuestAddress, parseCidr } from "../subnet.js";
import { enumViolations } from "../validation.js";
import { audited } from "./audit-trail.js";
import { timestamp, type RecordDeps } from "./deps.js";

export interface InstanceKey {
  tenantId: string;
  poolId: string;
  instanceId: string;
}

export interface InstanceFilter {
  tenantId?: string;
  poolId?: string;
  status?: InstanceStatus;
}

function keyViolations(key: InstanceKey): FieldViolation[] {
  return [
    ...idViolations(key.tenantId, "tenant_id"),
    ...idViolations(key.poolId, "pool_id"),
    ...instanceIdViolations(key.instanceId, "instance_id"),
  ];
}

async function allInstanceIds(deps: RecordDeps): Promise<Set<string>> {
  const ids = new Set<string>();
  for (const tenant of await deps.store.listTenants()) {
    for (const pool of await deps.store.listPools(tenant.tenantId)) {
      for (const i of await deps.store.listInstances(tenant.tenantId, pool.poolId)) ids.add(i.instanceId);
    }
  }
  return ids;
}

async function tenantInstances(deps: RecordDeps, pools: readonly WorkerPool[]): Promise<Instance[]> {
  const lists = await Promise.all(pools.map((p) => deps.store.listInstances(p.tenantId, p.poolId)));
  return lists.flat();
}

export async function createInstance(deps: RecordDeps, key: { tenantId: string; poolId: string }): Promise<Instance> {
  return audited(deps, { tenantId: key.tenantId, action: "instance_create", target: `${key.tenantId}/${key.poolId}` }, async () => {
    const violations = [...idViolations(key.tenantId, "tenant_id"), ...idViolations(key.poolId, "pool_id")];
    if (violations.length > 0) throw invalid(violations);
    const { store } = deps;
    return store.withTenantLock(key.tenantId, async () => {
      const tenant = await store.getTenant(key.tenantId);
      if (!tenant) throw notFound(`tenant ${key.tenantId}`);
      const pool = await store.getPool(key.tenantId, key.poolId);
      if (!pool) throw notFound(`pool ${key.tenantId}/${key.poolId}`);
      const pools = await store.listPools(key.tenantId);
      const instances = await tenantInstances(deps, pools);
      assertQuota(tenant.tenantId, tenant.quotas, computeUsage(pools, instances), {
        kind: "create_instance",
        poolId: pool.poolId,
        dataDiskMib: pool.resources.dataDiskMib,
      });

      const subnet = parseCidr(tenant.network.ipv4Subnet, "network.ipv4_subnet");
      const usedIps = new Set(instances.filter((i) => i.status !== "destroyed").map((i) => i.net.guestIp));
      const { ip, offset } = allocateGuestAddress(subnet, usedIps);
      // Instance IDs are unique on the node, not only in the tenant: runtime paths and cgroups are named by them.
      const taken = await allInstanceIds(deps);
      const instanceId = newInstanceId(deps.ids.randomHex.bind(deps.ids), (id) => taken.has(id));
      const now = timestamp(deps.clock);
      const instance: Instance = {
        schemaVersion: SCHEMA_VERSION,
        instanceId,
        tenantId: tenant.tenantId,
        poolId: pool.poolId,
        status: "created",
        revision: "",
        net: {
          tapName: tapName(tenant.network.netId, offset),
          mac: macAddress(tenant.network.netId, offset),
          guestIp: ip,
          gatewayIp: tenant.network.gatewayIp,
          prefixLen: subnet.prefixLen,
        },
        vmm: null,
        conditions: [],
        idle: { idleS: 0, cpuPct: 0, netBytes: 0, lastSampleAt: null },
        createdAt: now,
        updatedAt: now,
        lastStartedAt: null,
        lastStoppedAt: null,
        lastSnapshotAt: null,
        healthy: false,
        lastHealthCheckAt: null,
      };
      await store.putInstance(instance);
      return instance;
    });
  });
}

export async function getInstance(deps: RecordDeps, key: InstanceKey): Promise<Instance> {
  const violations = keyViolations(key);
  if (violations.length > 0) throw invalid(violations);
  const instance = await deps.store.getInstance(key.tenantId, key.poolId, key.instanceId);
  if (!instance) throw notFound(`instance ${key.tenantId}/${key.poolId}/${key.instanceId}`);
  return instance;
}

export async function listInstances(deps: RecordDeps, filter: InstanceFilter = {}): Promise<Instance[]> {
  const violations = [
    ...(filter.tenantId === undefined ? [] : idViolations(filter.tenantId, "tenant_id")),
    ...(filter.poolId === undefined ? [] : idViolations(filter.poolId, "pool_id")),
    ...(filter.status === undefined ? [] : enumViolations(filter.status, INSTANCE_STATUSES, "status")),
  ];
  if (violations.length > 0) throw invalid(violations);
  const { store } = deps;
  const tenants = filter.tenantId === undefined ? await store.listTenants() : [await store.getTenant(filter.tenantId)];
  if (filter.tenantId !== undefined && !tenants[0]) throw notFound(`tenant ${filter.tenantId}`);
  const result: Instance[] = [];
  for (const tenant of tenants) {
    if (!tenant) continue;
    let pools = await store.listPools(tenant.tenantId);
    if (filter.poolId !== undefined) {
      pools = pools.filter((p) => p.poolId === filter.poolId);
      if (filter.tenantId !== undefined && pools.length === 0) throw notFound(`pool ${tenant.tenantId}/${filter.poolId}`);
    }
    result.push(...(await tenantInstances(deps, pools)));
  }
  return result.filter((i) => filter.status === undefined || i.status === filter.status);
}
