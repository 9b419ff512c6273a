// Who the agent turns away, seen from @grpc/grpc-js and from a bare TLS socket: no client certificate, a
// certificate from another CA, an expired one (all three at the handshake), a tenant acting on another tenant
// (PermissionDenied) and a certificate with no SPIFFE ID (Unauthenticated: no identity).

import { readFileSync } from "node:fs";
import { connect as tlsConnect } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import {
  GetInstanceRequestSchema,
  InstanceService,
  WatchInstancesRequestSchema,
} from "../../gen/mvm/v1/instance_service_pb.js";
import { GetNodeInfoRequestSchema, NodeService } from "../../gen/mvm/v1/node_service_pb.js";
import { startAgentUnderTest, type AgentUnderTest } from "./fixtures/agent-under-test.js";
import { grpcJsClient, grpcStatusOf } from "./fixtures/grpc-js-client.js";
import type { ClientCertFiles } from "./fixtures/interop-pki.js";

let agent: AgentUnderTest;

beforeAll(async () => {
  agent = await startAgentUnderTest();
  console.log(`interop: refusals against the agent on port ${agent.port}`);
});

afterAll(async () => {
  await agent?.stop();
});

/** GetNodeInfo through grpc-js with `client`: "ok" or the gRPC status it failed with. */
async function getNodeInfoAs(client: ClientCertFiles | null): Promise<"ok" | { code: number; details: string }> {
  const grpcClient = grpcJsClient(agent.port, agent.pki.caPath, client);
  try {
    await grpcClient.unary(NodeService.method.getNodeInfo, create(GetNodeInfoRequestSchema));
    return "ok";
  } catch (e) {
    return grpcStatusOf(e);
  } finally {
    grpcClient.close();
  }
}

/**
 * A bare TLS 1.3 connection offering h2. The server starts HTTP/2 (and sends its SETTINGS frame) only once it has
 * accepted the client's certificate, so `bytesFromServer` is 0 when the handshake was refused.
 */
function bareTlsAttempt(client: ClientCertFiles | null): Promise<{ bytesFromServer: number; error: string | null }> {
  return new Promise((resolve) => {
    let bytesFromServer = 0;
    let error: string | null = null;
    const socket = tlsConnect({
      host: "127.0.0.1",
      port: agent.port,
      ca: readFileSync(agent.pki.caPath),
      ...(client === null ? {} : { cert: readFileSync(client.certPath), key: readFileSync(client.keyPath) }),
      ALPNProtocols: ["h2"],
      minVersion: "TLSv1.3",
      servername: "localhost",
    });
    socket.on("data", (chunk: Buffer) => {
      bytesFromServer += chunk.length;
      socket.end();
    });
    socket.on("error", (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message;
    });
    socket.on("close", () => resolve({ bytesFromServer, error }));
    socket.setTimeout(10_000, () => socket.destroy(new Error("timed out")));
  });
}

/** The reasons the agent logged for handshakes it refused since log line `from`. */
async function handshakeRefusalsSince(from: number): Promise<string[]> {
  // The server logs from its tlsClientError listener, which may run just after the client saw the connection end.
  await new Promise((resolve) => setTimeout(resolve, 50));
  return agent.logs
    .slice(from)
    .map((line) => JSON.parse(line) as { msg?: string; reason?: string })
    .filter((entry) => entry.msg === "tls handshake refused")
    .map((entry) => entry.reason ?? "");
}

describe("refused clients", () => {
  it("accepts the admin certificate (the control for every refusal below)", async () => {
    expect(await getNodeInfoAs(agent.pki.admin)).toBe("ok");
    const bare = await bareTlsAttempt(agent.pki.admin);
    expect(bare.bytesFromServer).toBeGreaterThan(0);
  });

  it("refuses a client without a certificate at the handshake", async () => {
    const logged = agent.logs.length;
    const result = await getNodeInfoAs(null);
    expect(result).toMatchObject({ code: status.UNAVAILABLE });
    // TLS 1.3 alert 116, certificate_required.
    expect(result !== "ok" && result.details).toMatch(/certificate required/i);
    const bare = await bareTlsAttempt(null);
    expect(bare.bytesFromServer).toBe(0);
    expect(bare.error).toMatch(/CERTIFICATE_REQUIRED/i);
    expect((await handshakeRefusalsSince(logged)).join("\n")).toMatch(/peer did not return a certificate/);
  });

  it("refuses a certificate from another CA at the handshake", async () => {
    const logged = agent.logs.length;
    expect(await getNodeInfoAs(agent.pki.foreignAdmin)).toMatchObject({ code: status.UNAVAILABLE });
    const bare = await bareTlsAttempt(agent.pki.foreignAdmin);
    // Node closes the connection without an alert here; what matters is that HTTP/2 never started.
    expect(bare.bytesFromServer).toBe(0);
    expect(await handshakeRefusalsSince(logged)).toContain("client certificate refused: UNABLE_TO_VERIFY_LEAF_SIGNATURE");
  });

  it("refuses an expired certificate at the handshake", async () => {
    const logged = agent.logs.length;
    expect(await getNodeInfoAs(agent.pki.expiredAdmin)).toMatchObject({ code: status.UNAVAILABLE });
    const bare = await bareTlsAttempt(agent.pki.expiredAdmin);
    // Node closes the connection without an alert here; what matters is that HTTP/2 never started.
    expect(bare.bytesFromServer).toBe(0);
    expect(await handshakeRefusalsSince(logged)).toContain("client certificate refused: CERT_HAS_EXPIRED");
  });

  it("refuses a tenant certificate acting on another tenant with PermissionDenied", async () => {
    const client = grpcJsClient(agent.port, agent.pki.caPath, agent.pki.tenantA);
    try {
      const own = await client.unary(
        InstanceService.method.getInstance,
        create(GetInstanceRequestSchema, { instance: agent.instanceA }),
      );
      expect(own.instance?.instanceId).toBe(agent.instanceA.instanceId);
      const other = await client
        .unary(InstanceService.method.getInstance, create(GetInstanceRequestSchema, { instance: agent.instanceB }))
        .then(() => null, (e: unknown) => grpcStatusOf(e));
      expect(other?.code).toBe(status.PERMISSION_DENIED);

      const watch = client.serverStream(
        InstanceService.method.watchInstances,
        create(WatchInstancesRequestSchema, { filter: { tenantId: agent.instanceB.tenantId } }),
      );
      const received: unknown[] = [];
      const watchStatus = await new Promise<number>((resolve) => {
        watch.on("data", (event: unknown) => received.push(event));
        watch.on("error", (e: unknown) => resolve(grpcStatusOf(e).code));
        watch.on("end", () => resolve(status.OK));
      });
      expect(watchStatus).toBe(status.PERMISSION_DENIED);
      expect(received).toEqual([]);
    } finally {
      client.close();
    }
  });

  it("refuses a certificate of the right CA that carries no SPIFFE ID", async () => {
    const bare = await bareTlsAttempt(agent.pki.noSpiffeId);
    // The chain is valid, so TLS lets it through; the refusal is the API's.
    expect(bare.bytesFromServer).toBeGreaterThan(0);
    const result = await getNodeInfoAs(agent.pki.noSpiffeId);
    expect(result).toMatchObject({ code: status.UNAUTHENTICATED });
    // grpc-js leaves the percent-encoding of grpc-message's reserved characters (spiffe%3A%2F%2F...) in place.
    expect(result !== "ok" && decodeURIComponent(result.details)).toContain("carries no mvm identity");
  });
});
