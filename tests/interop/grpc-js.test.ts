// @grpc/grpc-js against the agent over mTLS: a unary call and a server stream.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { HealthCheckRequestSchema, Health, HealthCheckResponse_ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import {
  GetInstanceRequestSchema,
  InstanceService,
  WatchInstancesRequestSchema,
  type WatchInstancesResponse,
} from "../../gen/mvm/v1/instance_service_pb.js";
import { GetNodeInfoRequestSchema, NodeService } from "../../gen/mvm/v1/node_service_pb.js";
import { startAgentUnderTest, type AgentUnderTest } from "./fixtures/agent-under-test.js";
import { grpcJsClient, grpcStatusOf, type GrpcJsClient } from "./fixtures/grpc-js-client.js";

let agent: AgentUnderTest;
let client: GrpcJsClient;

beforeAll(async () => {
  agent = await startAgentUnderTest();
  console.log(`interop: @grpc/grpc-js against the agent on port ${agent.port}`);
  client = grpcJsClient(agent.port, agent.pki.caPath, agent.pki.admin);
});

afterAll(async () => {
  client?.close();
  await agent?.stop();
});

describe("@grpc/grpc-js client", () => {
  it("makes a unary call: GetInstance", async () => {
    const response = await client.unary(
      InstanceService.method.getInstance,
      create(GetInstanceRequestSchema, { instance: agent.instanceA }),
    );
    expect(response.instance?.tenantId).toBe(agent.instanceA.tenantId);
    expect(response.instance?.instanceId).toBe(agent.instanceA.instanceId);
  });

  it("makes a unary call: GetNodeInfo", async () => {
    const response = await client.unary(NodeService.method.getNodeInfo, create(GetNodeInfoRequestSchema));
    expect(response.node?.nodeId).toBe(agent.nodeId);
  });

  it("gets NotFound for an instance that does not exist", async () => {
    const missing = { ...agent.instanceA, instanceId: "i-ffffffff" };
    const error = await client
      .unary(InstanceService.method.getInstance, create(GetInstanceRequestSchema, { instance: missing }))
      .then(() => null, (e: unknown) => e);
    expect(grpcStatusOf(error).code).toBe(status.NOT_FOUND);
  });

  it("checks health", async () => {
    const response = await client.unary(Health.method.check, create(HealthCheckRequestSchema));
    expect(response.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
  });

  it("reads a server stream: WatchInstances snapshot, marker, then a heartbeat, and cancels it", async () => {
    const stream = client.serverStream(
      InstanceService.method.watchInstances,
      create(WatchInstancesRequestSchema, { heartbeatIntervalMs: 1000 }),
    );
    const events: WatchInstancesResponse[] = [];
    // Event listeners rather than for-await: leaving a for-await early destroys the stream with an AbortError that
    // nothing awaits, while cancel() is how a grpc-js caller ends a call.
    const ended = new Promise<{ code: number }>((resolve) => {
      stream.on("data", (event: WatchInstancesResponse) => {
        events.push(event);
        if (event.event.case === "heartbeat") stream.cancel();
      });
      stream.on("error", (e: unknown) => resolve(grpcStatusOf(e)));
      stream.on("end", () => resolve({ code: status.OK }));
    });
    expect((await ended).code).toBe(status.CANCELLED);
    const cases = events.map((e) => e.event.case);
    const marker = cases.indexOf("initialStateComplete");
    expect(cases.slice(0, marker)).toEqual(Array(marker).fill("upsert"));
    expect(marker).toBeGreaterThanOrEqual(2);
    expect(cases.at(-1)).toBe("heartbeat");
    const upserted = events.flatMap((e) => (e.event.case === "upsert" ? [e.event.value.instanceId] : []));
    expect(upserted).toEqual(expect.arrayContaining([agent.instanceA.instanceId, agent.instanceB.instanceId]));
    // Revisions never go down.
    const revisions = events.map((e) => e.revision);
    expect([...revisions].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))).toEqual(revisions);
  });
});
