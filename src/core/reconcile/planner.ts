// The reconcile planner (SPEC §9): measured node state + desired state → the ordered steps of one pass, each with
// the reason it is needed. Pure and level-based: it looks only at what is, never at the event that changed it, so
// planning against a converged node gives no step at all.
//
// The plan is made stage by stage on a simulated copy of the node, so that a dry run shows the whole pass (a tenant
// to create is followed by its pools, their builds and their instances):
//   1. tenants: create, or update changed quotas/labels (a network change only while the tenant has no pool);
//   2. pools: create, or update a changed spec; build when never built or the image source changed (only once the
//      pool wants or has instances);
//   3-4. scale each pool (scale-plan.ts), per tenant the steps that free capacity before those that take it;
//   5. prune unknown pools, then unknown tenants, when the document asks for it.
// The idle policy (step 6) is the executor's, after the steps.

import type { DesiredPool, DesiredState, DesiredTenant } from "../desired-state.js";
import type { ImageSource, Instance, Tenant, WorkerPool } from "../model.js";
import { formatCidr, parseCidr } from "../subnet.js";
import { planPoolScale } from "./scale-plan.js";
import type { ReconcileItemError, ReconcilePlan, ReconcileStep, TenantChanges } from "./steps.js";

export interface ObservedPool {
  pool: WorkerPool;
  /** Image source of the build that made the current revision; null when unknown or never built. */
  builtImage: ImageSource | null;
  /** Instance records, destroyed ones excluded. */
  instances: Instance[];
}

export interface ObservedTenant {
  tenant: Tenant;
  pools: ObservedPool[];
}

/** What a pass measures before planning: every tenant of the node with its pools and instances. */
export interface ObservedNode {
  nodeId: string;
  tenants: ObservedTenant[];
}

export interface PlanOptions {
  generation: number;
  nowMs: number;
}

/** Structural equality of plain data (records, specs): key order does not matter, array order does. */
export function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const other = b as unknown[];
    return a.length === other.length && a.every((v, i) => sameValue(v, other[i]));
  }
  const ka = Object.keys(a as object).filter((k) => (a as Record<string, unknown>)[k] !== undefined);
  const kb = Object.keys(b as object).filter((k) => (b as Record<string, unknown>)[k] !== undefined);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => sameValue((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

/** The fields of a pool the desired state sets; a difference in any of them is an update. */
const POOL_SPEC_FIELDS = [
  "image",
  "resources",
  "desiredCounts",
  "hypervisor",
  "seccompPolicy",
  "snapshotCompression",
  "metadataEnabled",
  "sleepPolicy",
  "pinned",
  "critical",
  "userData",
] as const;

export function changedPoolFields(pool: WorkerPool, desired: DesiredPool): string[] {
  // A pool record without user data has none: the document's "".
  const observed = { ...pool, userData: pool.userData ?? "" };
  return POOL_SPEC_FIELDS.filter((f) => !sameValue(observed[f], desired[f]));
}

function snake(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

function sameSubnet(a: string, b: string): boolean {
  try {
    return formatCidr(parseCidr(a, "ipv4_subnet")) === formatCidr(parseCidr(b, "ipv4_subnet"));
  } catch {
    return a === b;
  }
}

function tenantChanges(tenant: Tenant, desired: DesiredTenant): { changes: TenantChanges; what: string[]; network: boolean } {
  const changes: TenantChanges = {};
  const what: string[] = [];
  if (!sameValue(tenant.quotas, desired.quotas)) {
    changes.quotas = { ...desired.quotas };
    what.push(...Object.keys(desired.quotas).filter((k) => tenant.quotas[k as keyof Tenant["quotas"]] !== desired.quotas[k as keyof Tenant["quotas"]]).map((k) => `quotas.${snake(k)}`));
  }
  if (!sameValue(tenant.labels, desired.labels)) {
    const labels: Record<string, string | null> = { ...desired.labels };
    for (const key of Object.keys(tenant.labels)) if (!(key in desired.labels)) labels[key] = null;
    changes.labels = labels;
    what.push("labels");
  }
  const net = desired.network;
  const network = net !== null && (net.netId !== tenant.network.netId || !sameSubnet(net.ipv4Subnet, tenant.network.ipv4Subnet));
  if (network && net) changes.network = { netId: net.netId, ipv4Subnet: net.ipv4Subnet };
  return { changes, what, network };
}

/** A new pool in the simulation: created from the document, not yet built. */
function simulatedPool(tenantId: string, desired: DesiredPool): WorkerPool {
  return {
    schemaVersion: 1,
    tenantId,
    poolId: desired.poolId,
    image: desired.image,
    resources: desired.resources,
    desiredCounts: desired.desiredCounts,
    hypervisor: desired.hypervisor,
    seccompPolicy: desired.seccompPolicy,
    snapshotCompression: desired.snapshotCompression,
    metadataEnabled: desired.metadataEnabled,
    ...(desired.userData !== "" ? { userData: desired.userData } : {}),
    sleepPolicy: desired.sleepPolicy,
    pinned: desired.pinned,
    critical: desired.critical,
    currentRevision: "",
    createdAt: "",
    updatedAt: "",
  };
}

export function planReconcile(desired: DesiredState, observed: ObservedNode, options: PlanOptions): ReconcilePlan {
  const steps: ReconcileStep[] = [];
  const errors: ReconcileItemError[] = [];
  const planError = (e: Omit<ReconcileItemError, "attempt" | "nextRetryAtMs">) => errors.push({ ...e, attempt: 0, nextRetryAtMs: null });
  const observedTenants = new Map(observed.tenants.map((t) => [t.tenant.tenantId, t]));
  /** Pools of each listed tenant as they will be after stages 1-2: the simulation the later stages plan on. */
  const poolsAfter = new Map<string, Map<string, ObservedPool>>();

  // 1. tenants
  desired.tenants.forEach((dt, ti) => {
    const field = `tenants[${ti}]`;
    const target = { tenantId: dt.tenantId };
    const found = observedTenants.get(dt.tenantId);
    // Secrets never travel in desired state: a set other than the expected one can only be reported.
    const held = found?.tenant.secretsHash ?? "";
    if (dt.secretsHash !== "" && dt.secretsHash !== held) {
      planError({
        target,
        field: `${field}.secrets_hash`,
        kind: "failed_precondition",
        message: `tenant ${dt.tenantId} holds ${held === "" ? "no secret set" : `secret set ${held}`}, not ${dt.secretsHash}: rotate its secrets (TenantService.RotateSecrets, mvm tenant rotate-secrets)`,
        retryable: true,
      });
    }
    if (!found) {
      const net = dt.network ? `network ${dt.network.ipv4Subnet} (net_id ${dt.network.netId})` : "network allocated on this node";
      steps.push({ kind: "create_tenant", target, field, reason: `tenant is in the desired state but not on this node; ${net}`, tenant: dt });
      poolsAfter.set(dt.tenantId, new Map());
      return;
    }
    poolsAfter.set(dt.tenantId, new Map(found.pools.map((p) => [p.pool.poolId, p])));
    const { changes, what, network } = tenantChanges(found.tenant, dt);
    if (network) {
      if (found.pools.length > 0) {
        delete changes.network;
        planError({
          target,
          field: `${field}.network`,
          kind: "failed_precondition",
          message: `tenant ${dt.tenantId}: network cannot change from ${found.tenant.network.ipv4Subnet} (net_id ${found.tenant.network.netId}) while the tenant has pools (${found.pools.map((p) => p.pool.poolId).join(", ")}); empty it first`,
          retryable: true,
        });
      } else {
        what.push("network");
      }
    }
    if (Object.keys(changes).length > 0) {
      steps.push({ kind: "update_tenant", target, field, reason: `changed: ${what.join(", ")}`, changes });
    }
  });

  // 2. pools and their builds
  desired.tenants.forEach((dt, ti) => {
    const pools = poolsAfter.get(dt.tenantId) as Map<string, ObservedPool>;
    dt.pools.forEach((dp, pi) => {
      const field = `tenants[${ti}].pools[${pi}]`;
      const target = { tenantId: dt.tenantId, poolId: dp.poolId };
      let current = pools.get(dp.poolId);
      if (!current) {
        steps.push({ kind: "create_pool", target, field, reason: "pool is in the desired state but not on this node", pool: dp });
        current = { pool: simulatedPool(dt.tenantId, dp), builtImage: null, instances: [] };
        pools.set(dp.poolId, current);
      } else {
        const changed = changedPoolFields(current.pool, dp);
        if (changed.length > 0) {
          steps.push({ kind: "update_pool", target, field, reason: `changed: ${changed.map(snake).join(", ")}`, pool: dp });
          current = { ...current, pool: { ...simulatedPool(dt.tenantId, dp), currentRevision: current.pool.currentRevision } };
          pools.set(dp.poolId, current);
        }
      }
      // A pool that wants no instance and has none is not built until it does: a fleet-wide push of such a pool must
      // not start an image build on every node.
      const counts = dp.desiredCounts;
      const needsImage = counts.running + counts.warm + counts.sleeping > 0 || current.instances.length > 0;
      if (needsImage && (current.pool.currentRevision === "" || !sameValue(current.builtImage, dp.image))) {
        const reason =
          current.pool.currentRevision === ""
            ? "pool has no built revision"
            : `image source changed since revision ${current.pool.currentRevision.slice(0, 12)}; instances adopt the new revision at their next cold start`;
        steps.push({ kind: "build_pool", target, field: `${field}.image`, reason });
      }
    });
  });

  // 3-4. scale, per tenant: steps that free capacity first
  desired.tenants.forEach((dt, ti) => {
    const pools = poolsAfter.get(dt.tenantId) as Map<string, ObservedPool>;
    const down: ReconcileStep[] = [];
    const up: ReconcileStep[] = [];
    dt.pools.forEach((dp, pi) => {
      const current = pools.get(dp.poolId) as ObservedPool;
      const plan = planPoolScale({
        tenantId: dt.tenantId,
        poolId: dp.poolId,
        field: `tenants[${ti}].pools[${pi}].desired_counts`,
        desired: dp.desiredCounts,
        critical: dp.critical,
        instances: current.instances,
      });
      down.push(...plan.down);
      up.push(...plan.up);
    });
    steps.push(...down, ...up);
  });

  // 5. prune
  const listed = new Set(desired.tenants.map((t) => t.tenantId));
  if (desired.pruneUnknownPools) {
    for (const dt of desired.tenants) {
      const found = observedTenants.get(dt.tenantId);
      if (!found) continue;
      const wanted = new Set(dt.pools.map((p) => p.poolId));
      for (const op of found.pools) {
        if (wanted.has(op.pool.poolId)) continue;
        steps.push({
          kind: "delete_pool",
          target: { tenantId: dt.tenantId, poolId: op.pool.poolId },
          field: "prune_unknown_pools",
          reason: `pool is not in the desired state and prune_unknown_pools is set (${op.instances.length} instance(s) go with it)`,
        });
      }
    }
  }
  if (desired.pruneUnknownTenants) {
    for (const ot of observed.tenants) {
      if (listed.has(ot.tenant.tenantId)) continue;
      const instances = ot.pools.reduce((n, p) => n + p.instances.length, 0);
      steps.push({
        kind: "delete_tenant",
        target: { tenantId: ot.tenant.tenantId },
        field: "prune_unknown_tenants",
        reason: `tenant is not in the desired state and prune_unknown_tenants is set (${ot.pools.length} pool(s), ${instances} instance(s), network ${ot.tenant.network.bridgeName} go with it)`,
      });
    }
  }

  return { nodeId: observed.nodeId, generation: options.generation, steps, errors, computedAtMs: options.nowMs };
}
