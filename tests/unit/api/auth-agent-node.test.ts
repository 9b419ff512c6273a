import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AgentService } from "../../../gen/mvm/v1/agent_service_pb.js";
import { AuditAction } from "../../../gen/mvm/v1/audit_pb.js";
import { DesiredStateSchema } from "../../../gen/mvm/v1/desired_state_pb.js";
import { BadRequestDetailSchema } from "../../../gen/mvm/v1/errors_pb.js";
import { InstanceService } from "../../../gen/mvm/v1/instance_service_pb.js";
import { GarbageKind } from "../../../gen/mvm/v1/node_pb.js";
import { NodeService } from "../../../gen/mvm/v1/node_service_pb.js";
import { PoolService } from "../../../gen/mvm/v1/pool_service_pb.js";
import { ReconcileService } from "../../../gen/mvm/v1/reconcile_service_pb.js";
import { TenantService } from "../../../gen/mvm/v1/tenant_service_pb.js";
import { METHOD_ACCESS } from "../../../src/api/auth.js";
import { MVM_SERVICES } from "../../../src/api/routes.js";
import { createHarness, type Harness } from "./api-harness.js";
import { expectCode, take } from "./expect-rpc.js";

let h: Harness;

beforeEach(async () => {
  h = await createHarness();
});
afterEach(async () => {
  await h.close();
});

const spec = { image: { source: { case: "debian" as const, value: {} } }, resources: { vcpus: 1, memMib: 256 } };

async function twoTenants() {
  const tenants = h.client(TenantService, "admin");
  const pools = h.client(PoolService, "admin");
  const instances = h.client(InstanceService, "admin");
  const refs: Record<string, { tenantId: string; poolId: string; instanceId: string }> = {};
  for (const tenantId of ["acme", "other"]) {
    await tenants.createTenant({ tenantId });
    await pools.createPool({ pool: { tenantId, poolId: "web" }, spec });
    const i = (await instances.createInstance({ pool: { tenantId, poolId: "web" } })).instance!;
    refs[tenantId] = { tenantId, poolId: "web", instanceId: i.instanceId };
  }
  return refs as { acme: { tenantId: string; poolId: string; instanceId: string }; other: { tenantId: string; poolId: string; instanceId: string } };
}

/** A built revision, so that the pool's instances can start. */
async function build(tenantId: string) {
  for await (const _ of h.client(PoolService, "admin").buildPool({ pool: { tenantId, poolId: "web" } })) void _;
}

async function denials() {
  return (await h.audit.tail("", 100)).filter((e) => e.action === "permission_deny");
}

describe("authentication", () => {
  it("refuses a call without an identity, and a certificate without a SPIFFE ID", async () => {
    await expectCode(h.client(AgentService, "anonymous").getVersion({}), Code.Unauthenticated);
    const error = await expectCode(h.client(AgentService, "nobody").getVersion({}), Code.Unauthenticated);
    expect(error.rawMessage).toMatch(/no mvm identity in trust domain mvm.test/);
  });

  it("treats the local socket caller as admin", async () => {
    await h.client(TenantService, "local").createTenant({ tenantId: "acme" });
    const entry = (await h.audit.tail("acme", 5)).find((e) => e.action === "tenant_create");
    expect(entry?.actor).toEqual({ kind: "local", id: "local:uid=0" });
  });

  it("records the certificate identity as the actor", async () => {
    await h.client(TenantService, "coordinator").createTenant({ tenantId: "acme" });
    const entry = (await h.audit.tail("acme", 5)).find((e) => e.action === "tenant_create");
    expect(entry?.actor).toEqual({ kind: "coordinator", id: "spiffe://mvm.test/coordinator" });
  });

  it("classifies every method of the contract", () => {
    for (const service of MVM_SERVICES) {
      for (const method of service.methods) {
        const name = `${service.typeName}/${method.name}`;
        const known = name in METHOD_ACCESS;
        // Methods left out are operator-only by default; the tenant-facing ones must be listed.
        if (service.typeName.endsWith("InstanceService") || service.typeName.endsWith("PoolService")) expect(known, name).toBe(true);
      }
    }
  });
});

describe("tenant identities", () => {
  it("see only their own tenant in lists and watches", async () => {
    const refs = await twoTenants();
    const asAcme = h.client(InstanceService, "tenant/acme");
    expect((await asAcme.listInstances({})).instances.map((i) => i.tenantId)).toEqual(["acme"]);
    expect((await h.client(TenantService, "tenant/acme").listTenants({})).tenants.map((t) => t.tenantId)).toEqual(["acme"]);
    expect((await h.client(PoolService, "tenant/acme").listPools({})).pools.map((p) => p.tenantId)).toEqual(["acme"]);
    const events = await take(asAcme.watchInstances({}), 2);
    expect(events.map((e) => e.event.case)).toEqual(["upsert", "initialStateComplete"]);
    expect(events[0]?.event.case === "upsert" && events[0].event.value.instanceId).toBe(refs.acme.instanceId);
  });

  it("get PermissionDenied acting on another tenant, and the denial is audited", async () => {
    const refs = await twoTenants();
    const asAcme = h.client(InstanceService, "tenant/acme");
    await asAcme.getInstance({ instance: refs.acme });
    const error = await expectCode(asAcme.startInstance({ instance: refs.other }), Code.PermissionDenied);
    expect(error.rawMessage).toMatch(/tenant\/acme may not act on tenant "other"/);
    await expectCode(asAcme.getInstance({ instance: { ...refs.other, instanceId: "i-00000000" } }), Code.PermissionDenied);
    await expectCode(h.client(TenantService, "tenant/acme").getTenant({ tenantId: "other" }), Code.PermissionDenied);
    const audited = await denials();
    expect(audited.length).toBeGreaterThanOrEqual(3);
    expect(audited[0]).toMatchObject({
      actor: { kind: "tenant", id: "spiffe://mvm.test/tenant/acme" },
      outcome: "denied",
      target: `other/web/${refs.other.instanceId}`,
      details: expect.objectContaining({ rpc: "mvm.v1.InstanceService/StartInstance" }),
    });
  });

  it("get PermissionDenied for a filter naming another tenant", async () => {
    await twoTenants();
    await expectCode(h.client(InstanceService, "tenant/acme").listInstances({ filter: { tenantId: "other" } }), Code.PermissionDenied);
    await expectCode(take(h.client(InstanceService, "tenant/acme").watchInstances({ filter: { tenantId: "other" } }), 1), Code.PermissionDenied);
    await expectCode(h.client(PoolService, "tenant/acme").listPools({ tenantId: "other" }), Code.PermissionDenied);
  });

  it("get PermissionDenied on node-level and operator RPCs", async () => {
    await expectCode(h.client(TenantService, "tenant/acme").createTenant({ tenantId: "x" }), Code.PermissionDenied);
    await expectCode(h.client(NodeService, "tenant/acme").collectGarbage({}), Code.PermissionDenied);
    await expectCode(h.client(NodeService, "tenant/acme").verifyNetwork({ fix: true }), Code.PermissionDenied);
    await expectCode(h.client(NodeService, "tenant/acme").getNodeStats({ tenantId: "other" }), Code.PermissionDenied);
    await expectCode(h.client(AgentService, "tenant/acme").rotateCertificate({}), Code.PermissionDenied);
    await expectCode(h.client(AgentService, "tenant/acme").tailAudit({ tenantId: "" }), Code.PermissionDenied);
    expect((await denials()).map((d) => d.details.rpc)).toEqual(
      expect.arrayContaining(["mvm.v1.TenantService/CreateTenant", "mvm.v1.NodeService/CollectGarbage", "mvm.v1.AgentService/RotateCertificate"]),
    );
  });

  it("may act within their own tenant", async () => {
    await twoTenants();
    const asAcme = h.client(PoolService, "tenant/acme");
    await asAcme.scalePool({ pool: { tenantId: "acme", poolId: "web" }, desiredCounts: { running: 1 } });
    const stats = await h.client(NodeService, "tenant/acme").getNodeStats({});
    expect(stats.stats?.tenants.map((t) => t.tenantId)).toEqual(["acme"]);
    expect(stats.stats?.instancesByStatus.reduce((n, c) => n + c.count, 0)).toBe(1);
  });
});

describe("other identities", () => {
  it("lets a node identity read the version and nothing else", async () => {
    expect((await h.client(AgentService, "node/n-1").getVersion({})).apiVersion).toBe("mvm.v1");
    await expectCode(h.client(InstanceService, "node/n-1").listInstances({}), Code.PermissionDenied);
  });

  it("keeps certificate rotation to admins", async () => {
    await expectCode(h.client(AgentService, "coordinator").rotateCertificate({}), Code.PermissionDenied);
    // An admin gets past authorization; this harness serves no TLS certificates.
    await expectCode(h.client(AgentService, "admin").rotateCertificate({}), Code.FailedPrecondition);
  });
});

describe("AgentService", () => {
  it("reports the version and node", async () => {
    const v = await h.client(AgentService, "admin").getVersion({});
    expect(v).toMatchObject({ version: "1.2.3", gitCommit: "abc", apiVersion: "mvm.v1", runtimeVersion: process.version });
    expect(v.nodeId).toBe((await h.runtime.store.node()).nodeId);
  });

  it("tails, filters and verifies the audit logs a caller may read", async () => {
    await twoTenants();
    const admin = h.client(AgentService, "admin");
    const tail = await admin.tailAudit({ tenantId: "acme", limit: 2 });
    expect(tail.entries).toHaveLength(2);
    expect(tail.entries[0]!.seq).toBeLessThan(tail.entries[1]!.seq);
    const creates = await admin.tailAudit({ tenantId: "acme", actions: [AuditAction.POOL_CREATE] });
    expect(creates.entries.map((e) => e.action)).toEqual([AuditAction.POOL_CREATE]);
    const verified = await admin.verifyAudit({});
    expect(verified.ok).toBe(true);
    expect(verified.logs.map((l) => l.tenantId)).toEqual(expect.arrayContaining(["acme", "other"]));
    expect(verified.logs.find((l) => l.tenantId === "acme")?.headHash).toMatch(/^[0-9a-f]{64}$/);
    const mine = await h.client(AgentService, "tenant/acme").verifyAudit({});
    expect(mine.logs.map((l) => l.tenantId)).toEqual(["acme"]);
  });

  it("streams audit entries as they are written, only the caller's tenant for a tenant", async () => {
    await twoTenants();
    const controller = new AbortController();
    const iterator = h.client(AgentService, "tenant/acme").watchAudit({ backlog: 1 }, { signal: controller.signal })[Symbol.asyncIterator]();
    const backlog = (await iterator.next()).value;
    expect(backlog.entry.tenantId).toBe("acme");
    await h.client(PoolService, "admin").scalePool({ pool: { tenantId: "other", poolId: "web" }, desiredCounts: { running: 1 } });
    await h.client(PoolService, "admin").scalePool({ pool: { tenantId: "acme", poolId: "web" }, desiredCounts: { running: 1 } });
    const live = (await iterator.next()).value;
    expect(live.entry).toMatchObject({ tenantId: "acme", action: AuditAction.POOL_SCALE });
    controller.abort();
  });
});

describe("NodeService", () => {
  it("returns node info, capabilities, stats and disk usage", async () => {
    await twoTenants();
    const node = h.client(NodeService, "admin");
    expect((await node.getNodeInfo({})).node?.hostname).toBe("test-host");
    expect((await node.getCapabilities({ refresh: true })).capabilities?.cgroupVersion).toBe(2);
    const stats = (await node.getNodeStats({})).stats!;
    expect(stats.tenants.map((t) => t.tenantId)).toEqual(["acme", "other"]);
    expect(stats.vcpusTotal).toBe(8);
    expect(stats.tenants[0]?.snapshotBytes).toBe(30n);
    const disk = await node.getDiskUsage({});
    expect(disk.tenants[0]).toMatchObject({ tenantId: "acme", totalBytes: 67n, quotaBytes: 100n * 1024n ** 3n });
  });

  it("verifies each tenant's network through the port, and audits a repair", async () => {
    await twoTenants();
    const node = h.client(NodeService, "admin");
    const report = await node.verifyNetwork({ tenantId: "acme" });
    expect(report.tenants.map((t) => t.tenantId)).toEqual(["acme"]);
    expect(report.ok).toBe(false);
    await node.verifyNetwork({ tenantId: "acme", fix: true });
    expect((await h.audit.tail("acme", 5)).some((e) => e.action === "network_repair")).toBe(true);
    await expectCode(node.verifyNetwork({ tenantId: "ghost" }), Code.InvalidArgument);
  });

  it("does not take a sleeping instance's TAP for a stray one, so a repair leaves it for the wake", async () => {
    const refs = await twoTenants();
    await build("acme");
    const instances = h.client(InstanceService, "admin");
    await instances.startInstance({ instance: refs.acme });
    await instances.sleepInstance({ instance: refs.acme });
    const tap = (await h.runtime.store.getInstance("acme", "web", refs.acme.instanceId))!.net.tapName;
    const report = await h.client(NodeService, "admin").verifyNetwork({ tenantId: "acme", fix: true });
    expect(report.tenants[0]?.orphanTaps).toEqual([]);
    expect(report.tenants[0]?.instancesWithoutTap).toEqual([]);
    expect(h.plane.taps.has(tap)).toBe(true);
  });

  it("collects garbage: lists what lost its owner, removes it only when asked, and audits each removal", async () => {
    const refs = await twoTenants();
    await build("acme");
    const before = (await h.runtime.store.getInstance("acme", "web", refs.acme.instanceId))!;
    await h.client(InstanceService, "admin").startInstance({ instance: refs.acme });
    const lost = (await h.runtime.store.getInstance("acme", "web", refs.acme.instanceId))!;
    // What a kill -9 between the VMM's start and the record's write would leave: a VMM, a TAP and a group, and the
    // record as it was before the start.
    await h.runtime.store.putInstance(before);
    const node = h.client(NodeService, "admin");

    const dry = await node.collectGarbage({});
    expect(dry.applied).toBe(false);
    expect(dry.items.map((i) => [i.kind, i.name, i.removed])).toEqual([
      [GarbageKind.PROCESS, `pid ${lost.vmm!.pid}`, false],
      [GarbageKind.TAP, lost.net.tapName, false],
      [GarbageKind.CGROUP, `acme/web/${lost.instanceId}`, false],
    ]);
    expect(dry.items[0]!.owner?.ref).toEqual({ case: "instance", value: expect.objectContaining({ tenantId: "acme", poolId: "web", instanceId: lost.instanceId }) });
    expect(h.plane.processes.has(lost.vmm!.pid)).toBe(true);

    const applied = await node.collectGarbage({ apply: true, requestId: "gc-1" });
    expect(applied.applied).toBe(true);
    expect(applied.items.every((i) => i.removed && i.error === "")).toBe(true);
    expect(h.plane.processes.has(lost.vmm!.pid)).toBe(false);
    expect(h.plane.taps.has(lost.net.tapName)).toBe(false);
    const entries = (await h.audit.tail("acme", 10)).filter((e) => e.action === "garbage_collect");
    expect(entries.map((e) => e.details.kind)).toEqual(["process", "tap", "cgroup"]);
    expect(entries[0]?.actor.kind).toBe("admin");
    expect((await node.collectGarbage({})).items).toEqual([]);
  });
});

describe("ReconcileService", () => {
  it("validates a desired state fully, with request paths, then applies, plans and reconciles it", async () => {
    const api = h.client(ReconcileService, "admin");
    const nodeId = (await h.runtime.store.node()).nodeId;
    const bad = create(DesiredStateSchema, {
      schemaVersion: 1,
      nodeId,
      tenants: [{ tenantId: "Bad!", pools: [{ poolId: "web", spec: { resources: { vcpus: 0, memMib: 256 }, image: { source: { case: "debian", value: {} } } } }] }],
    });
    const error = await expectCode(api.applyDesiredState({ desiredState: bad }), Code.InvalidArgument);
    const fields = error.findDetails(BadRequestDetailSchema)[0]?.fieldViolations.map((v) => v.field);
    expect(fields).toEqual(expect.arrayContaining(["desired_state.tenants[0].tenant_id", "desired_state.tenants[0].pools[0].spec.resources.vcpus"]));
    const elsewhere = create(DesiredStateSchema, { schemaVersion: 1, nodeId: "n-elsewhere" });
    const wrongNode = await expectCode(api.applyDesiredState({ desiredState: elsewhere }), Code.InvalidArgument);
    expect(wrongNode.rawMessage).toMatch(/another node/);
    await expectCode(api.getDesiredState({}), Code.NotFound);
    await expectCode(api.triggerReconcile({}), Code.FailedPrecondition);
    const good = create(DesiredStateSchema, { schemaVersion: 1, nodeId, tenants: [{ tenantId: "reconciled" }] });
    const planned = await api.planDesiredState({ desiredState: good });
    expect(planned.plan?.actions.map((a) => a.reason)).toEqual([expect.stringMatching(/not on this node/)]);
    const applied = await api.applyDesiredState({ desiredState: good, wait: true });
    expect(applied.generation).toBe(1n);
    expect(applied.desiredStateHash).toMatch(/^[0-9a-f]{64}$/);
    expect(applied.report?.converged).toBe(true);
    expect(await h.runtime.store.getTenant("reconciled")).not.toBeNull();
    const got = await api.getDesiredState({});
    expect(got).toMatchObject({ generation: 1n, desiredStateHash: applied.desiredStateHash });
    expect(got.desiredState?.tenants.map((t) => t.tenantId)).toEqual(["reconciled"]);
    const again = await api.triggerReconcile({ wait: true });
    expect(again.report).toMatchObject({ converged: true, results: [] });
  });
});

describe("metrics", () => {
  it("counts every call by service, method and code", async () => {
    await h.client(AgentService, "admin").getVersion({});
    await expectCode(h.client(TenantService, "admin").getTenant({ tenantId: "ghost" }), Code.NotFound);
    await expectCode(h.client(TenantService, "tenant/acme").createTenant({ tenantId: "x" }), Code.PermissionDenied);
    const text = await h.metrics.render();
    expect(text).toMatch(/mvm_rpc_requests_total\{service="mvm.v1.AgentService",method="GetVersion",code="ok"\} 1/);
    expect(text).toMatch(/mvm_rpc_requests_total\{service="mvm.v1.TenantService",method="GetTenant",code="not_found"\} 1/);
    expect(text).toMatch(/mvm_rpc_requests_total\{service="mvm.v1.TenantService",method="CreateTenant",code="permission_denied"\} 1/);
    expect(text).toMatch(/mvm_rpc_duration_seconds_count\{service="mvm.v1.AgentService",method="GetVersion"\} 1/);
  });
});
