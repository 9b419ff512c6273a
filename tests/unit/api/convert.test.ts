import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { FieldViolation } from "../../../src/core/errors.js";
import {
  COMPRESSIONS,
  DEFAULT_QUOTA,
  HYPERVISORS,
  INSTANCE_STATUSES,
  SECCOMP_POLICIES,
  type BuildRevision,
  type Condition,
  type Instance,
  type Tenant,
  type WorkerPool,
} from "../../../src/core/model.js";
import { AUDIT_ACTIONS, type AuditEntry } from "../../../src/core/observability-ports.js";
import { auditEntryFromProto, auditEntryToProto, targetToResourceRef, resourceRefToTarget } from "../../../src/api/convert/audit.js";
import { buildRevisionFromProto, buildRevisionToProto } from "../../../src/api/convert/build.js";
import { auditActionFromProto, auditActionToProto, conditionStatusToProto, hypervisorToProto, instanceStatusFromProto, instanceStatusToProto } from "../../../src/api/convert/enums.js";
import { instanceFromProto, instanceToProto } from "../../../src/api/convert/instance.js";
import { poolFromProto, poolSpecInputFromProto, poolSpecPatchFromMask, poolToProto } from "../../../src/api/convert/pool.js";
import { quotaPatchFromProto, tenantFromProto, tenantToProto } from "../../../src/api/convert/tenant.js";
import { isoToTimestamp, timestampToIso } from "../../../src/api/convert/timestamps.js";
import { AuditAction } from "../../../gen/mvm/v1/audit_pb.js";
import { BuildRevisionSchema } from "../../../gen/mvm/v1/build_pb.js";
import { ConditionSchema, Hypervisor } from "../../../gen/mvm/v1/common_pb.js";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { IdleMetricsSchema, InstanceNetSchema, InstanceSchema, InstanceStatus, InstanceVmmSchema } from "../../../gen/mvm/v1/instance_pb.js";
import { PoolSpecSchema, WorkerPoolSchema } from "../../../gen/mvm/v1/pool_pb.js";
import { TenantQuotaSchema, TenantSchema } from "../../../gen/mvm/v1/tenant_pb.js";
import { buildRecord, instanceRecord, poolRecord, tenantRecord } from "../store/fixtures.js";

/** Through the wire and back: what a client on the other end would decode. */
function wire<T extends Parameters<typeof toBinary>[0]>(schema: T, message: Parameters<typeof toBinary<T>>[1]) {
  return fromBinary(schema, toBinary(schema, message));
}

const isoArb = fc.integer({ min: 0, max: 4_102_444_800_000 }).map((ms) => new Date(ms).toISOString());
const idArb = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
const conditionArb: fc.Arbitrary<Condition> = fc.record({
  type: fc.constantFrom("Ready", "Healthy", "QuotaBlocked"),
  status: fc.constantFrom("true", "false", "unknown"),
  reason: fc.string(),
  message: fc.string(),
  lastTransitionAt: isoArb,
});

const instanceArb: fc.Arbitrary<Instance> = fc.record({
  schemaVersion: fc.constant(1),
  instanceId: fc.stringMatching(/^i-[0-9a-f]{8}$/),
  tenantId: idArb,
  poolId: idArb,
  status: fc.constantFrom(...INSTANCE_STATUSES),
  revision: fc.string(),
  net: fc.record({ tapName: fc.string(), mac: fc.string(), guestIp: fc.ipV4(), gatewayIp: fc.ipV4(), prefixLen: fc.integer({ min: 16, max: 29 }) }),
  vmm: fc.option(
    fc.record({
      hypervisor: fc.constantFrom("qemu" as const, "firecracker" as const),
      pid: fc.integer({ min: 1, max: 4_000_000 }),
      pidStartTime: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
      apiSocket: fc.string(),
      netns: fc.constant(null),
    }),
    { nil: null },
  ),
  conditions: fc.array(conditionArb, { maxLength: 3 }),
  idle: fc.record({
    idleS: fc.integer({ min: 0, max: 2 ** 32 - 1 }),
    cpuPct: fc.double({ min: 0, max: 100, noNaN: true }),
    netBytes: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
    lastSampleAt: fc.option(isoArb, { nil: null }),
  }),
  createdAt: isoArb,
  updatedAt: isoArb,
  lastStartedAt: fc.option(isoArb, { nil: null }),
  lastStoppedAt: fc.option(isoArb, { nil: null }),
  lastSnapshotAt: fc.option(isoArb, { nil: null }),
  healthy: fc.boolean(),
  lastHealthCheckAt: fc.option(isoArb, { nil: null }),
});

describe("timestamps", () => {
  it("keep millisecond precision both ways", () => {
    fc.assert(fc.property(isoArb, (iso) => timestampToIso(isoToTimestamp(iso)) === iso));
  });

  it("refuse a string that is not a time", () => {
    expect(() => isoToTimestamp("yesterday")).toThrow(/not an RFC 3339/);
  });
});

describe("enums", () => {
  it("map every instance status to its own proto value and back", () => {
    const values = INSTANCE_STATUSES.map(instanceStatusToProto);
    expect(new Set(values).size).toBe(INSTANCE_STATUSES.length);
    expect(instanceStatusToProto("running")).toBe(InstanceStatus.RUNNING);
    expect(instanceStatusToProto("destroyed")).toBe(InstanceStatus.DESTROYED);
    for (const s of INSTANCE_STATUSES) expect(instanceStatusFromProto(instanceStatusToProto(s))).toBe(s);
    expect(instanceStatusFromProto(InstanceStatus.UNSPECIFIED)).toBeUndefined();
  });

  it("map audit actions by name, not by accident of order", () => {
    expect(auditActionToProto("permission_deny")).toBe(AuditAction.PERMISSION_DENY);
    expect(auditActionToProto("network_repair")).toBe(AuditAction.NETWORK_REPAIR);
    for (const a of AUDIT_ACTIONS) expect(auditActionFromProto(auditActionToProto(a))).toBe(a);
  });
});

describe("tenant", () => {
  it("round-trips through the wire", () => {
    const tenant: Tenant = { ...tenantRecord("acme", 7), secretsEpoch: 3, labels: { team: "a", env: "prod" } };
    const message = wire(TenantSchema, tenantToProto(tenant));
    expect(message.secretsEpoch).toBe(3n);
    expect(message.quotas?.maxVcpus).toBe(DEFAULT_QUOTA.maxVcpus);
    expect(tenantFromProto(message)).toEqual(tenant);
  });

  it("reads only the quota limits a message sets, zero included", () => {
    const q = wire(TenantQuotaSchema, create(TenantQuotaSchema, { maxRunning: 0, maxPools: 9 }));
    expect(quotaPatchFromProto(q)).toEqual({ maxRunning: 0, maxPools: 9 });
    expect(quotaPatchFromProto(undefined)).toEqual({});
  });
});

describe("pool", () => {
  it("round-trips every choice of every enum field", () => {
    for (const hypervisor of HYPERVISORS) {
      for (const seccompPolicy of SECCOMP_POLICIES) {
        for (const snapshotCompression of COMPRESSIONS) {
          const pool: WorkerPool = { ...poolRecord("acme", "web"), hypervisor, seccompPolicy, snapshotCompression, pinned: true, currentRevision: "abc" };
          expect(poolFromProto(wire(WorkerPoolSchema, poolToProto(pool)))).toEqual(pool);
        }
      }
    }
  });

  it("round-trips a nix image, extra files and a sleep policy", () => {
    const pool: WorkerPool = {
      ...poolRecord("acme", "ci"),
      image: { kind: "nix", flakeRef: "github:org/repo", profile: "python" },
      sleepPolicy: { warmAfterIdleS: 0, sleepAfterIdleS: 60, cpuIdlePct: 2.5, netIdleBytes: 10 },
      metadataEnabled: false,
      userData: "#cloud-config\n",
      critical: true,
    };
    expect(poolFromProto(wire(WorkerPoolSchema, poolToProto(pool, { running: 1, warm: 2, sleeping: 3 })))).toEqual(pool);
    // user_data through an update mask, "" to remove it.
    const masked: FieldViolation[] = [];
    expect(poolSpecPatchFromMask(poolToProto(pool).spec, ["user_data"], masked)).toEqual({ userData: "#cloud-config\n" });
    expect(poolSpecPatchFromMask(poolToProto(poolRecord("acme", "ci")).spec, ["user_data"], masked)).toEqual({ userData: "" });
    expect(masked).toEqual([]);
    const debian: WorkerPool = { ...poolRecord("acme", "d"), image: { kind: "debian", suite: "trixie", packages: ["a", "b"], extraFiles: { "/etc/x": "y" } } };
    expect(poolFromProto(wire(WorkerPoolSchema, poolToProto(debian)))).toEqual(debian);
  });

  it("carries the observed counts", () => {
    const message = poolToProto(poolRecord("acme", "web"), { running: 2, warm: 1, sleeping: 0 });
    expect(message.observedCounts).toMatchObject({ running: 2, warm: 1, sleeping: 0 });
  });

  it("requires image and resources on create and names them under spec", () => {
    const violations: FieldViolation[] = [];
    poolSpecInputFromProto(create(PoolSpecSchema, {}), "spec", violations);
    expect(violations.map((v) => v.field)).toEqual(["spec.image", "spec.resources"]);
  });

  it("defaults an empty debian suite to bookworm and keeps unset optionals unset", () => {
    const violations: FieldViolation[] = [];
    const input = poolSpecInputFromProto(
      create(PoolSpecSchema, { image: { source: { case: "debian", value: {} } }, resources: { vcpus: 2, memMib: 512 } }),
      "spec",
      violations,
    );
    expect(violations).toEqual([]);
    expect(input.image).toEqual({ kind: "debian", suite: "bookworm", packages: [], extraFiles: {} });
    expect(input.metadataEnabled).toBeUndefined();
    expect(input.hypervisor).toBeUndefined();
  });

  it("names an enum value outside the contract", () => {
    const violations: FieldViolation[] = [];
    poolSpecInputFromProto(create(PoolSpecSchema, { image: { source: { case: "nix", value: { flakeRef: ".", profile: "p" } } }, resources: { vcpus: 1, memMib: 128 }, hypervisor: 42 as Hypervisor }), "spec", violations);
    expect(violations).toEqual([{ field: "spec.hypervisor", rule: expect.stringContaining("got 42") }]);
  });

  it("applies only the fields an update mask names", () => {
    const violations: FieldViolation[] = [];
    const spec = create(PoolSpecSchema, { resources: { vcpus: 4, memMib: 1024, dataDiskMib: 9 }, pinned: true, critical: true, sleepPolicy: { warmAfterIdleS: 10 } });
    expect(poolSpecPatchFromMask(spec, ["resources.mem_mib", "pinned", "sleepPolicy.warmAfterIdleS"], violations)).toEqual({
      resources: { memMib: 1024 },
      pinned: true,
      sleepPolicy: { warmAfterIdleS: 10 },
    });
    expect(violations).toEqual([]);
  });

  it("refuses an empty or unknown update mask with the path's index", () => {
    const violations: FieldViolation[] = [];
    poolSpecPatchFromMask(undefined, [], violations);
    poolSpecPatchFromMask(undefined, ["pinned", "resources.cores", "name"], violations);
    expect(violations.map((v) => v.field)).toEqual(["update_mask", "update_mask.paths[1]", "update_mask.paths[2]"]);
  });
});

describe("instance", () => {
  it("round-trips any record through the wire (the VMM's netns is not part of the contract)", () => {
    fc.assert(
      fc.property(instanceArb, (instance) => {
        expect(instanceFromProto(wire(InstanceSchema, instanceToProto(instance)))).toEqual(instance);
      }),
      { numRuns: 200 },
    );
  });

  it("builds the very message create() builds: same properties, same values, nothing extra", () => {
    // The converter writes message literals for speed; this is the create() construction they stand for.
    const viaCreate = (i: Instance) =>
      create(InstanceSchema, {
        schemaVersion: i.schemaVersion,
        instanceId: i.instanceId,
        tenantId: i.tenantId,
        poolId: i.poolId,
        status: instanceStatusToProto(i.status),
        revision: i.revision,
        net: create(InstanceNetSchema, { ...i.net }),
        vmm:
          i.vmm === null
            ? undefined
            : create(InstanceVmmSchema, { hypervisor: hypervisorToProto(i.vmm.hypervisor), pid: i.vmm.pid, pidStartTime: BigInt(i.vmm.pidStartTime), apiSocket: i.vmm.apiSocket }),
        conditions: i.conditions.map((c) =>
          create(ConditionSchema, { type: c.type, status: conditionStatusToProto(c.status), reason: c.reason, message: c.message, lastTransitionAt: timestampFromMs(Date.parse(c.lastTransitionAt)) }),
        ),
        idle: create(IdleMetricsSchema, {
          idleS: i.idle.idleS,
          cpuPct: i.idle.cpuPct,
          netBytes: BigInt(i.idle.netBytes),
          lastSampleAt: i.idle.lastSampleAt === null ? undefined : timestampFromMs(Date.parse(i.idle.lastSampleAt)),
        }),
        createdAt: timestampFromMs(Date.parse(i.createdAt)),
        updatedAt: timestampFromMs(Date.parse(i.updatedAt)),
        lastStartedAt: i.lastStartedAt === null ? undefined : timestampFromMs(Date.parse(i.lastStartedAt)),
        lastStoppedAt: i.lastStoppedAt === null ? undefined : timestampFromMs(Date.parse(i.lastStoppedAt)),
        lastSnapshotAt: i.lastSnapshotAt === null ? undefined : timestampFromMs(Date.parse(i.lastSnapshotAt)),
        healthy: i.healthy,
        lastHealthCheckAt: i.lastHealthCheckAt === null ? undefined : timestampFromMs(Date.parse(i.lastHealthCheckAt)),
      });
    fc.assert(
      fc.property(instanceArb, (instance) => {
        const literal = instanceToProto(instance);
        const built = viaCreate(instance);
        expect(literal).toStrictEqual(built);
        expect(Object.keys(literal).sort()).toEqual(Object.keys(built).sort());
        expect(toBinary(InstanceSchema, literal)).toEqual(toBinary(InstanceSchema, built));
      }),
      { numRuns: 300 },
    );
  });

  it("leaves vmm and absent times unset", () => {
    const message = instanceToProto(instanceRecord("acme", "web", "i-0000000a"));
    expect(message.vmm).toBeUndefined();
    expect(message.lastStartedAt).toBeUndefined();
    expect(message.status).toBe(InstanceStatus.CREATED);
  });

  it("reports a running VMM's hypervisor, never AUTO", () => {
    const base = instanceRecord("acme", "web", "i-0000000b");
    const message = instanceToProto({ ...base, status: "running", vmm: { hypervisor: "firecracker", pid: 5, pidStartTime: 77, apiSocket: "/s", netns: "x" } });
    expect(message.vmm).toMatchObject({ hypervisor: Hypervisor.FIRECRACKER, pid: 5, pidStartTime: 77n });
  });
});

describe("build revision", () => {
  it("round-trips with and without an initrd", () => {
    const withInitrd: BuildRevision = { ...buildRecord("abcdef12"), initrd: { path: "initramfs.cpio.gz", sha256: "1".repeat(64), sizeBytes: 5 }, durationMs: 1234 };
    for (const b of [buildRecord("0011aabb"), withInitrd]) {
      expect(buildRevisionFromProto(wire(BuildRevisionSchema, buildRevisionToProto(b)))).toEqual(b);
    }
  });
});

describe("audit entry", () => {
  it("round-trips, with targets of every depth", () => {
    for (const target of ["acme", "acme/web", "acme/web/i-00000001", "node/n-1"]) {
      const entry: AuditEntry = {
        seq: 42,
        at: "2025-05-06T07:08:09.010Z",
        tenantId: "acme",
        actor: { kind: "tenant", id: "spiffe://mvm.test/tenant/acme" },
        action: "instance_start",
        target,
        outcome: "denied",
        reason: "no",
        details: { request_id: "r-1", limit: "max_running" },
        prevHash: "0".repeat(64),
        hash: "f".repeat(64),
      };
      const message = auditEntryToProto(entry);
      expect(message.actor?.requestId).toBe("r-1");
      expect(auditEntryFromProto(message)).toEqual(entry);
    }
  });

  it("names targets as resource references", () => {
    expect(targetToResourceRef("acme/web").ref).toEqual({ case: "pool", value: expect.objectContaining({ tenantId: "acme", poolId: "web" }) });
    expect(resourceRefToTarget(targetToResourceRef(""))).toBe("");
  });
});
