// TenantService on the tenant use cases.

import type { ServiceImpl } from "@connectrpc/connect";
import { invalid, type FieldViolation } from "../../core/errors.js";
import { DEFAULT_QUOTA, type Tenant, type TenantQuota } from "../../core/model.js";
import { destroyInstance, tenantNetworkPlan } from "../../core/use-cases/lifecycle.js";
import { createTenant, destroyTenant, getTenant, listTenants, rotateSecrets, updateTenant, type UpdateTenantInput } from "../../core/use-cases/tenants.js";
import {
  CreateTenantRequestSchema,
  DeleteTenantRequestSchema,
  RotateSecretsRequestSchema,
  TenantService,
  UpdateTenantRequestSchema,
  type UpdateTenantRequest,
} from "../../../gen/mvm/v1/tenant_service_pb.js";
import type { ApiRuntime } from "../api-deps.js";
import { networkInputFromProto, QUOTA_FIELDS, quotaPatchFromProto, tenantToProto } from "../convert/tenant.js";
import { filterKeyOf, paginate } from "../paging.js";
import { callInfo, isOperator } from "../policy.js";
import type { ServiceKit } from "./service-kit.js";

function snakeCase(s: string): string {
  return s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

export function hasLabels(labels: Readonly<Record<string, string>>, wanted: Readonly<Record<string, string>>): boolean {
  return Object.entries(wanted).every(([k, v]) => labels[k] === v);
}

/** The changes an UpdateTenantRequest asks for, from its update mask. `current` supplies the labels being replaced. */
export function tenantUpdateFromMask(req: UpdateTenantRequest, current: Tenant): UpdateTenantInput {
  const violations: FieldViolation[] = [];
  const paths = req.updateMask?.paths ?? [];
  const input: UpdateTenantInput = { tenantId: req.tenantId };
  if (paths.length === 0) violations.push({ field: "update_mask", rule: "must name at least one of quotas, quotas.<limit>, network, labels" });
  paths.forEach((raw, index) => {
    const path = snakeCase(raw);
    if (path === "quotas") {
      input.quotas = { ...input.quotas, ...quotaPatchFromProto(req.quotas) };
    } else if (path.startsWith("quotas.")) {
      const limit = QUOTA_FIELDS.find((f) => snakeCase(f) === path.slice("quotas.".length));
      if (limit === undefined) violations.push({ field: `update_mask.paths[${index}]`, rule: `must name a limit of TenantQuota (got ${JSON.stringify(raw)})` });
      // A limit named in the mask but unset on the message goes back to its default.
      else input.quotas = { ...input.quotas, [limit]: req.quotas?.[limit] ?? DEFAULT_QUOTA[limit as keyof TenantQuota] };
    } else if (path === "network") {
      const network = networkInputFromProto(req.network);
      if (network === undefined) violations.push({ field: "network", rule: "is required when update_mask names network" });
      else input.network = network;
    } else if (path === "labels") {
      const labels: Record<string, string | null> = Object.fromEntries(Object.keys(current.labels).map((k) => [k, null]));
      Object.assign(labels, req.labels);
      input.labels = labels;
    } else {
      violations.push({ field: `update_mask.paths[${index}]`, rule: `must be quotas, quotas.<limit>, network or labels (got ${JSON.stringify(raw)})` });
    }
  });
  if (violations.length > 0) throw invalid(violations);
  return input;
}

/** Destroys every instance of a tenant on the data plane (VMM, TAP, cgroup, disks) before its records go. */
async function destroyTenantInstances(runtime: ApiRuntime, tenantId: string): Promise<void> {
  for (const pool of await runtime.store.listPools(tenantId)) {
    for (const i of await runtime.store.listInstances(tenantId, pool.poolId)) {
      await destroyInstance(runtime, { tenantId, poolId: pool.poolId, instanceId: i.instanceId });
    }
  }
}

export function tenantService(kit: ServiceKit): ServiceImpl<typeof TenantService> {
  return {
    async createTenant(req, context) {
      const call = callInfo(context);
      return kit.once(call, CreateTenantRequestSchema, req, req.requestId, async () => {
        const tenant = await createTenant(kit.runtimeFor(call), {
          tenantId: req.tenantId,
          quotas: quotaPatchFromProto(req.quotas),
          network: networkInputFromProto(req.network),
          labels: { ...req.labels },
        });
        return { tenant: tenantToProto(tenant) };
      });
    },

    async getTenant(req, context) {
      const call = callInfo(context);
      await kit.policy.requireTenant(call, req.tenantId);
      return { tenant: tenantToProto(await getTenant(kit.runtimeFor(call), req.tenantId)) };
    },

    async listTenants(req, context) {
      const call = callInfo(context);
      const { caller } = call;
      const all = await listTenants(kit.runtimeFor(call));
      const visible = all
        .filter((t) => isOperator(caller) || (caller.kind === "tenant" && t.tenantId === caller.tenantId))
        .filter((t) => hasLabels(t.labels, req.labels))
        .sort((a, b) => (a.tenantId < b.tenantId ? -1 : 1));
      const page = paginate(visible, (t) => t.tenantId, req, filterKeyOf({ labels: req.labels }));
      return { tenants: page.items.map(tenantToProto), nextPageToken: page.nextPageToken };
    },

    async updateTenant(req, context) {
      const call = callInfo(context);
      return kit.once(call, UpdateTenantRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call);
        const current = await getTenant(runtime, req.tenantId);
        const tenant = await updateTenant(runtime, tenantUpdateFromMask(req, current));
        return { tenant: tenantToProto(tenant) };
      });
    },

    async deleteTenant(req, context) {
      const call = callInfo(context);
      return kit.once(call, DeleteTenantRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call);
        const tenant = await getTenant(runtime, req.tenantId);
        const pools = await runtime.store.listPools(tenant.tenantId);
        if (pools.length === 0 || req.force) {
          await destroyTenantInstances(runtime, tenant.tenantId);
          // The bridge and its rules go before the record, so a failure here leaves a tenant that can be deleted again.
          await runtime.network.removeTenant(tenantNetworkPlan(tenant, runtime.metadataPort));
        }
        await destroyTenant(runtime, { tenantId: tenant.tenantId, force: req.force });
        return {};
      });
    },

    async rotateSecrets(req, context) {
      const call = callInfo(context);
      return kit.once(call, RotateSecretsRequestSchema, req, req.requestId, async () => {
        const files = req.secrets === undefined ? undefined : { ...req.secrets.files };
        return { tenant: tenantToProto(await rotateSecrets(kit.runtimeFor(call), { tenantId: req.tenantId, ...(files === undefined ? {} : { files }) })) };
      });
    },
  };
}
