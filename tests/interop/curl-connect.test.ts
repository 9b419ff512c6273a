// curl speaking the Connect protocol (JSON over HTTP/2 POST) to the agent over mTLS: the API needs no gRPC library.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execa } from "execa";
import { startAgentUnderTest, type AgentUnderTest } from "./fixtures/agent-under-test.js";
import { CURL_BIN, binaryPresent, tlsFlags } from "./fixtures/clients.js";
import type { ClientCertFiles } from "./fixtures/interop-pki.js";

const STATUS_MARK = "\nhttp-status:";

if (!binaryPresent(CURL_BIN)) console.log(`interop: skipping curl: ${CURL_BIN} not found (install curl)`);

let agent: AgentUnderTest;

async function connectCall(procedure: string, body: unknown, client: ClientCertFiles | null) {
  const result = await execa(
    CURL_BIN,
    [
      "--silent", "--show-error", "--http2", "--max-time", "20",
      ...tlsFlags(agent.pki.caPath, client),
      "-H", "Content-Type: application/json",
      "-H", "Connect-Protocol-Version: 1",
      "--data-binary", JSON.stringify(body),
      "--write-out", `${STATUS_MARK}%{http_code} %{http_version}`,
      `${agent.baseUrl}/${procedure}`,
    ],
    { reject: false, timeout: 30_000 },
  );
  const at = result.stdout.lastIndexOf(STATUS_MARK);
  const [status, httpVersion] = at < 0 ? ["", ""] : result.stdout.slice(at + STATUS_MARK.length).split(" ");
  const text = at < 0 ? result.stdout : result.stdout.slice(0, at);
  return { exitCode: result.exitCode, stderr: result.stderr, status: Number(status), httpVersion, text };
}

describe.skipIf(!binaryPresent(CURL_BIN))("curl with the Connect JSON protocol", () => {
  beforeAll(async () => {
    agent = await startAgentUnderTest();
    console.log(`interop: curl against the agent on port ${agent.port}`);
  });

  afterAll(async () => {
    await agent?.stop();
  });

  it("calls NodeService.GetNodeInfo over HTTP/2", async () => {
    const r = await connectCall("mvm.v1.NodeService/GetNodeInfo", {}, agent.pki.admin);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.status).toBe(200);
    expect(r.httpVersion).toBe("2");
    expect((JSON.parse(r.text) as { node?: { nodeId?: string } }).node?.nodeId).toBe(agent.nodeId);
  });

  it("calls InstanceService.GetInstance with a JSON request", async () => {
    const r = await connectCall("mvm.v1.InstanceService/GetInstance", { instance: agent.instanceA }, agent.pki.admin);
    expect(r.status, r.text).toBe(200);
    expect(JSON.parse(r.text)).toMatchObject({ instance: { instanceId: agent.instanceA.instanceId } });
  });

  it("gets a Connect error body with permission_denied (HTTP 403) for another tenant's instance", async () => {
    const r = await connectCall("mvm.v1.InstanceService/GetInstance", { instance: agent.instanceB }, agent.pki.tenantA);
    expect(r.status).toBe(403);
    expect(JSON.parse(r.text)).toMatchObject({ code: "permission_denied" });
  });

  it("fails the handshake without a client certificate", async () => {
    const r = await connectCall("mvm.v1.NodeService/GetNodeInfo", {}, null);
    expect(r.exitCode).not.toBe(0);
    expect(r.status).toBe(0);
    expect(r.text).toBe("");
  });
});
