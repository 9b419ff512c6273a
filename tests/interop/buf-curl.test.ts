// buf curl (Buf's Go client) against the agent over mTLS, with no local schema: everything it knows about the API
// comes from the server's reflection service.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execa } from "execa";
import { startAgentUnderTest, type AgentUnderTest } from "./fixtures/agent-under-test.js";
import { BUF_BIN, binaryPresent, parseJsonDocuments, tlsFlags } from "./fixtures/clients.js";

const REFLECT_PROTOCOLS = ["grpc-v1", "grpc-v1alpha"] as const;

let agent: AgentUnderTest;

beforeAll(async () => {
  agent = await startAgentUnderTest();
  console.log(`interop: buf curl against the agent on port ${agent.port}`);
});

afterAll(async () => {
  await agent?.stop();
});

function bufCurl(args: string[], timeoutMs = 30_000) {
  return execa(BUF_BIN, ["curl", ...args], { reject: false, timeout: timeoutMs, env: { NO_COLOR: "1" } });
}

function adminFlags() {
  return tlsFlags(agent.pki.caPath, agent.pki.admin);
}

describe.skipIf(!binaryPresent(BUF_BIN))("buf curl through server reflection", () => {
  for (const reflectProtocol of REFLECT_PROTOCOLS) {
    it(`lists the services (${reflectProtocol})`, async () => {
      const result = await bufCurl([
        "--protocol", "grpc", ...adminFlags(), "--reflect-protocol", reflectProtocol, "--list-services", agent.baseUrl,
      ]);
      expect(result.stderr).toBe("");
      expect(result.exitCode).toBe(0);
      const services = result.stdout.split("\n").filter((l) => l !== "").sort();
      expect(services).toEqual(expect.arrayContaining([
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "mvm.v1.InstanceService",
        "mvm.v1.NodeService",
        "mvm.v1.TenantService",
      ]));
    });
  }

  it("lists the methods", async () => {
    const result = await bufCurl(["--protocol", "grpc", ...adminFlags(), "--list-methods", agent.baseUrl]);
    expect(result.exitCode, result.stderr).toBe(0);
    const methods = result.stdout.split("\n");
    expect(methods).toContain("mvm.v1.InstanceService/GetInstance");
    expect(methods).toContain("mvm.v1.InstanceService/WatchInstances");
    expect(methods).toContain("grpc.health.v1.Health/Watch");
  });

  for (const protocol of ["grpc", "grpcweb", "connect"] as const) {
    it(`makes a unary call, GetInstance, over ${protocol}`, async () => {
      const result = await bufCurl([
        "--protocol", protocol, ...adminFlags(),
        "-d", JSON.stringify({ instance: agent.instanceA }),
        `${agent.baseUrl}/mvm.v1.InstanceService/GetInstance`,
      ]);
      expect(result.exitCode, result.stderr).toBe(0);
      const [response] = parseJsonDocuments(result.stdout) as Array<{ instance?: Record<string, unknown> }>;
      expect(response?.instance).toMatchObject({
        tenantId: agent.instanceA.tenantId,
        poolId: agent.instanceA.poolId,
        instanceId: agent.instanceA.instanceId,
      });
    });
  }

  it("reads NodeService.GetNodeInfo", async () => {
    const result = await bufCurl([
      "--protocol", "grpc", ...adminFlags(), "-d", "{}", `${agent.baseUrl}/mvm.v1.NodeService/GetNodeInfo`,
    ]);
    expect(result.exitCode, result.stderr).toBe(0);
    const [response] = parseJsonDocuments(result.stdout) as Array<{ node?: { nodeId?: string } }>;
    expect(response?.node?.nodeId).toBe(agent.nodeId);
  });

  it("reads a server stream, WatchInstances, until its deadline", async () => {
    // Heartbeats every second; the 3.5 s deadline ends the stream after the snapshot, the marker and a few of them.
    const result = await bufCurl(
      [
        "--protocol", "grpc", ...adminFlags(), "--timeout", "3.5s",
        "-d", JSON.stringify({ heartbeatIntervalMs: 1000 }),
        `${agent.baseUrl}/mvm.v1.InstanceService/WatchInstances`,
      ],
      20_000,
    );
    // The deadline ends the call: buf reports deadline_exceeded, unless the agent (which gets the deadline as
    // grpc-timeout and sees its request signal abort) closed the stream first, which buf reads as a clean end.
    if (result.exitCode !== 0 || result.stderr !== "") expect(result.stderr).toMatch(/deadline_exceeded/i);
    const events = parseJsonDocuments(result.stdout) as Array<Record<string, unknown>>;
    const kinds = events.map((e) => ["upsert", "initialStateComplete", "heartbeat"].find((k) => k in e));
    const marker = kinds.indexOf("initialStateComplete");
    expect(marker).toBeGreaterThanOrEqual(2);
    expect(kinds.slice(0, marker).every((k) => k === "upsert")).toBe(true);
    const upserted = events.slice(0, marker).map((e) => (e.upsert as { instanceId: string }).instanceId);
    expect(upserted).toEqual(expect.arrayContaining([agent.instanceA.instanceId, agent.instanceB.instanceId]));
    expect(kinds.slice(marker + 1).filter((k) => k === "heartbeat").length).toBeGreaterThanOrEqual(2);
  });

  it("gets no schema with a certificate that carries no identity", async () => {
    const result = await bufCurl([
      "--protocol", "grpc", ...tlsFlags(agent.pki.caPath, agent.pki.noSpiffeId), "--list-services", agent.baseUrl,
    ]);
    expect(result.exitCode).not.toBe(0);
    expect(result.stdout).toBe("");
    // buf words the Unauthenticated status as its own registry login hint: "you are not authenticated".
    expect(result.stderr).toMatch(/not authenticated/);
  });

  it("checks health", async () => {
    const result = await bufCurl([
      "--protocol", "grpc", ...adminFlags(), "-d", "{}", `${agent.baseUrl}/grpc.health.v1.Health/Check`,
    ]);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(parseJsonDocuments(result.stdout)).toEqual([{ status: "SERVING" }]);
  });
});
