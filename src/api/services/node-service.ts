// NodeService: host facts, usage, network checks, disk use and garbage collection.

import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { invalid } from "../../core/errors.js";
import { idViolations } from "../../core/ids.js";
import type { Instance, InstanceStatus, Tenant, WorkerPool } from "../../core/model.js";
import { INSTANCE_STATUSES } from "../../core/model.js";
import { computeUsage } from "../../core/quota.js";
import { holdsReservations, reservedTaps } from "../../core/reservations.js";
import { collectGarbage } from "../../core/use-cases/garbage.js";
import { tenantNetworkPlan } from "../../core/use-cases/lifecycle.js";
import type { NetworkCheck as DomainNetworkCheck } from "../../core/data-plane-ports.js";
import { NetworkCheckKind, NetworkCheckSchema, StatusCountSchema, TenantStatsSchema, type StatusCount } from "../../../gen/mvm/v1/node_pb.js";
import { CollectGarbageRequestSchema, NodeService, VerifyNetworkRequestSchema } from "../../../gen/mvm/v1/node_service_pb.js";
import type { ApiRuntime, DiskReport } from "../api-deps.js";
import { instanceStatusToProto } from "../convert/enums.js";
import { garbageItemToProto } from "../convert/garbage.js";
import { instanceRefOf } from "../convert/instance.js";
import { callInfo } from "../policy.js";
import type { ServiceKit } from "./service-kit.js";

const BYTES_PER_GIB = 1024 ** 3;


function statusCounts(instances: readonly Instance[]): StatusCount[] {
  const counts = new Map<InstanceStatus, number>();
  for (const i of instances) counts.set(i.status, (counts.get(i.status) ?? 0) + 1);
  return INSTANCE_STATUSES.filter((s) => counts.has(s)).map((s) => create(StatusCountSchema, { status: instanceStatusToProto(s), count: counts.get(s) ?? 0 }));
}

/** A check name of the Network port (`bridge_exists`, `nat-rule`) as the contract's enum. */
export function networkCheckKindOf(name: string): NetworkCheckKind {
  const key = name.toUpperCase().replace(/[^A-Z0-9]+/g, "_") as keyof typeof NetworkCheckKind;
  const value = NetworkCheckKind[key];
  return typeof value === "number" ? value : NetworkCheckKind.UNSPECIFIED;
}

function networkCheckToProto(c: DomainNetworkCheck) {
  const kind = networkCheckKindOf(c.check);
  // A check the contract has no name for keeps its own name in the detail rather than being dropped.
  const detail = kind === NetworkCheckKind.UNSPECIFIED ? `${c.check}: ${c.detail}` : c.detail;
  return create(NetworkCheckSchema, { kind, ok: c.ok, detail, fixed: false });
}

async function tenantsInScope(runtime: ApiRuntime, tenantId: string | undefined): Promise<Tenant[]> {
  if (tenantId === undefined) return (await runtime.store.listTenants()).sort((a, b) => (a.tenantId < b.tenantId ? -1 : 1));
  const violations = idViolations(tenantId, "tenant_id");
  if (violations.length > 0) throw invalid(violations);
  const tenant = await runtime.store.getTenant(tenantId);
  return tenant === null ? [] : [tenant];
}

async function tenantRecords(runtime: ApiRuntime, tenant: Tenant): Promise<{ pools: WorkerPool[]; instances: Instance[] }> {
  const pools = await runtime.store.listPools(tenant.tenantId);
  const instances = (await Promise.all(pools.map((p) => runtime.store.listInstances(tenant.tenantId, p.poolId)))).flat();
  return { pools, instances };
}

function diskUsageToProto(report: DiskReport, quotas: ReadonlyMap<string, number>) {
  return {
    dataRoot: report.dataRoot,
    filesystemBytes: BigInt(report.filesystemBytes),
    freeBytes: BigInt(report.freeBytes),
    reserveBytes: BigInt(report.reserveBytes),
    imageCacheBytes: BigInt(report.imageCacheBytes),
    tenants: report.tenants.map((t) => {
      const pools = t.pools.map((p) => {
        const total = p.artifactsBytes + p.instancesBytes + p.snapshotsBytes;
        return {
          poolId: p.poolId,
          artifactsBytes: BigInt(p.artifactsBytes),
          instancesBytes: BigInt(p.instancesBytes),
          snapshotsBytes: BigInt(p.snapshotsBytes),
          totalBytes: BigInt(total),
          revisions: p.revisions,
        };
      });
      const total = pools.reduce((n, p) => n + p.totalBytes, BigInt(t.otherBytes));
      return { tenantId: t.tenantId, pools, totalBytes: total, quotaBytes: BigInt((quotas.get(t.tenantId) ?? 0) * BYTES_PER_GIB) };
    }),
  };
}

export function nodeService(kit: ServiceKit): ServiceImpl<typeof NodeService> {
  const { deps } = kit;
  return {
    async getNodeInfo() {
      return { node: await deps.node.nodeInfo() };
    },

    async getNodeStats(req, context) {
      const call = callInfo(context);
      const scope = await kit.policy.scopeTenant(call, req.tenantId, "tenant_id");
      const runtime = kit.runtimeFor(call);
      const info = await deps.node.nodeInfo();
      // Totals cover the whole node for operators; a tenant caller's figures never include another tenant.
      const totalsScope = call.caller.kind === "tenant" ? scope : undefined;
      const all = await tenantsInScope(runtime, totalsScope);
      const disk = await deps.node.diskUsage(totalsScope);
      const diskByTenant = new Map(disk.tenants.map((t) => [t.tenantId, t] as const));
      const allInstances: Instance[] = [];
      let vcpus = 0;
      let memMib = 0;
      const tenants = [];
      for (const tenant of all) {
        const { pools, instances } = await tenantRecords(runtime, tenant);
        const usage = computeUsage(pools, instances);
        allInstances.push(...instances);
        vcpus += usage.vcpus;
        memMib += usage.memMib;
        if (scope !== undefined && tenant.tenantId !== scope) continue;
        const tenantDisk = diskByTenant.get(tenant.tenantId);
        tenants.push(
          create(TenantStatsSchema, {
            tenantId: tenant.tenantId,
            instancesByStatus: statusCounts(instances),
            vcpusInUse: usage.vcpus,
            memMibInUse: usage.memMib,
            snapshotBytes: BigInt(tenantDisk?.pools.reduce((n, p) => n + p.snapshotsBytes, 0) ?? 0),
            dataDiskBytes: BigInt(tenantDisk?.pools.reduce((n, p) => n + p.dataDiskBytes, 0) ?? 0),
            pools: pools.length,
          }),
        );
      }
      const snapshotBytes = disk.tenants.reduce((n, t) => n + t.pools.reduce((m, p) => m + p.snapshotsBytes, 0), 0);
      return {
        stats: {
          nodeId: info.nodeId,
          at: timestampNow(),
          instancesByStatus: statusCounts(allInstances),
          vcpusInUse: vcpus,
          memMibInUse: memMib,
          vcpusTotal: info.vcpus,
          memMibTotal: info.memMib,
          snapshotBytes: BigInt(snapshotBytes),
          tenants,
        },
      };
    },

    async getCapabilities(req) {
      return { capabilities: await deps.node.capabilities(req.refresh) };
    },

    async verifyNetwork(req, context) {
      const call = callInfo(context);
      return kit.once(call, VerifyNetworkRequestSchema, req, req.fix ? req.requestId : "", async () => {
        const runtime = kit.runtimeFor(call);
        const tenants = await tenantsInScope(runtime, req.tenantId === "" ? undefined : req.tenantId);
        if (req.tenantId !== "" && tenants.length === 0) {
          throw invalid([{ field: "tenant_id", rule: `must name a tenant of this node (no tenant ${req.tenantId})` }]);
        }
        const reports = [];
        for (const tenant of tenants) {
          const { instances } = await tenantRecords(runtime, tenant);
          // A TAP lives from start to stop and is kept while an instance sleeps: TAPs of stopped instances are released.
          const withTap = instances.filter(holdsReservations);
          const plan = tenantNetworkPlan(tenant, runtime.metadataPort);
          const report = await runtime.network.verify(plan, reservedTaps(withTap), req.fix);
          if (req.fix) {
            await runtime.audit.append({
              tenantId: tenant.tenantId,
              actor: runtime.actor ?? { kind: "system", id: "agent" },
              action: "network_repair",
              target: tenant.tenantId,
              outcome: report.ok ? "success" : "failure",
              reason: report.ok ? "" : report.checks.filter((c) => !c.ok).map((c) => `${c.check}: ${c.detail}`).join("; "),
              details: { bridge: report.bridgeName },
            });
          }
          const missing = new Set(report.missingTaps);
          reports.push({
            tenantId: tenant.tenantId,
            bridgeName: report.bridgeName,
            checks: report.checks.map(networkCheckToProto),
            orphanTaps: [...report.strayTaps],
            instancesWithoutTap: withTap.filter((i) => missing.has(i.net.tapName)).map(instanceRefOf),
            ok: report.ok,
          });
        }
        return { tenants: reports.map(({ ok: _ok, ...r }) => r), ok: reports.every((r) => r.ok) };
      });
    },

    async getDiskUsage(req, context) {
      const call = callInfo(context);
      const runtime = kit.runtimeFor(call);
      const tenants = await tenantsInScope(runtime, req.tenantId === "" ? undefined : req.tenantId);
      const report = await deps.node.diskUsage(req.tenantId === "" ? undefined : req.tenantId);
      return diskUsageToProto(report, new Map(tenants.map((t) => [t.tenantId, t.quotas.maxDiskGib] as const)));
    },

    async collectGarbage(req, context) {
      const call = callInfo(context);
      return kit.once(call, CollectGarbageRequestSchema, req, req.apply ? req.requestId : "", async () => {
        const report = await collectGarbage(kit.runtimeFor(call), { apply: req.apply, keepRevisions: req.keepRevisions });
        return {
          items: report.items.map(garbageItemToProto),
          reclaimedBytes: BigInt(report.reclaimedBytes),
          applied: report.applied,
        };
      });
    },
  };
}
