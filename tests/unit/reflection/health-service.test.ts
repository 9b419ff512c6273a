import { describe, expect, it } from "vitest";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as Wire } from "../../../gen/grpc/health/v1/health_pb.js";
import {
  HealthStatusBoard,
  registerHealth,
  type HealthSource,
  type ServingStatus,
} from "../../../src/api/health/index.js";

function clientFor(source: HealthSource, watchPollMs?: number, shutdownSignal?: AbortSignal) {
  return createClient(
    Health,
    createRouterTransport((router) => registerHealth(router, source, { watchPollMs, shutdownSignal })),
  );
}

async function codeOf(call: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await call;
    return "ok";
  } catch (e) {
    return ConnectError.from(e).code;
  }
}

describe("grpc.health.v1.Health", () => {
  it("checks the server and named services", async () => {
    const board = new HealthStatusBoard([
      ["", "SERVING"],
      ["mvm.v1.InstanceService", "NOT_SERVING"],
    ]);
    const client = clientFor(board);
    expect((await client.check({ service: "" })).status).toBe(Wire.SERVING);
    expect((await client.check({ service: "mvm.v1.InstanceService" })).status).toBe(Wire.NOT_SERVING);
    board.set("mvm.v1.InstanceService", "SERVING");
    expect((await client.check({ service: "mvm.v1.InstanceService" })).status).toBe(Wire.SERVING);
  });

  it("answers NotFound for a service it has no status for", async () => {
    const client = clientFor(new HealthStatusBoard([["", "SERVING"]]));
    expect(await codeOf(client.check({ service: "mvm.v1.Nope" }))).toBe(Code.NotFound);
  });

  it("lists every known service", async () => {
    const client = clientFor(new HealthStatusBoard([["", "SERVING"], ["a", "NOT_SERVING"]]));
    const { statuses } = await client.list({});
    expect(Object.fromEntries(Object.entries(statuses).map(([k, v]) => [k, v.status]))).toEqual({
      "": Wire.SERVING,
      a: Wire.NOT_SERVING,
    });
  });

  it("answers Unimplemented to List when the source cannot enumerate", async () => {
    const client = clientFor({ check: () => "SERVING" });
    expect(await codeOf(client.list({}))).toBe(Code.Unimplemented);
  });

  it("watches: current status first, then each change, NOT_SERVING on shutdown", async () => {
    const board = new HealthStatusBoard([["", "SERVING"]]);
    const client = clientFor(board);
    const abort = new AbortController();
    const seen: Wire[] = [];
    const stream = client.watch({ service: "" }, { signal: abort.signal });
    const iterator = stream[Symbol.asyncIterator]();
    const next = async () => {
      const r = await iterator.next();
      if (r.done) throw new Error("stream ended");
      seen.push(r.value.status);
    };
    await next();
    board.set("", "NOT_SERVING");
    await next();
    board.set("", "SERVING");
    await next();
    board.shutdown();
    await next();
    // After shutdown nothing can turn it back to SERVING.
    board.set("", "SERVING");
    expect(board.check("")).toBe("NOT_SERVING");
    abort.abort();
    expect(seen).toEqual([Wire.SERVING, Wire.NOT_SERVING, Wire.SERVING, Wire.NOT_SERVING]);
  });

  it("watches an unknown service as SERVICE_UNKNOWN, then its status once it is set", async () => {
    const board = new HealthStatusBoard();
    const client = clientFor(board);
    const abort = new AbortController();
    const iterator = client.watch({ service: "later" }, { signal: abort.signal })[Symbol.asyncIterator]();
    expect((await iterator.next()).value?.status).toBe(Wire.SERVICE_UNKNOWN);
    board.set("later", "SERVING");
    expect((await iterator.next()).value?.status).toBe(Wire.SERVING);
    abort.abort();
  });

  it("polls a source without its own watch, yielding only changes", async () => {
    let status: ServingStatus = "SERVING";
    let checks = 0;
    const client = clientFor(
      {
        check: () => {
          checks++;
          return status;
        },
      },
      5,
    );
    const abort = new AbortController();
    const iterator = client.watch({ service: "" }, { signal: abort.signal })[Symbol.asyncIterator]();
    expect((await iterator.next()).value?.status).toBe(Wire.SERVING);
    const checksBefore = checks;
    status = "NOT_SERVING";
    expect((await iterator.next()).value?.status).toBe(Wire.NOT_SERVING);
    expect(checks).toBeGreaterThan(checksBefore);
    abort.abort();
  });

  it("ends Watch streams with Unavailable on server shutdown, after sending NOT_SERVING", async () => {
    const board = new HealthStatusBoard([["", "SERVING"]]);
    const serverShutdown = new AbortController();
    const client = clientFor(board, undefined, serverShutdown.signal);
    const seen: Wire[] = [];
    const watching = (async () => {
      for await (const r of client.watch({ service: "" })) {
        seen.push(r.status);
        if (seen.length === 1) {
          // What the agent's stop() does: statuses first, then the abort, in the same tick.
          board.shutdown();
          serverShutdown.abort();
        }
      }
    })();
    expect(await codeOf(watching)).toBe(Code.Unavailable);
    expect(seen).toEqual([Wire.SERVING, Wire.NOT_SERVING]);
  });

  it("shutdown marks every service NOT_SERVING", () => {
    const board = new HealthStatusBoard([["", "SERVING"], ["x", "SERVING"]]);
    board.shutdown();
    expect(board.isShuttingDown).toBe(true);
    expect(board.services().map((s) => board.check(s))).toEqual(["NOT_SERVING", "NOT_SERVING"]);
  });
});
