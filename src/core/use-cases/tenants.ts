// Tenant records: create (with SSH key and network), read, update, destroy. Every input is validated in full before
// any side effect; a failure after the first write rolls the tenant back so nothing is left half created.

import { alreadyExists, failedPrecondition, invalid, notFound, type FieldViolation } from "../errors.js";
import { idViolations } from "../ids.js";
import { secretFilesViolations, type SecretFiles } from "../tenant-secrets.js";
import { DEFAULT_QUOTA, SCHEMA_VERSION, type Tenant, type TenantNetwork, type TenantQuota } from "../model.js";
import { bridgeName, NET_ID_MAX, netIdViolations } from "../naming.js";
import {
  allocateTenantNetwork,
  cidrsOverlap,
  cidrViolations,
  formatCidr,
  gatewayAddress,
  parseCidr,
  parseNetworkPool,
  type Cidr,
} from "../subnet.js";
import { labelsViolations, quotaViolations } from "../validation.js";
import { audited } from "./audit-trail.js";
import { timestamp, type RecordDeps } from "./deps.js";

export interface TenantNetworkInput {
  netId?: number;
  ipv4Subnet?: string;
}

export interface CreateTenantInput {
  tenantId: string;
  network?: TenantNetworkInput;
  quotas?: Partial<TenantQuota>;
  labels?: Record<string, string>;
}

export interface UpdateTenantInput {
  tenantId: string;
  quotas?: Partial<TenantQuota>;
  /** Labels to set; a key mapped to null is removed. */
  labels?: Record<string, string | null>;
  network?: TenantNetworkInput;
}

function networkInputViolations(network: TenantNetworkInput | undefined): FieldViolation[] {
  if (!network) return [];
  return [
    ...(network.netId === undefined ? [] : netIdViolations(network.netId, "network.net_id")),
    ...(network.ipv4Subnet === undefined ? [] : cidrViolations(network.ipv4Subnet, "network.ipv4_subnet")),
  ];
}

function toNetwork(netId: number, subnet: Cidr): TenantNetwork {
  return { netId, ipv4Subnet: formatCidr(subnet), gatewayIp: gatewayAddress(subnet), bridgeName: bridgeName(netId) };
}

/**
 * Picks the tenant's network: what the caller gave, checked against every other tenant (net_id and subnet must both
 * be free), with whatever part is missing allocated from the node's network pool.
 */
function planNetwork(deps: RecordDeps, tenantId: string, others: readonly Tenant[], input: TenantNetworkInput | undefined): TenantNetwork {
  const taken = others.map((t) => ({ netId: t.network.netId, subnet: parseCidr(t.network.ipv4Subnet, "network.ipv4_subnet") }));
  const violations: FieldViolation[] = [];
  const wantedSubnet = input?.ipv4Subnet === undefined ? undefined : parseCidr(input.ipv4Subnet, "network.ipv4_subnet");
  if (input?.netId !== undefined) {
    const holder = others.find((t) => t.network.netId === input.netId);
    if (holder) violations.push({ field: "network.net_id", rule: `must be unique: ${input.netId} belongs to tenant ${holder.tenantId}` });
  }
  if (wantedSubnet) {
    const holder = others.find((t) => cidrsOverlap(parseCidr(t.network.ipv4Subnet, "network.ipv4_subnet"), wantedSubnet));
    if (holder) {
      violations.push({
        field: "network.ipv4_subnet",
        rule: `must not overlap another tenant's subnet: ${formatCidr(wantedSubnet)} overlaps ${holder.network.ipv4Subnet} of tenant ${holder.tenantId}`,
      });
    }
  }
  if (violations.length > 0) throw invalid(violations);

  if (input?.netId !== undefined && wantedSubnet) return toNetwork(input.netId, wantedSubnet);
  const pool = parseNetworkPool(deps.networkPool.cidr, "network_pool");
  const allocated = allocateTenantNetwork(pool, deps.networkPool.prefixLen, taken);
  if (input?.netId !== undefined) {
    return toNetwork(input.netId, allocated.subnet);
  }
  if (wantedSubnet) {
    const usedIds = new Set(others.map((t) => t.network.netId));
    let netId = 0;
    while (usedIds.has(netId)) netId += 1;
    if (netId > NET_ID_MAX) throw invalid([{ field: "network.net_id", rule: `no free net_id left for tenant ${tenantId}` }]);
    return toNetwork(netId, wantedSubnet);
  }
  return toNetwork(allocated.netId, allocated.subnet);
}

export async function createTenant(deps: RecordDeps, input: CreateTenantInput): Promise<Tenant> {
  return audited(deps, { tenantId: input.tenantId, action: "tenant_create", target: input.tenantId, failureLog: "node" }, async () => {
    const violations = [
      ...idViolations(input.tenantId, "tenant_id"),
      ...networkInputViolations(input.network),
      ...quotaViolations(input.quotas ?? {}, "quotas"),
      ...labelsViolations(input.labels ?? {}, "labels"),
    ];
    if (violations.length > 0) throw invalid(violations);

    const { store } = deps;
    return store.withNodeLock(async () => {
      if (await store.getTenant(input.tenantId)) throw alreadyExists(`tenant ${input.tenantId}`);
      const others = await store.listTenants();
      const network = planNetwork(deps, input.tenantId, others, input.network);
      const now = timestamp(deps.clock);
      const key = deps.keys.ed25519(`mvm-tenant-${input.tenantId}`);
      const tenant: Tenant = {
        schemaVersion: SCHEMA_VERSION,
        tenantId: input.tenantId,
        quotas: { ...DEFAULT_QUOTA, ...input.quotas },
        network,
        sshPublicKey: key.publicKey,
        secretsEpoch: 0,
        labels: { ...input.labels },
        createdAt: now,
        updatedAt: now,
      };
      // The key goes first: a tenant record is never visible without its key. On any failure the whole tenant
      // directory goes, so a retry starts clean.
      try {
        await store.putTenantSshKey(tenant.tenantId, key);
        await store.putTenant(tenant);
      } catch (e) {
        await store.deleteTenant(tenant.tenantId).catch(() => undefined);
        throw e;
      }
      return tenant;
    });
  });
}

export async function getTenant(deps: RecordDeps, tenantId: string): Promise<Tenant> {
  const violations = idViolations(tenantId, "tenant_id");
  if (violations.length > 0) throw invalid(violations);
  const tenant = await deps.store.getTenant(tenantId);
  if (!tenant) throw notFound(`tenant ${tenantId}`);
  return tenant;
}

export async function listTenants(deps: RecordDeps): Promise<Tenant[]> {
  return deps.store.listTenants();
}

export async function updateTenant(deps: RecordDeps, input: UpdateTenantInput): Promise<Tenant> {
  return audited(deps, { tenantId: input.tenantId, action: "tenant_update", target: input.tenantId }, async () => {
    const labelsToSet = Object.fromEntries(Object.entries(input.labels ?? {}).filter(([, v]) => v !== null)) as Record<string, string>;
    const violations = [
      ...idViolations(input.tenantId, "tenant_id"),
      ...networkInputViolations(input.network),
      ...quotaViolations(input.quotas ?? {}, "quotas"),
      ...labelsViolations(labelsToSet, "labels"),
    ];
    if (violations.length > 0) throw invalid(violations);
    const { store } = deps;
    return store.withNodeLock(() =>
      store.withTenantLock(input.tenantId, async () => {
        const tenant = await store.getTenant(input.tenantId);
        if (!tenant) throw notFound(`tenant ${input.tenantId}`);
        let network = tenant.network;
        if (input.network && (input.network.netId !== undefined || input.network.ipv4Subnet !== undefined)) {
          const pools = await store.listPools(tenant.tenantId);
          if (pools.length > 0) {
            throw failedPrecondition(
              `tenant ${tenant.tenantId}: network cannot change while the tenant has pools (${pools.map((p) => p.poolId).join(", ")})`,
            );
          }
          const others = (await store.listTenants()).filter((t) => t.tenantId !== tenant.tenantId);
          network = planNetwork(deps, tenant.tenantId, others, {
            netId: input.network.netId ?? tenant.network.netId,
            ipv4Subnet: input.network.ipv4Subnet ?? tenant.network.ipv4Subnet,
          });
        }
        const labels = { ...tenant.labels };
        for (const [k, v] of Object.entries(input.labels ?? {})) {
          if (v === null) delete labels[k];
          else labels[k] = v;
        }
        const updated: Tenant = {
          ...tenant,
          quotas: { ...tenant.quotas, ...input.quotas },
          labels,
          network,
          updatedAt: timestamp(deps.clock),
        };
        await store.putTenant(updated);
        return updated;
      }),
    );
  });
}

export interface RotateSecretsInput {
  tenantId: string;
  /** The new secret set, replacing the old one entirely; absent: the same set, a new epoch (fresh secrets disks). */
  files?: SecretFiles;
}

/**
 * A new secrets epoch, with a new secret set when given. Running instances keep the disk they have; each start and
 * wake builds a fresh one from the set in force, and the guest's wake hook mounts it again. The set is written
 * before the tenant record: a crash in between leaves the new set under the old epoch and hash, which the next
 * rotation (a retry) puts right.
 */
export async function rotateSecrets(deps: RecordDeps, input: RotateSecretsInput): Promise<Tenant> {
  const files = input.files;
  const details: Record<string, string> = files === undefined ? { secrets: "kept" } : { secrets: "replaced", files: String(Object.keys(files).length) };
  return audited(deps, { tenantId: input.tenantId, action: "tenant_secrets_rotate", target: input.tenantId, details }, async () => {
    const violations = [...idViolations(input.tenantId, "tenant_id"), ...(files === undefined ? [] : secretFilesViolations(files, "secrets.files"))];
    if (violations.length > 0) throw invalid(violations);
    return deps.store.withTenantLock(input.tenantId, async () => {
      const tenant = await deps.store.getTenant(input.tenantId);
      if (!tenant) throw notFound(`tenant ${input.tenantId}`);
      const secretsHash = files === undefined ? (tenant.secretsHash ?? "") : await deps.store.putTenantSecrets(tenant.tenantId, files);
      // No hash at all for an empty set, as for a tenant that never had one.
      const { secretsHash: _previous, ...rest } = tenant;
      const rotated: Tenant = { ...rest, secretsEpoch: tenant.secretsEpoch + 1, ...(secretsHash === "" ? {} : { secretsHash }), updatedAt: timestamp(deps.clock) };
      await deps.store.putTenant(rotated);
      return rotated;
    });
  });
}

export interface DestroyTenantInput {
  tenantId: string;
  /** Also destroy the tenant's pools and instance records. Without it a tenant with pools is refused. */
  force?: boolean;
}

export async function destroyTenant(deps: RecordDeps, input: DestroyTenantInput): Promise<Tenant> {
  return audited(deps, { tenantId: input.tenantId, action: "tenant_delete", target: input.tenantId, successLog: "node" }, async () => {
    const violations = idViolations(input.tenantId, "tenant_id");
    if (violations.length > 0) throw invalid(violations);
    const { store } = deps;
    return store.withNodeLock(() =>
      store.withTenantLock(input.tenantId, async () => {
        const tenant = await store.getTenant(input.tenantId);
        if (!tenant) throw notFound(`tenant ${input.tenantId}`);
        const pools = await store.listPools(tenant.tenantId);
        if (pools.length > 0 && !input.force) {
          throw failedPrecondition(
            `tenant ${tenant.tenantId} still has pools (${pools.map((p) => p.poolId).join(", ")}): destroy them first, or pass --force`,
          );
        }
        await store.deleteTenant(tenant.tenantId);
        return tenant;
      }),
    );
  });
}
