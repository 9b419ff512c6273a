// Python grpcio from Debian (python3-grpcio, gRPC's C core) against the agent over mTLS: a unary call and a server
// stream. The request bytes are made here with protobuf-es and the response bytes decoded here, so the Python side
// needs no generated code.

import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execa } from "execa";
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { HealthCheckResponseSchema, HealthCheckResponse_ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import {
  GetInstanceRequestSchema,
  GetInstanceResponseSchema,
  WatchInstancesRequestSchema,
  WatchInstancesResponseSchema,
} from "../../gen/mvm/v1/instance_service_pb.js";
import { GetNodeInfoResponseSchema } from "../../gen/mvm/v1/node_service_pb.js";
import { REPO_ROOT } from "../helpers/transpile.js";
import { startAgentUnderTest, type AgentUnderTest } from "./fixtures/agent-under-test.js";
import { DEBIAN_PYTHON, binaryPresent } from "./fixtures/clients.js";
import type { ClientCertFiles } from "./fixtures/interop-pki.js";

const SCRIPT = join(REPO_ROOT, "tests/interop/python/grpc_call.py");

function grpcioVersion(): string | null {
  if (!binaryPresent(DEBIAN_PYTHON)) return null;
  try {
    return execFileSync(DEBIAN_PYTHON, ["-c", "import grpc; print(grpc.__version__)"], { encoding: "utf8" }).trim();
  } catch {
    return null;
  }
}

const version = grpcioVersion();
if (version === null) console.log(`interop: skipping Python grpcio: ${DEBIAN_PYTHON} cannot import grpc (install python3-grpcio)`);

let agent: AgentUnderTest;

interface PythonCallResult {
  messages: Uint8Array[];
  code: string;
  details: string;
}

async function pythonCall(options: {
  method: string;
  kind: "unary" | "stream";
  request: Uint8Array;
  client: ClientCertFiles | null;
  maxMessages?: number;
}): Promise<PythonCallResult> {
  const args = [
    SCRIPT,
    "--target", `127.0.0.1:${agent.port}`,
    "--ca", agent.pki.caPath,
    "--method", options.method,
    "--kind", options.kind,
    "--request-hex", Buffer.from(options.request).toString("hex"),
  ];
  if (options.client !== null) args.push("--cert", options.client.certPath, "--key", options.client.keyPath);
  if (options.maxMessages !== undefined) args.push("--max-messages", String(options.maxMessages));
  const result = await execa(DEBIAN_PYTHON, args, { reject: false, timeout: 30_000 });
  expect(result.exitCode, result.stderr).toBe(0);
  const lines = result.stdout.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as Record<string, string>);
  const last = lines.at(-1);
  if (last?.code === undefined) throw new Error(`no status line from grpc_call.py: ${result.stdout}\n${result.stderr}`);
  return {
    messages: lines.slice(0, -1).map((l) => new Uint8Array(Buffer.from(l.message ?? "", "hex"))),
    code: last.code,
    details: last.details ?? "",
  };
}

function decode<S extends DescMessage>(schema: S, bytes: Uint8Array | undefined): MessageShape<S> {
  if (bytes === undefined) throw new Error("no message");
  return fromBinary(schema, bytes);
}

describe.skipIf(version === null)(`Python grpcio ${version ?? ""} (Debian)`, () => {
  beforeAll(async () => {
    agent = await startAgentUnderTest();
    console.log(`interop: Python grpcio ${version} against the agent on port ${agent.port}`);
  });

  afterAll(async () => {
    await agent?.stop();
  });

  it("makes a unary call: GetInstance", async () => {
    const result = await pythonCall({
      method: "/mvm.v1.InstanceService/GetInstance",
      kind: "unary",
      request: toBinary(GetInstanceRequestSchema, create(GetInstanceRequestSchema, { instance: agent.instanceA })),
      client: agent.pki.admin,
    });
    expect(result.code).toBe("OK");
    const response = decode(GetInstanceResponseSchema, result.messages[0]);
    expect(response.instance?.instanceId).toBe(agent.instanceA.instanceId);
    expect(response.instance?.tenantId).toBe(agent.instanceA.tenantId);
  });

  it("makes a unary call: GetNodeInfo, and a health check", async () => {
    const info = await pythonCall({
      method: "/mvm.v1.NodeService/GetNodeInfo",
      kind: "unary",
      request: new Uint8Array(),
      client: agent.pki.admin,
    });
    expect(decode(GetNodeInfoResponseSchema, info.messages[0]).node?.nodeId).toBe(agent.nodeId);
    const health = await pythonCall({
      method: "/grpc.health.v1.Health/Check",
      kind: "unary",
      request: new Uint8Array(),
      client: agent.pki.admin,
    });
    expect(decode(HealthCheckResponseSchema, health.messages[0]).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
  });

  it("reads a server stream: WatchInstances up to the snapshot marker, then cancels", async () => {
    const result = await pythonCall({
      method: "/mvm.v1.InstanceService/WatchInstances",
      kind: "stream",
      request: toBinary(WatchInstancesRequestSchema, create(WatchInstancesRequestSchema, { heartbeatIntervalMs: 1000 })),
      client: agent.pki.admin,
      maxMessages: 4,
    });
    expect(result.code).toBe("CANCELLED");
    const events = result.messages.map((m) => decode(WatchInstancesResponseSchema, m));
    expect(events).toHaveLength(4);
    const cases = events.map((e) => e.event.case);
    const marker = cases.indexOf("initialStateComplete");
    expect(marker).toBeGreaterThanOrEqual(2);
    expect(cases.slice(0, marker).every((c) => c === "upsert")).toBe(true);
    const upserted = events.flatMap((e) => (e.event.case === "upsert" ? [e.event.value.instanceId] : []));
    expect(upserted).toEqual(expect.arrayContaining([agent.instanceA.instanceId, agent.instanceB.instanceId]));
  });

  it("is refused by a tenant certificate acting on another tenant", async () => {
    const result = await pythonCall({
      method: "/mvm.v1.InstanceService/GetInstance",
      kind: "unary",
      request: toBinary(GetInstanceRequestSchema, create(GetInstanceRequestSchema, { instance: agent.instanceB })),
      client: agent.pki.tenantA,
    });
    expect(result.code).toBe("PERMISSION_DENIED");
  });

  it("is refused without a client certificate", async () => {
    const result = await pythonCall({
      method: "/mvm.v1.NodeService/GetNodeInfo",
      kind: "unary",
      request: new Uint8Array(),
      client: null,
    });
    expect(result.code).toBe("UNAVAILABLE");
    expect(result.messages).toEqual([]);
  });
});
