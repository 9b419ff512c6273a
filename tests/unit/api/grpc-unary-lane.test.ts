// The direct lane for unary gRPC calls against clients no one here wrote: Connect's gRPC transport and @grpc/grpc-js
// (through the generic client), over a plain HTTP/2 server on loopback. What the lane does not take must reach the
// Connect handler unchanged.

import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createContextKey, createContextValues, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter, createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createGrpcUnaryLane, dispatchStream, type GrpcUnaryLane } from "../../../src/api/grpc-unary-lane.js";
import { GetVersionResponseSchema } from "../../../gen/mvm/v1/agent_service_pb.js";
import { InstanceService, GetInstanceResponseSchema } from "../../../gen/mvm/v1/instance_service_pb.js";
import { InstanceSchema } from "../../../gen/mvm/v1/instance_pb.js";

const CALLER = createContextKey<string>("nobody");
const seen: string[] = [];
let slowMs = 0;

const impl = {
  async getInstance(req: { instance?: { instanceId: string } }, context: { values: { get(k: typeof CALLER): string }; responseHeader: Headers }) {
    const id = req.instance?.instanceId ?? "";
    if (slowMs > 0) await new Promise((r) => setTimeout(r, slowMs));
    if (id === "i-missing0") throw new ConnectError(`instance ${id} not found`, Code.NotFound, { "x-why": "gone" });
    if (id === "i-explode0") throw new Error("a bug");
    context.responseHeader.set("x-handled-for", context.values.get(CALLER));
    return create(GetInstanceResponseSchema, { instance: create(InstanceSchema, { instanceId: id, tenantId: "acme" }) });
  },
};

const tag: Interceptor = (next) => async (req) => {
  seen.push(`${req.method.name}:${req.stream ? "stream" : "unary"}`);
  req.contextValues.set(CALLER, "test-caller");
  const res = await next(req);
  res.header.set("x-intercepted", "yes");
  return res;
};

let server: http2.Http2Server;
let lane: GrpcUnaryLane;
let baseUrl: string;
const sessions = new Set<http2.ServerHttp2Session>();

beforeAll(async () => {
  lane = createGrpcUnaryLane({
    services: [{ service: InstanceService, impl }],
    interceptors: [tag],
    contextValues: () => createContextValues(),
    readMaxBytes: 1024,
  });
  const connectHandler = connectNodeAdapter({
    routes: (router) => router.service(InstanceService, impl as never),
    interceptors: [tag],
  });
  server = http2.createServer();
  server.on("session", (session) => sessions.add(session));
  server.on("stream", dispatchStream(lane, connectHandler));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  const closed = new Promise<void>((r) => server.close(() => r()));
  for (const session of sessions) session.destroy();
  await closed;
});

const ref = (instanceId: string) => ({ instance: { tenantId: "acme", poolId: "web", instanceId } });

describe("the unary gRPC lane", () => {
  it("serves a unary gRPC call with the service, the interceptors, their headers and the context values", async () => {
    const client = createClient(InstanceService, createGrpcTransport({ baseUrl }));
    const before = lane.served;
    let header: Headers | undefined;
    const res = await client.getInstance(ref("i-0000000a"), { onHeader: (h) => (header = h) });
    expect(res.instance?.instanceId).toBe("i-0000000a");
    expect(lane.served).toBe(before + 1);
    expect(header?.get("x-intercepted")).toBe("yes");
    expect(header?.get("x-handled-for")).toBe("test-caller");
    expect(seen.at(-1)).toBe("GetInstance:unary");
  });

  it("answers errors with code, message and metadata, and hides unexpected ones", async () => {
    const client = createClient(InstanceService, createGrpcTransport({ baseUrl }));
    const missing = await client.getInstance(ref("i-missing0")).catch((e: unknown) => ConnectError.from(e));
    expect(missing).toBeInstanceOf(ConnectError);
    expect((missing as ConnectError).code).toBe(Code.NotFound);
    expect((missing as ConnectError).rawMessage).toBe("instance i-missing0 not found");
    expect((missing as ConnectError).metadata.get("x-why")).toBe("gone");
    const bug = await client.getInstance(ref("i-explode0")).catch((e: unknown) => ConnectError.from(e));
    expect((bug as ConnectError).code).toBe(Code.Internal);
    expect((bug as ConnectError).rawMessage).not.toContain("a bug");
  });

  it("ends a call that outlives its grpc-timeout with DeadlineExceeded", async () => {
    slowMs = 300;
    try {
      const client = createClient(InstanceService, createGrpcTransport({ baseUrl }));
      const late = await client.getInstance(ref("i-0000000b"), { timeoutMs: 50 }).catch((e: unknown) => ConnectError.from(e));
      expect((late as ConnectError).code).toBe(Code.DeadlineExceeded);
    } finally {
      slowMs = 0;
    }
  });

  it("refuses a message above readMaxBytes and a compressed message it was not told about", async () => {
    const session = http2.connect(baseUrl);
    try {
      const call = (frame: Buffer) =>
        new Promise<{ status: string; message: string }>((resolve, reject) => {
          const stream = session.request({ ":method": "POST", ":path": "/mvm.v1.InstanceService/GetInstance", "content-type": "application/grpc", te: "trailers" });
          let status = "";
          let message = "";
          const take = (h: http2.IncomingHttpHeaders) => {
            if (h["grpc-status"] !== undefined) status = String(h["grpc-status"]);
            if (h["grpc-message"] !== undefined) message = decodeURIComponent(String(h["grpc-message"]));
          };
          stream.on("response", take);
          stream.on("trailers", take);
          stream.on("data", () => undefined);
          stream.on("end", () => resolve({ status, message }));
          stream.on("error", reject);
          stream.end(frame);
        });
      const big = Buffer.alloc(5 + 2048);
      big.writeUInt32BE(2048, 1);
      expect(await call(big)).toMatchObject({ status: String(Code.ResourceExhausted) });
      const body = toBinary(GetVersionResponseSchema, create(GetVersionResponseSchema, {}));
      const compressed = Buffer.alloc(5 + body.length);
      compressed[0] = 1;
      compressed.writeUInt32BE(body.length, 1);
      const refused = await call(compressed);
      expect(refused.status).toBe(String(Code.Internal));
      expect(refused.message).toMatch(/compressed/);
    } finally {
      session.close();
    }
  });

  it("leaves the Connect protocol to the Connect handler, with the same result", async () => {
    const client = createClient(InstanceService, createConnectTransport({ baseUrl, httpVersion: "2" }));
    const before = lane.served;
    const res = await client.getInstance(ref("i-0000000c"));
    expect(res.instance?.instanceId).toBe("i-0000000c");
    expect(lane.served).toBe(before);
    expect(seen.at(-1)).toBe("GetInstance:unary");
  });
});

describe("the unary gRPC lane's call signal", () => {
  it("reaches a handler that waits on it: ended by agent shutdown (Unavailable) and by the client going away", async () => {
    const shutdown = new AbortController();
    const reasons: unknown[] = [];
    let entered!: () => void;
    const waitingImpl = {
      getInstance(_req: unknown, context: { signal: AbortSignal }) {
        entered();
        return new Promise((_, reject) => {
          context.signal.addEventListener("abort", () => {
            reasons.push(context.signal.reason);
            reject(context.signal.reason);
          });
        });
      },
    };
    const waitingLane = createGrpcUnaryLane({
      services: [{ service: InstanceService, impl: waitingImpl }],
      interceptors: [],
      contextValues: () => createContextValues(),
      shutdownSignal: shutdown.signal,
    });
    const waitingServer = http2.createServer();
    const open = new Set<http2.ServerHttp2Session>();
    waitingServer.on("session", (s) => open.add(s));
    waitingServer.on("stream", dispatchStream(waitingLane, () => undefined));
    await new Promise<void>((r) => waitingServer.listen(0, "127.0.0.1", r));
    try {
      const client = createClient(InstanceService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${(waitingServer.address() as AddressInfo).port}` }));
      let inHandler = new Promise<void>((r) => (entered = r));
      const first = client.getInstance(ref("i-0000000c")).catch((e: unknown) => ConnectError.from(e));
      await inHandler;
      shutdown.abort();
      expect(((await first) as ConnectError).code).toBe(Code.Unavailable);

      inHandler = new Promise<void>((r) => (entered = r));
      const gone = new AbortController();
      const second = client.getInstance(ref("i-0000000d"), { signal: gone.signal }).catch(() => undefined);
      await inHandler;
      gone.abort();
      await second;
      await expect.poll(() => reasons.length).toBe(2);
      expect((reasons[1] as ConnectError).code).toBe(Code.Canceled);
    } finally {
      for (const s of open) s.destroy();
      await new Promise<void>((r) => waitingServer.close(() => r()));
    }
  });
});
