import { describe, expect, it } from "vitest";
import { create, createFileRegistry, fromBinary, type DescFile } from "@bufbuild/protobuf";
import {
  FileDescriptorProtoSchema,
  FileDescriptorSetSchema,
  file_google_protobuf_cpp_features,
  type FileDescriptorProto,
} from "@bufbuild/protobuf/wkt";
import { Code, createClient, createRouterTransport, type ConnectRouter } from "@connectrpc/connect";
import { AgentService } from "../../../gen/mvm/v1/agent_service_pb.js";
import { InstanceService } from "../../../gen/mvm/v1/instance_service_pb.js";
import { NodeService } from "../../../gen/mvm/v1/node_service_pb.js";
import { PoolService } from "../../../gen/mvm/v1/pool_service_pb.js";
import { ReconcileService } from "../../../gen/mvm/v1/reconcile_service_pb.js";
import { TenantService } from "../../../gen/mvm/v1/tenant_service_pb.js";
import * as v1 from "../../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { registerReflection, type ReflectionOptions } from "../../../src/api/reflection/index.js";
import { HealthStatusBoard, registerHealth } from "../../../src/api/health/index.js";

const MVM_SERVICES = [AgentService, InstanceService, NodeService, PoolService, ReconcileService, TenantService];

type Query = v1.ServerReflectionRequest["messageRequest"];

function routes(options?: ReflectionOptions, withMvm = true) {
  return (router: ConnectRouter) => {
    // Reflection first on purpose: it must list services registered after it too.
    registerReflection(router, options);
    if (withMvm) for (const service of MVM_SERVICES) router.service(service, {});
    registerHealth(router, new HealthStatusBoard([["", "SERVING"]]));
  };
}

async function askV1(queries: Query[], options?: ReflectionOptions, withMvm = true) {
  const client = createClient(v1.ServerReflection, createRouterTransport(routes(options, withMvm)));
  async function* requests() {
    for (const messageRequest of queries) {
      yield create(v1.ServerReflectionRequestSchema, { host: "localhost", messageRequest });
    }
  }
  const answers: v1.ServerReflectionResponse[] = [];
  for await (const answer of client.serverReflectionInfo(requests())) answers.push(answer);
  return answers;
}

async function askOne(query: Query, options?: ReflectionOptions) {
  const [answer] = await askV1([query], options);
  if (answer === undefined) throw new Error("no answer");
  return answer;
}

function descriptorsOf(answer: v1.ServerReflectionResponse): FileDescriptorProto[] {
  if (answer.messageResponse.case !== "fileDescriptorResponse") {
    throw new Error(`expected file descriptors, got ${answer.messageResponse.case}: ${JSON.stringify(answer.messageResponse.value)}`);
  }
  return answer.messageResponse.value.fileDescriptorProto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes));
}

/**
 * Builds a registry of the first (requested) file from the answer's descriptors alone, as a reflection client does:
 * throws when any import, direct or not, is missing from the answer.
 */
function registryFrom(files: FileDescriptorProto[]) {
  const byName = new Map(files.map((f) => [f.name, f]));
  const ordered: FileDescriptorProto[] = [];
  const visit = (name: string, importedBy: string) => {
    const file = byName.get(name);
    if (file === undefined) throw new Error(`${name}, imported by ${importedBy}, is not in the answer`);
    if (ordered.includes(file)) return;
    for (const dep of file.dependency) visit(dep, name);
    ordered.push(file);
  };
  const [requested] = files;
  if (requested === undefined) throw new Error("no descriptors");
  visit(requested.name, "the request");
  return createFileRegistry(create(FileDescriptorSetSchema, { file: ordered }));
}

describe("grpc.reflection.v1 ServerReflectionInfo", () => {
  it("lists the mvm.v1 services, health and both reflection versions, including services registered later", async () => {
    const [answer] = await askV1([{ case: "listServices", value: "*" }]);
    expect(answer?.messageResponse.case).toBe("listServicesResponse");
    const names = answer?.messageResponse.case === "listServicesResponse"
      ? answer.messageResponse.value.service.map((s) => s.name)
      : [];
    expect(names).toEqual([
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
      "mvm.v1.AgentService",
      "mvm.v1.InstanceService",
      "mvm.v1.NodeService",
      "mvm.v1.PoolService",
      "mvm.v1.ReconcileService",
      "mvm.v1.TenantService",
    ]);
  });

  it("lists only what the router serves", async () => {
    const [answer] = await askV1([{ case: "listServices", value: "" }], undefined, false);
    const names = answer?.messageResponse.case === "listServicesResponse"
      ? answer.messageResponse.value.service.map((s) => s.name)
      : [];
    expect(names).toEqual([
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
    ]);
  });

  it("echoes the host and the original request", async () => {
    const answer = await askOne({ case: "fileContainingSymbol", value: "mvm.v1.Instance" });
    expect(answer.validHost).toBe("localhost");
    expect(answer.originalRequest?.messageRequest).toEqual({ case: "fileContainingSymbol", value: "mvm.v1.Instance" });
  });

  it("finds the file of a message, first, with a complete dependency closure", async () => {
    const files = descriptorsOf(await askOne({ case: "fileContainingSymbol", value: "mvm.v1.Instance" }));
    expect(files[0]?.name).toBe("mvm/v1/instance.proto");
    const registry = registryFrom(files);
    expect(registry.getMessage("mvm.v1.Instance")?.fields.length).toBeGreaterThan(5);
    const names = files.map((f) => f.name);
    expect(new Set(names).size).toBe(names.length);
    // Every import of every returned file is itself returned.
    for (const file of files) for (const dep of file.dependency) expect(names).toContain(dep);
  });

  it("includes the well-known types a service file imports", async () => {
    const files = descriptorsOf(await askOne({ case: "fileContainingSymbol", value: "mvm.v1.InstanceService" }));
    expect(files[0]?.name).toBe("mvm/v1/instance_service.proto");
    const names = files.map((f) => f.name);
    expect(names).toContain("google/protobuf/timestamp.proto");
    expect(names).toContain("mvm/v1/common.proto");
    const registry = registryFrom(files);
    const service = registry.getService("mvm.v1.InstanceService");
    expect(service?.methods.map((m) => m.name)).toContain("WatchInstances");
    expect(registry.getMessage("google.protobuf.Timestamp")).toBeDefined();
  });

  it("resolves every service's closure on its own", async () => {
    for (const service of MVM_SERVICES) {
      const files = descriptorsOf(await askOne({ case: "fileContainingSymbol", value: service.typeName }));
      const registry = registryFrom(files);
      expect(registry.getService(service.typeName)?.methods.length).toBe(service.methods.length);
      for (const method of registry.getService(service.typeName)?.methods ?? []) {
        expect(method.input.typeName).toMatch(/^(mvm\.v1|google\.protobuf)\./);
      }
    }
  });

  it("finds the file of a method, also when named with a leading dot", async () => {
    const answers = await askV1([
      { case: "fileContainingSymbol", value: "mvm.v1.InstanceService.GetInstance" },
      { case: "fileContainingSymbol", value: ".mvm.v1.PoolService.BuildPool" },
    ]);
    expect(answers.map((a) => descriptorsOf(a)[0]?.name)).toEqual(["mvm/v1/instance_service.proto", "mvm/v1/pool_service.proto"]);
  });

  it("finds nested types: a map entry message and a nested enum", async () => {
    const entry = descriptorsOf(await askOne({ case: "fileContainingSymbol", value: "mvm.v1.AuditEntry.DetailsEntry" }));
    expect(entry[0]?.name).toBe("mvm/v1/audit.proto");
    const nestedEnum = descriptorsOf(
      await askOne({ case: "fileContainingSymbol", value: "grpc.health.v1.HealthCheckResponse.ServingStatus" }),
    );
    expect(nestedEnum[0]?.name).toBe("grpc/health/v1/health.proto");
  });

  it("finds enums, enum values (in their enum's scope), fields and oneofs", async () => {
    const symbols: Array<[string, string]> = [
      ["mvm.v1.InstanceStatus", "mvm/v1/instance.proto"],
      ["mvm.v1.INSTANCE_STATUS_UNSPECIFIED", "mvm/v1/instance.proto"],
      ["mvm.v1.InstanceRef.tenant_id", "mvm/v1/common.proto"],
      ["grpc.health.v1.HealthCheckResponse.SERVING", "grpc/health/v1/health.proto"],
      ["grpc.reflection.v1.ServerReflectionRequest.message_request", "grpc/reflection/v1/reflection.proto"],
    ];
    const answers = await askV1(symbols.map(([value]) => ({ case: "fileContainingSymbol" as const, value })));
    expect(answers.map((a) => descriptorsOf(a)[0]?.name)).toEqual(symbols.map(([, file]) => file));
  });

  it("serves a file by name with its imports", async () => {
    const files = descriptorsOf(await askOne({ case: "fileByFilename", value: "mvm/v1/pool_service.proto" }));
    expect(files[0]?.name).toBe("mvm/v1/pool_service.proto");
    expect(files.map((f) => f.name)).toContain("google/protobuf/field_mask.proto");
    expect(registryFrom(files).getService("mvm.v1.PoolService")).toBeDefined();
  });

  it("serves a well-known type file by name", async () => {
    const files = descriptorsOf(await askOne({ case: "fileByFilename", value: "google/protobuf/timestamp.proto" }));
    expect(files.map((f) => f.name)).toEqual(["google/protobuf/timestamp.proto"]);
    expect(files[0]?.messageType.map((m) => m.name)).toEqual(["Timestamp"]);
  });

  it("answers NOT_FOUND for an unknown symbol, file or extension, and the stream carries on", async () => {
    const answers = await askV1([
      { case: "fileContainingSymbol", value: "mvm.v1.NoSuchThing" },
      { case: "fileByFilename", value: "mvm/v1/missing.proto" },
      { case: "fileContainingExtension", value: create(v1.ExtensionRequestSchema, { containingType: "mvm.v1.Instance", extensionNumber: 1000 }) },
      { case: "allExtensionNumbersOfType", value: "mvm.v1.NoSuchMessage" },
      { case: "fileContainingSymbol", value: "mvm.v1.Tenant" },
    ]);
    expect(answers).toHaveLength(5);
    for (const answer of answers.slice(0, 4)) {
      expect(answer.messageResponse.case).toBe("errorResponse");
      if (answer.messageResponse.case === "errorResponse") {
        expect(answer.messageResponse.value.errorCode).toBe(5);
        expect(answer.messageResponse.value.errorCode).toBe(Code.NotFound);
      }
    }
    const first = answers[0]?.messageResponse;
    expect(first?.case === "errorResponse" && first.value.errorMessage).toContain("mvm.v1.NoSuchThing");
    expect(descriptorsOf(answers[4] as v1.ServerReflectionResponse)[0]?.name).toBe("mvm/v1/tenant.proto");
  });

  it("answers INVALID_ARGUMENT for a request with no kind set", async () => {
    const answer = await askOne({ case: undefined });
    expect(answer.messageResponse.case).toBe("errorResponse");
    if (answer.messageResponse.case === "errorResponse") expect(answer.messageResponse.value.errorCode).toBe(3);
  });

  it("finds extensions of files given as extra files, and lists extension numbers", async () => {
    const extra: DescFile[] = [file_google_protobuf_cpp_features];
    const answers = await askV1(
      [
        { case: "fileContainingExtension", value: create(v1.ExtensionRequestSchema, { containingType: "google.protobuf.FeatureSet", extensionNumber: 1000 }) },
        { case: "allExtensionNumbersOfType", value: "google.protobuf.FeatureSet" },
        { case: "allExtensionNumbersOfType", value: "mvm.v1.Instance" },
        { case: "allExtensionNumbersOfType", value: "mvm.v1.InstanceStatus" },
      ],
      { extraFiles: extra },
    );
    const files = descriptorsOf(answers[0] as v1.ServerReflectionResponse);
    expect(files[0]?.name).toBe("google/protobuf/cpp_features.proto");
    expect(files.map((f) => f.name)).toContain("google/protobuf/descriptor.proto");
    expect(registryFrom(files).getExtension("pb.cpp")?.number).toBe(1000);
    expect(answers[1]?.messageResponse).toEqual({
      case: "allExtensionNumbersResponse",
      value: expect.objectContaining({ baseTypeName: "google.protobuf.FeatureSet", extensionNumber: [1000] }),
    });
    expect(answers[2]?.messageResponse).toEqual({
      case: "allExtensionNumbersResponse",
      value: expect.objectContaining({ baseTypeName: "mvm.v1.Instance", extensionNumber: [] }),
    });
    // An enum is not a message type, so it has no extension numbers to list.
    expect(answers[3]?.messageResponse.case).toBe("errorResponse");
  });

  it("does not list services of extra files", async () => {
    const [answer] = await askV1([{ case: "listServices", value: "" }], { extraFiles: [file_google_protobuf_cpp_features] }, false);
    const names = answer?.messageResponse.case === "listServicesResponse"
      ? answer.messageResponse.value.service.map((s) => s.name)
      : [];
    expect(names).toHaveLength(3);
  });
});

describe("grpc.reflection.v1alpha ServerReflectionInfo", () => {
  it("answers the same questions in the v1alpha messages", async () => {
    const client = createClient(v1alpha.ServerReflection, createRouterTransport(routes()));
    async function* requests() {
      yield create(v1alpha.ServerReflectionRequestSchema, { host: "h", messageRequest: { case: "listServices", value: "" } });
      yield create(v1alpha.ServerReflectionRequestSchema, {
        host: "h",
        messageRequest: { case: "fileContainingSymbol", value: "mvm.v1.NodeService.GetNodeInfo" },
      });
      yield create(v1alpha.ServerReflectionRequestSchema, {
        host: "h",
        messageRequest: { case: "fileContainingSymbol", value: "nope.Nope" },
      });
    }
    const answers: v1alpha.ServerReflectionResponse[] = [];
    for await (const answer of client.serverReflectionInfo(requests())) answers.push(answer);
    expect(answers.map((a) => a.$typeName)).toEqual(Array(3).fill("grpc.reflection.v1alpha.ServerReflectionResponse"));
    const list = answers[0]?.messageResponse;
    expect(list?.case === "listServicesResponse" && list.value.service.map((s) => s.name)).toContain("mvm.v1.NodeService");
    const files = answers[1]?.messageResponse;
    if (files?.case !== "fileDescriptorResponse") throw new Error(`expected files, got ${files?.case}`);
    const decoded = files.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b));
    expect(decoded[0]?.name).toBe("mvm/v1/node_service.proto");
    expect(registryFrom(decoded).getService("mvm.v1.NodeService")).toBeDefined();
    const error = answers[2]?.messageResponse;
    expect(error?.case === "errorResponse" && error.value.errorCode).toBe(Code.NotFound);
  });
});
