// Tenant records ↔ mvm.v1.Tenant, and the optional parts of requests (quotas, network) → use-case inputs.

import { create } from "@bufbuild/protobuf";
import { DEFAULT_QUOTA, type Tenant, type TenantQuota } from "../../core/model.js";
import type { TenantNetworkInput } from "../../core/use-cases/tenants.js";
import {
  TenantNetworkSchema,
  TenantQuotaSchema,
  TenantSchema,
  type Tenant as ProtoTenant,
  type TenantNetwork as ProtoTenantNetwork,
  type TenantQuota as ProtoTenantQuota,
} from "../../../gen/mvm/v1/tenant_pb.js";
import { isoToTimestamp, requiredTimestampToIso } from "./timestamps.js";

export const QUOTA_FIELDS = [
  "maxVcpus",
  "maxMemMib",
  "maxRunning",
  "maxWarm",
  "maxPools",
  "maxInstancesPerPool",
  "maxDiskGib",
] as const satisfies readonly (keyof TenantQuota)[];

export function quotaToProto(q: TenantQuota): ProtoTenantQuota {
  return create(TenantQuotaSchema, { ...q });
}

/** Only the limits set on the message (proto3 optional): an absent one keeps its default or current value. */
export function quotaPatchFromProto(q: ProtoTenantQuota | undefined): Partial<TenantQuota> {
  const out: Partial<TenantQuota> = {};
  if (!q) return out;
  for (const field of QUOTA_FIELDS) {
    const value = q[field];
    if (value !== undefined) out[field] = value;
  }
  return out;
}

/** Every limit, absent ones at their defaults. */
export function quotaFromProto(q: ProtoTenantQuota | undefined): TenantQuota {
  return { ...DEFAULT_QUOTA, ...quotaPatchFromProto(q) };
}

/** net_id and ipv4_subnet as given; an empty subnet is "allocate one". The derived fields are ignored. */
export function networkInputFromProto(n: ProtoTenantNetwork | undefined): TenantNetworkInput | undefined {
  if (!n) return undefined;
  return { netId: n.netId, ...(n.ipv4Subnet === "" ? {} : { ipv4Subnet: n.ipv4Subnet }) };
}

export function tenantToProto(t: Tenant): ProtoTenant {
  return create(TenantSchema, {
    schemaVersion: t.schemaVersion,
    tenantId: t.tenantId,
    quotas: quotaToProto(t.quotas),
    network: create(TenantNetworkSchema, { ...t.network }),
    sshPublicKey: t.sshPublicKey,
    secretsEpoch: BigInt(t.secretsEpoch),
    secretsHash: t.secretsHash ?? "",
    labels: { ...t.labels },
    createdAt: isoToTimestamp(t.createdAt),
    updatedAt: isoToTimestamp(t.updatedAt),
  });
}

export function tenantFromProto(t: ProtoTenant): Tenant {
  const network = t.network ?? create(TenantNetworkSchema);
  return {
    schemaVersion: t.schemaVersion,
    tenantId: t.tenantId,
    quotas: quotaFromProto(t.quotas),
    network: { netId: network.netId, ipv4Subnet: network.ipv4Subnet, gatewayIp: network.gatewayIp, bridgeName: network.bridgeName },
    sshPublicKey: t.sshPublicKey,
    secretsEpoch: Number(t.secretsEpoch),
    ...(t.secretsHash !== "" ? { secretsHash: t.secretsHash } : {}),
    labels: { ...t.labels },
    createdAt: requiredTimestampToIso(t.createdAt),
    updatedAt: requiredTimestampToIso(t.updatedAt),
  };
}
