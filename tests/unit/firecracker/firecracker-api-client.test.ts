import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { FirecrackerApiClient, FirecrackerApiError } from "../../../src/runtime/firecracker/firecracker-api-client.js";
import { bootRequests, pauseRequest, snapshotCreateRequest } from "../../../src/runtime/firecracker/firecracker-requests.js";
import { FirecrackerSpec } from "./firecracker-spec.js";
import { startFirecrackerTestDouble } from "./firecracker-test-double.mjs";

const spec = new FirecrackerSpec();
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-fc-client-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const boot = () =>
  bootRequests({
    vcpus: 1,
    memMib: 64,
    trackDirtyPages: false,
    kernelPath: "/k",
    initrdPath: null,
    kernelArgs: ["mvm.instance=i-00000001"],
    drives: [
      { role: "root", path: "/r", readOnly: false },
      { role: "data", path: "/d", readOnly: true },
      { role: "secrets", path: "/s", readOnly: true },
    ],
    tap: { name: "tap0", mac: "02:00:00:00:00:01" },
    logPath: join(dir, "fc.log"),
    metricsPath: join(dir, "none.fifo"),
    serialOutPath: null,
  }).filter((r) => r.path !== "/metrics");

describe("FirecrackerApiClient against the API test double", () => {
  it("sends a boot over the Unix socket; the double (checking the specification) accepts all of it", async () => {
    const socketPath = join(dir, "api.sock");
    const double = await startFirecrackerTestDouble({ socketPath, check: (r) => spec.check(r) });
    try {
      const client = new FirecrackerApiClient(socketPath);
      await client.sendAll(boot());
      const info = await client.send({ method: "GET", path: "/", body: null });
      expect(info.status).toBe(200);
      expect(spec.checkResponse("GET", "/", 200, info.body)).toEqual([]);
      expect(info.body).toMatchObject({ state: "Running", id: "i-00000001" });
      expect(double.requests.map((r) => r.path)).toContain("/actions");
    } finally {
      await double.close();
    }
  });

  it("turns a 400 into a FirecrackerApiError carrying the fault message", async () => {
    const socketPath = join(dir, "api.sock");
    const double = await startFirecrackerTestDouble({ socketPath, check: (r) => spec.check(r) });
    try {
      const client = new FirecrackerApiClient(socketPath);
      // A snapshot of a VM that never started: the wrong phase.
      const error = await client.send(snapshotCreateRequest("full", join(dir, "m"), join(dir, "s"))).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(FirecrackerApiError);
      expect((error as FirecrackerApiError).status).toBe(400);
      expect((error as FirecrackerApiError).kind).toBe("failed_precondition");
      expect((error as Error).message).toMatch(/^firecracker api PUT \/snapshot\/create: status 400: the microVM must be paused/);
      // A body the specification refuses comes back as the double's 400 too.
      const bad = await client.send({ method: "PATCH", path: "/vm", body: { state: "Sleeping" } }).catch((e: unknown) => e);
      expect((bad as FirecrackerApiError).status).toBe(400);
    } finally {
      await double.close();
    }
  });

  it("retries 503 with backoff and succeeds once the server is no longer busy", async () => {
    const socketPath = join(dir, "api.sock");
    const double = await startFirecrackerTestDouble({ socketPath, busyCount: 3 });
    try {
      const client = new FirecrackerApiClient(socketPath, { retryBaseMs: 5 });
      const started = Date.now();
      const answer = await client.send({ method: "GET", path: "/version", body: null });
      expect(answer.body).toEqual({ firecracker_version: "1.17.0" });
      expect(double.requests).toHaveLength(4);
      // 5 + 10 + 20 ms of backoff at least.
      expect(Date.now() - started).toBeGreaterThanOrEqual(30);
    } finally {
      await double.close();
    }
  });

  it("gives up on a server that stays busy once the call's timeout has passed", async () => {
    const socketPath = join(dir, "api.sock");
    const double = await startFirecrackerTestDouble({ socketPath, busyCount: 10_000 });
    try {
      const client = new FirecrackerApiClient(socketPath, { timeoutMs: 200, retryBaseMs: 10 });
      const error = await client.send(pauseRequest()).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(FirecrackerApiError);
      expect((error as FirecrackerApiError).status).toBe(503);
      expect((error as Error).message).toMatch(/status 503: the api server is busy/);
    } finally {
      await double.close();
    }
  });

  it("times out a call that gets no answer, and a missing socket is an unavailable error", async () => {
    const socketPath = join(dir, "silent.sock");
    const silent = createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(socketPath, resolve));
    try {
      const error = await new FirecrackerApiClient(socketPath, { timeoutMs: 150 }).send(pauseRequest()).catch((e: unknown) => e);
      expect((error as Error).message).toMatch(/PATCH \/vm: no answer within 150 ms/);
    } finally {
      silent.close();
    }
    const missing = await new FirecrackerApiClient(join(dir, "nothing.sock")).send(pauseRequest()).catch((e: unknown) => e);
    expect(missing).toMatchObject({ kind: "unavailable" });
  });

  it("never has two calls to one socket open at the same time", async () => {
    const socketPath = join(dir, "count.sock");
    let open = 0;
    let maxOpen = 0;
    // A call is open from its first byte on the server until its answer has gone out.
    const server = createServer((socket) => {
      socket.once("data", () => {
        open += 1;
        maxOpen = Math.max(maxOpen, open);
        setTimeout(() => {
          open -= 1;
          socket.end("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }, 15);
      });
    });
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    try {
      const clients = [new FirecrackerApiClient(socketPath), new FirecrackerApiClient(socketPath)];
      await Promise.all(Array.from({ length: 6 }, (_, i) => (clients[i % 2] as FirecrackerApiClient).send(pauseRequest())));
      expect(maxOpen).toBe(1);
    } finally {
      server.close();
    }
  });
});
