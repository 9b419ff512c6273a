// The call observer's log lines and metrics: a line per call with the request id, the caller and the resources it
// named; successful side-effect-free calls only at debug; mutations, refusals and failures at info and above.

import { Writable } from "node:stream";
import { create } from "@bufbuild/protobuf";
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, type UnaryRequest, type UnaryResponse } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { createAgentLogger } from "../../../src/agent/agent-logger.js";
import { CALLER_KEY, REQUEST_ID_HEADER } from "../../../src/api/auth.js";
import { createCallObserver, SIDE_EFFECT_FREE_METHODS } from "../../../src/api/call-observer.js";
import { createMetrics } from "../../../src/platform/metrics.js";
import { InstanceService, GetInstanceRequestSchema, GetInstanceResponseSchema } from "../../../gen/mvm/v1/instance_service_pb.js";
import { CreateTenantRequestSchema, CreateTenantResponseSchema, TenantService } from "../../../gen/mvm/v1/tenant_service_pb.js";

function observed(level: string) {
  const lines: Array<Record<string, unknown>> = [];
  const destination = new Writable({
    write(chunk, _e, done) {
      lines.push(JSON.parse(String(chunk)) as Record<string, unknown>);
      done();
    },
  });
  const metrics = createMetrics({ processMetrics: false });
  const observer = createCallObserver({ metrics, logger: createAgentLogger({ level, destination }) });
  async function call(service: { typeName: string }, method: DescMethod, message: unknown, outcome: unknown | Error): Promise<UnaryResponse> {
    const contextValues = createContextValues();
    contextValues.set(CALLER_KEY, { kind: "admin", id: "spiffe://mvm/admin" });
    const req = {
      stream: false,
      service,
      method,
      requestMethod: "POST",
      url: "https://localhost/x",
      signal: new AbortController().signal,
      header: new Headers({ [REQUEST_ID_HEADER]: "0f8fad5b-d9cb-469f-a165-70867728950e" }),
      contextValues,
      message,
    } as unknown as UnaryRequest;
    const next = async (): Promise<UnaryResponse> => {
      if (outcome instanceof Error) throw outcome;
      return { stream: false, service, method, header: new Headers(), trailer: new Headers(), message: outcome } as unknown as UnaryResponse;
    };
    return observer(next as never)(req) as Promise<UnaryResponse>;
  }
  return { lines, metrics, call };
}

const getInstance = (tenantId = "acme") =>
  create(GetInstanceRequestSchema, { instance: { tenantId, poolId: "web", instanceId: "i-0000000a" } });

describe("call observer", () => {
  it("logs nothing at info for a successful read, but counts it and answers with the request id", async () => {
    const o = observed("info");
    const res = await o.call(InstanceService, InstanceService.method.getInstance, getInstance(), create(GetInstanceResponseSchema));
    expect(o.lines).toEqual([]);
    expect(res.header.get(REQUEST_ID_HEADER)).toBe("0f8fad5b-d9cb-469f-a165-70867728950e");
    expect(await o.metrics.render()).toMatch(/mvm_rpc_requests_total\{service="mvm.v1.InstanceService",method="GetInstance",code="ok"\} 1/);
  });

  it("logs a successful read at debug, with the request id, the caller and the resources it named", async () => {
    const o = observed("debug");
    await o.call(InstanceService, InstanceService.method.getInstance, getInstance(), create(GetInstanceResponseSchema));
    expect(o.lines).toHaveLength(1);
    expect(o.lines[0]).toMatchObject({
      level: 20,
      msg: "rpc ok",
      reqId: "0f8fad5b-d9cb-469f-a165-70867728950e",
      rpc: "mvm.v1.InstanceService/GetInstance",
      peer: "admin",
      tenant: "acme",
      pool: "web",
      instance: "i-0000000a",
      code: "ok",
    });
  });

  it("logs a mutation at info, and a refused read at info with its reason", async () => {
    const o = observed("info");
    await o.call(TenantService, TenantService.method.createTenant, create(CreateTenantRequestSchema, { tenantId: "acme" }), create(CreateTenantResponseSchema));
    await expect(
      o.call(InstanceService, InstanceService.method.getInstance, getInstance("other"), new ConnectError("instance other/web/i-0000000a not found", Code.NotFound)),
    ).rejects.toThrow(/not found/);
    expect(o.lines.map((l) => [l.level, l.msg, l.rpc, l.tenant, l.code])).toEqual([
      [30, "rpc ok", "mvm.v1.TenantService/CreateTenant", "acme", "ok"],
      [30, "rpc refused", "mvm.v1.InstanceService/GetInstance", "other", "not_found"],
    ]);
  });

  it("treats as side-effect free only methods whose names say they read", () => {
    for (const method of SIDE_EFFECT_FREE_METHODS) {
      expect(method.name).toMatch(/^(Get|List|Watch|Tail|Verify|Plan|Stream|Check|ServerReflectionInfo)/);
      expect(method.name).not.toMatch(/^VerifyNetwork$/); // it repairs when asked
    }
  });
});
