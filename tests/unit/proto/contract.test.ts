// Checks the mvm.v1 contract as a whole: the services and RPCs the spec requires exist with the right shapes in the
// generated code, the contract style rules hold (enum zero values, request_id on mutations, paging on lists, units
// in names), and every element carries the comment the reference documentation is generated from.
//
// The embedded descriptors in gen/ are stripped of comments by protoc-gen-es, so comments are read from a fresh
// `buf build` image, which keeps source code info.

import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { createFileRegistry, fromBinary, toBinary, create, fromJson, toJson, ScalarType } from "@bufbuild/protobuf";
import type { DescFile, DescMessage, DescService } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import type { FileDescriptorProto, DescriptorProto, SourceCodeInfo_Location } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";

import { file_mvm_v1_agent_service, AgentService } from "../../../gen/mvm/v1/agent_service_pb.js";
import { file_mvm_v1_node_service, NodeService } from "../../../gen/mvm/v1/node_service_pb.js";
import { file_mvm_v1_tenant_service, TenantService } from "../../../gen/mvm/v1/tenant_service_pb.js";
import { file_mvm_v1_pool_service, PoolService } from "../../../gen/mvm/v1/pool_service_pb.js";
import {
  file_mvm_v1_instance_service,
  InstanceService,
  WatchInstancesResponseSchema,
} from "../../../gen/mvm/v1/instance_service_pb.js";
import { file_mvm_v1_reconcile_service, ReconcileService } from "../../../gen/mvm/v1/reconcile_service_pb.js";
import { file_mvm_v1_fleet_service } from "../../../gen/mvm/v1/fleet_service_pb.js";
import { InstanceStatus, InstanceSchema } from "../../../gen/mvm/v1/instance_pb.js";

const repoRoot = join(import.meta.dirname, "../../..");

const serviceFiles: DescFile[] = [
  file_mvm_v1_agent_service,
  file_mvm_v1_node_service,
  file_mvm_v1_tenant_service,
  file_mvm_v1_pool_service,
  file_mvm_v1_instance_service,
  file_mvm_v1_reconcile_service,
  file_mvm_v1_fleet_service,
];

/** Every file of the package, reached through the imports of the service files. */
function packageFiles(): DescFile[] {
  const seen = new Map<string, DescFile>();
  const visit = (file: DescFile) => {
    if (seen.has(file.name) || !file.name.startsWith("mvm/v1/")) return;
    seen.set(file.name, file);
    file.dependencies.forEach(visit);
  };
  serviceFiles.forEach(visit);
  return [...seen.values()];
}

function allMessages(files: DescFile[]): DescMessage[] {
  const out: DescMessage[] = [];
  const walk = (m: DescMessage) => {
    out.push(m);
    m.nestedMessages.forEach(walk);
  };
  for (const f of files) f.messages.forEach(walk);
  return out;
}

const required: Record<string, { service: DescService; rpcs: string[] }> = {
  AgentService: {
    service: AgentService,
    rpcs: ["GetVersion", "GetCertificateStatus", "RotateCertificate", "WatchAudit", "TailAudit", "VerifyAudit"],
  },
  NodeService: {
    service: NodeService,
    rpcs: ["GetNodeInfo", "GetNodeStats", "GetCapabilities", "VerifyNetwork", "GetDiskUsage", "CollectGarbage"],
  },
  TenantService: {
    service: TenantService,
    rpcs: ["CreateTenant", "GetTenant", "ListTenants", "UpdateTenant", "DeleteTenant", "RotateSecrets"],
  },
  PoolService: {
    service: PoolService,
    rpcs: [
      "CreatePool",
      "GetPool",
      "ListPools",
      "UpdatePool",
      "DeletePool",
      "ScalePool",
      "BuildPool",
      "ListBuilds",
      "RollbackPool",
    ],
  },
  InstanceService: {
    service: InstanceService,
    rpcs: [
      "CreateInstance",
      "GetInstance",
      "GetInstanceStats",
      "ListInstances",
      "StartInstance",
      "StopInstance",
      "WarmInstance",
      "ResumeInstance",
      "SleepInstance",
      "WakeInstance",
      "DestroyInstance",
      "ExecInstance",
      "StreamInstanceLogs",
      "WatchInstances",
    ],
  },
  ReconcileService: {
    service: ReconcileService,
    rpcs: [
      "ApplyDesiredState",
      "GetDesiredState",
      "PlanDesiredState",
      "TriggerReconcile",
      "WatchReconcileReports",
    ],
  },
};

const serverStreaming = new Set([
  "mvm.v1.InstanceService.WatchInstances",
  "mvm.v1.InstanceService.StreamInstanceLogs",
  "mvm.v1.PoolService.BuildPool",
  "mvm.v1.AgentService.WatchAudit",
  "mvm.v1.ReconcileService.WatchReconcileReports",
]);

/** RPCs that change state and must therefore accept a request_id (reports and dry runs excluded). */
const mutatingPrefixes = [
  "Create",
  "Update",
  "Delete",
  "Rotate",
  "Scale",
  "Build",
  "Rollback",
  "Start",
  "Stop",
  "Warm",
  "Resume",
  "Sleep",
  "Wake",
  "Destroy",
  "Exec",
  "Apply",
  "Trigger",
  "Collect",
  "Verify",
];
const notMutating = new Set(["mvm.v1.AgentService.VerifyAudit"]);

describe("mvm.v1 services", () => {
  it("has every required service with exactly the required RPCs", () => {
    for (const [name, { service, rpcs }] of Object.entries(required)) {
      expect(service.typeName).toBe(`mvm.v1.${name}`);
      expect(service.methods.map((m) => m.name).sort()).toEqual([...rpcs].sort());
    }
  });

  it("streams from the server exactly where the spec asks, and nowhere streams from the client", () => {
    for (const { service } of Object.values(required)) {
      for (const m of service.methods) {
        const full = `${service.typeName}.${m.name}`;
        expect(m.methodKind, full).toBe(serverStreaming.has(full) ? "server_streaming" : "unary");
      }
    }
  });

  it("gives every RPC its own request and response message", () => {
    const used = new Set<string>();
    for (const { service } of Object.values(required)) {
      for (const m of service.methods) {
        expect(m.input.typeName).toBe(`mvm.v1.${m.name}Request`);
        expect(m.output.typeName).toBe(`mvm.v1.${m.name}Response`);
        for (const t of [m.input.typeName, m.output.typeName]) {
          expect(used.has(t), t).toBe(false);
          used.add(t);
        }
      }
    }
  });

  it("accepts an optional string request_id on every mutating RPC", () => {
    for (const { service } of Object.values(required)) {
      for (const m of service.methods) {
        const full = `${service.typeName}.${m.name}`;
        if (notMutating.has(full) || !mutatingPrefixes.some((p) => m.name.startsWith(p))) continue;
        const field = m.input.fields.find((f) => f.name === "request_id");
        expect(field, `${full} lacks request_id`).toBeDefined();
        expect(field?.fieldKind === "scalar" && field.scalar === ScalarType.STRING, full).toBe(true);
      }
    }
  });

  it("pages every List RPC", () => {
    const lists = Object.values(required).flatMap(({ service }) =>
      service.methods.filter((m) => m.name.startsWith("List")),
    );
    expect(lists.map((m) => m.name).sort()).toEqual(["ListBuilds", "ListInstances", "ListPools", "ListTenants"]);
    for (const m of lists) {
      const input = m.input.fields.map((f) => f.name);
      expect(input, m.name).toEqual(expect.arrayContaining(["page_size", "page_token"]));
      expect(m.output.fields.map((f) => f.name), m.name).toContain("next_page_token");
    }
  });
});

describe("mvm.v1 contract style", () => {
  const files = packageFiles();
  const messages = allMessages(files);

  it("reaches every file of the package from the service files", () => {
    // DescFile.name drops the `.proto` suffix.
    const names = files.map((f) => f.name);
    const records = ["common", "errors", "tenant", "pool", "build", "instance", "snapshot", "node", "audit"];
    for (const expected of [...records, "desired_state", "reconcile"]) {
      expect(names).toContain(`mvm/v1/${expected}`);
    }
  });

  it("starts every enum with a zero *_UNSPECIFIED value", () => {
    const enums = [...files.flatMap((f) => f.enums), ...messages.flatMap((m) => m.nestedEnums)];
    expect(enums.length).toBeGreaterThan(10);
    for (const e of enums) {
      const first = e.values[0];
      expect(first?.number, e.typeName).toBe(0);
      expect(first?.name, e.typeName).toMatch(/_UNSPECIFIED$/);
    }
  });

  it("puts a unit in the name of every numeric field that measures time, memory or storage", () => {
    const measured = /(timeout|interval|duration|size|mem|disk|idle|bytes|free|reserve|validity)/;
    const units = new Set(["ms", "s", "bytes", "mib", "gib", "pct", "days"]);
    const numeric = new Set([
      ScalarType.INT32,
      ScalarType.UINT32,
      ScalarType.INT64,
      ScalarType.UINT64,
      ScalarType.DOUBLE,
      ScalarType.FLOAT,
    ]);
    const offenders: string[] = [];
    for (const m of messages) {
      for (const f of m.fields) {
        if (f.fieldKind !== "scalar" || !numeric.has(f.scalar) || !measured.test(f.name)) continue;
        if (f.name === "page_size") continue; // a count of items, not a size in bytes
        if (!f.name.split("_").some((part) => units.has(part))) offenders.push(`${m.typeName}.${f.name}`);
      }
    }
    expect(offenders).toEqual([]);
  });

  it("uses google.protobuf.Timestamp for every *_at field", () => {
    for (const m of messages) {
      for (const f of m.fields) {
        if (f.name !== "at" && !f.name.endsWith("_at")) continue;
        expect(f.message?.typeName, `${m.typeName}.${f.name}`).toBe("google.protobuf.Timestamp");
      }
    }
  });

  it("shapes the WatchInstances event as the spec describes", () => {
    const event = WatchInstancesResponseSchema;
    const revision = event.fields.find((f) => f.name === "revision");
    expect(revision?.fieldKind === "scalar" && revision.scalar).toBe(ScalarType.UINT64);
    expect(event.fields.find((f) => f.name === "resume_token")).toBeDefined();
    const oneof = event.oneofs.find((o) => o.name === "event");
    expect(oneof?.fields.map((f) => f.name).sort()).toEqual(
      ["deleted", "heartbeat", "initial_state_complete", "snapshot_reset", "upsert"].sort(),
    );
    const deleted = oneof?.fields.find((f) => f.name === "deleted")?.message;
    expect(deleted?.fields.map((f) => f.message?.typeName)).toEqual(["mvm.v1.InstanceRef", "mvm.v1.Instance"]);
    const request = InstanceService.method.watchInstances.input;
    expect(request.fields.map((f) => f.name)).toEqual(expect.arrayContaining(["filter", "resume_token"]));
  });

  it("round-trips a watch event through binary and JSON", () => {
    const msg = create(WatchInstancesResponseSchema, {
      revision: 42n,
      resumeToken: "r42",
      event: {
        case: "upsert",
        value: create(InstanceSchema, {
          instanceId: "i-0123abcd",
          tenantId: "acme",
          poolId: "web",
          status: InstanceStatus.SLEEPING,
        }),
      },
    });
    const back = fromBinary(WatchInstancesResponseSchema, toBinary(WatchInstancesResponseSchema, msg));
    expect(back.revision).toBe(42n);
    expect(back.event.case === "upsert" && back.event.value.status).toBe(InstanceStatus.SLEEPING);
    const json = toJson(WatchInstancesResponseSchema, msg) as Record<string, unknown>;
    expect(json["upsert"]).toMatchObject({ instanceId: "i-0123abcd", status: "INSTANCE_STATUS_SLEEPING" });
    const fromSnake = fromJson(WatchInstancesResponseSchema, {
      revision: "7",
      upsert: { instance_id: "i-0000000f", status: "INSTANCE_STATUS_WARM" },
    });
    expect(fromSnake.event.case === "upsert" && fromSnake.event.value.instanceId).toBe("i-0000000f");
  });
});

// Paths into FileDescriptorProto (descriptor.proto field numbers).
const FILE_MESSAGE = 4;
const FILE_ENUM = 5;
const FILE_SERVICE = 6;
const MESSAGE_FIELD = 2;
const MESSAGE_NESTED = 3;
const MESSAGE_ENUM = 4;
const MESSAGE_ONEOF = 8;
const ENUM_VALUE = 2;
const SERVICE_METHOD = 2;

interface Element {
  what: string;
  path: number[];
}

/** Every commentable element of a file, with its source path. Map entries and synthetic oneofs are skipped. */
function elementsOf(file: FileDescriptorProto): Element[] {
  const out: Element[] = [];
  const pkg = file.package;
  const enumElements = (prefix: string, path: number[], values: { name: string }[]) =>
    values.forEach((v, i) => out.push({ what: `${prefix}.${v.name}`, path: [...path, ENUM_VALUE, i] }));
  const message = (m: DescriptorProto, prefix: string, path: number[]) => {
    if (m.options?.mapEntry) return;
    const name = `${prefix}.${m.name}`;
    out.push({ what: `message ${name}`, path });
    m.field.forEach((f, i) => out.push({ what: `field ${name}.${f.name}`, path: [...path, MESSAGE_FIELD, i] }));
    m.oneofDecl.forEach((o, i) => {
      const synthetic = m.field.some((f) => f.oneofIndex === i && f.proto3Optional);
      if (!synthetic) out.push({ what: `oneof ${name}.${o.name}`, path: [...path, MESSAGE_ONEOF, i] });
    });
    m.nestedType.forEach((n, i) => message(n, name, [...path, MESSAGE_NESTED, i]));
    m.enumType.forEach((e, i) => {
      out.push({ what: `enum ${name}.${e.name}`, path: [...path, MESSAGE_ENUM, i] });
      enumElements(`${name}.${e.name}`, [...path, MESSAGE_ENUM, i], e.value);
    });
  };
  file.messageType.forEach((m, i) => message(m, pkg, [FILE_MESSAGE, i]));
  file.enumType.forEach((e, i) => {
    out.push({ what: `enum ${pkg}.${e.name}`, path: [FILE_ENUM, i] });
    enumElements(`${pkg}.${e.name}`, [FILE_ENUM, i], e.value);
  });
  file.service.forEach((s, i) => {
    out.push({ what: `service ${pkg}.${s.name}`, path: [FILE_SERVICE, i] });
    s.method.forEach((m, j) =>
      out.push({ what: `rpc ${pkg}.${s.name}.${m.name}`, path: [FILE_SERVICE, i, SERVICE_METHOD, j] }),
    );
  });
  return out;
}

function leadingComments(file: FileDescriptorProto): Map<string, string> {
  const byPath = new Map<string, string>();
  const locations: SourceCodeInfo_Location[] = file.sourceCodeInfo?.location ?? [];
  for (const loc of locations) byPath.set(loc.path.join("."), loc.leadingComments ?? "");
  return byPath;
}

describe("mvm.v1 comments (source of the reference documentation)", () => {
  const image = execFileSync(join(repoRoot, "node_modules/.bin/buf"), ["build", "-o", "-#format=binpb"], {
    cwd: repoRoot,
    maxBuffer: 64 * 1024 * 1024,
  });
  const set = fromBinary(FileDescriptorSetSchema, new Uint8Array(image));
  const ours = set.file.filter((f) => f.name.startsWith("mvm/v1/"));

  it("builds the same package that gen/ was generated from", () => {
    const built = createFileRegistry(set);
    const shape = (messages: DescMessage[]) =>
      messages.flatMap((m) => [m.typeName, ...m.fields.map((f) => `${m.typeName}.${f.name}=${f.number}`)]).sort();
    const fromSource = ours.flatMap((f) => {
      const file = built.getFile(f.name);
      return file ? allMessages([file]) : [];
    });
    expect(shape(fromSource)).toEqual(shape(allMessages(packageFiles())));
  });

  it("documents every message, field, oneof, enum, enum value, service and RPC", () => {
    expect(ours.length).toBeGreaterThanOrEqual(15);
    const missing: string[] = [];
    let checked = 0;
    for (const file of ours) {
      const comments = leadingComments(file);
      expect(comments.size, `${file.name} has no source info`).toBeGreaterThan(0);
      for (const el of elementsOf(file)) {
        checked++;
        if ((comments.get(el.path.join(".")) ?? "").trim() === "") missing.push(`${file.name}: ${el.what}`);
      }
    }
    expect(checked).toBeGreaterThan(500);
    expect(missing).toEqual([]);
  });
});
