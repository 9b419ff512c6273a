// Destroying a pool or a tenant that still has instances: every instance goes through the lifecycle's destroy
// (VMM stopped, TAP, cgroup and disks released) before the records go, and a tenant's network goes last.

import { invalid, notFound } from "../errors.js";
import { idViolations } from "../ids.js";
import type { Tenant, WorkerPool } from "../model.js";
import { destroyPool, type PoolKey } from "./pools.js";
import { destroyTenant } from "./tenants.js";
import { destroyInstance, tenantNetworkPlan, type DataPlaneDeps } from "./lifecycle.js";

async function destroyInstancesOf(deps: DataPlaneDeps, key: PoolKey): Promise<void> {
  for (const instance of await deps.store.listInstances(key.tenantId, key.poolId)) {
    await destroyInstance(deps, { ...key, instanceId: instance.instanceId });
  }
}

export async function destroyPoolCompletely(deps: DataPlaneDeps, key: PoolKey, force: boolean): Promise<WorkerPool> {
  const violations = [...idViolations(key.tenantId, "tenant_id"), ...idViolations(key.poolId, "pool_id")];
  if (violations.length > 0) throw invalid(violations);
  if (force) await destroyInstancesOf(deps, key);
  return destroyPool(deps, { ...key, force });
}

export async function destroyTenantCompletely(deps: DataPlaneDeps, tenantId: string, force: boolean): Promise<Tenant> {
  const violations = idViolations(tenantId, "tenant_id");
  if (violations.length > 0) throw invalid(violations);
  const tenant = await deps.store.getTenant(tenantId);
  if (!tenant) throw notFound(`tenant ${tenantId}`);
  if (force) {
    for (const pool of await deps.store.listPools(tenantId)) await destroyInstancesOf(deps, { tenantId, poolId: pool.poolId });
  }
  const destroyed = await destroyTenant(deps, { tenantId, force });
  await deps.network.removeTenant(tenantNetworkPlan(tenant, deps.metadataPort));
  return destroyed;
}
