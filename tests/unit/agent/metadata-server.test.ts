import http from "node:http";
import net, { type Server } from "node:net";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { startMetadataServer } from "../../../src/agent/metadata-server.js";
import { MemoryStore } from "../../../src/runtime/fake/memory-store.js";

const deps = {
  store: new MemoryStore(),
  clock: { nowMs: () => Date.now() },
  signer: { sign: () => "token", publicKeyPem: () => "PEM" },
};

function loopbackServer(): Promise<Server> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen({ host: "127.0.0.1", port: 0 }, () => resolve(s));
  });
}

function get(port: number, path: string): Promise<{ status: number; body: string; cache: string | undefined }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: "127.0.0.1", port, path, agent: false }, (res) => {
        let body = "";
        res.on("data", (d) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body, cache: res.headers["cache-control"] }));
      })
      .on("error", reject);
  });
}

const start = (listen: () => Promise<Server>) => startMetadataServer({ deps, nodeId: "n-1", logger: pino({ level: "silent" }), retryMs: 20, listen });

describe("metadata server", () => {
  it("retries until it has a socket, then serves on it; a caller that is no instance gets 403", async () => {
    let calls = 0;
    let bound: Server | null = null;
    const server = start(async () => {
      calls += 1;
      if (calls < 3) throw new Error("Cannot open network namespace");
      bound = await loopbackServer();
      return bound;
    });
    await server.serving;
    expect(calls).toBe(3);
    const port = (bound!.address() as net.AddressInfo).port;
    const answer = await get(port, "/v1/identity");
    expect(answer.status).toBe(403);
    expect(JSON.parse(answer.body).error).toMatch(/127\.0\.0\.1 is no tenant's gateway/);
    expect(answer.cache).toBe("no-store");
    expect((await get(port, "/nothing")).status).toBe(404);
    await server.close();
    await expect(get(port, "/v1/identity")).rejects.toThrow(/ECONNREFUSED/);
  });

  it("stops retrying when closed before it had a socket", async () => {
    let calls = 0;
    const server = start(async () => {
      calls += 1;
      throw new Error("no namespace yet");
    });
    await new Promise((r) => setTimeout(r, 50));
    await server.close();
    const seen = calls;
    await new Promise((r) => setTimeout(r, 100));
    expect(calls).toBe(seen);
  });
});
