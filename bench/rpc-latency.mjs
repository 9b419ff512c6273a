#!/usr/bin/env node
// Unary GetInstance latency through the real agent server over mTLS HTTP/2, against a raw node:http2 mTLS server
// that answers the same bytes with no framework at all, in the same run (ISSUE 5: p50 ratio target <= 2.0).
//
// Both servers get the identical client: one HTTP/2 session each, TLS 1.3 with a client certificate, the same
// gRPC-framed request, one call in flight at a time, so the ratio is the cost of everything the agent adds per
// call (Connect routing, the call observer and auth interceptors, the handler, the store read, serialization).
// The raw server replies with the agent's own response bytes, captured once, so both move the same payload.
// The agent is the production composition (openNodeRuntime's adapters, FsStore on a temporary data root, the agent's
// own logger with its redaction); the logger formats every line but writes them nowhere, so terminal I/O is left out.
// A third server, for the breakdown only, is Connect alone: the same adapter and TLS settings with a handler that
// returns the captured response, no interceptors and no store; the ratio is still agent / raw.
//
// Usage: npm run build && node bench/rpc-latency.mjs [--calls N] [--warmup N] [--check]
//   --calls   measured calls per server (default 2000), interleaved in rounds of 100 to share the machine's noise
//   --warmup  calls per server before measuring (default 3000). The agent is a long-running daemon, so its steady
//             state is what counts: V8 optimizes its longer path only after a few thousand calls (measured p50 ratio
//             2.5 after 300 warm-up calls, 1.8-1.95 after 3000 or 6000; raw's p50 does not move).
//   --check   exit 1 when the p50 ratio is above the target

import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const P50_RATIO_TARGET = 2.0;
const ROUND = 100;
const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = (path) => pathToFileURL(join(root, "dist", path)).href;

const { values: flags } = parseArgs({
  options: {
    calls: { type: "string", default: "2000" },
    warmup: { type: "string", default: "3000" },
    check: { type: "boolean", default: false },
  },
});
const CALLS = Number(flags.calls);
const WARMUP = Number(flags.warmup);
if (!Number.isInteger(CALLS) || CALLS < ROUND || !Number.isInteger(WARMUP) || WARMUP < 0) {
  console.error(`rpc-latency: --calls must be a whole number >= ${ROUND}, --warmup a whole number >= 0`);
  process.exit(2);
}
if (!existsSync(join(root, "dist/src/agent/server.js"))) {
  console.error("rpc-latency: dist/src/agent/server.js not found: run `npm run build` first");
  process.exit(2);
}

const { create, toBinary } = await import("@bufbuild/protobuf");
const { createClient } = await import("@connectrpc/connect");
const { connectNodeAdapter, createGrpcTransport } = await import("@connectrpc/connect-node");
const { createAgentLogger } = await import(dist("src/agent/agent-logger.js"));
const { buildAgentServer } = await import(dist("src/agent/server.js"));
const { openNodeRuntime } = await import(dist("src/agent/node-runtime.js"));
const { WatchHub } = await import(dist("src/core/watch-hub.js"));
const { CertStore, createMtlsClientOptions, createMtlsServerOptions } = await import(dist("src/platform/pki/index.js"));
const { InstanceService, GetInstanceRequestSchema } = await import(dist("gen/mvm/v1/instance_service_pb.js"));
const { TenantService } = await import(dist("gen/mvm/v1/tenant_service_pb.js"));
const { PoolService } = await import(dist("gen/mvm/v1/pool_service_pb.js"));

const GET_INSTANCE_PATH = "/mvm.v1.InstanceService/GetInstance";

/** A gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, the bytes. */
function grpcFrame(bytes) {
  const frame = Buffer.alloc(5 + bytes.length);
  frame.writeUInt32BE(bytes.length, 1);
  frame.set(bytes, 5);
  return frame;
}

/** One unary gRPC call on `session`; resolves with the response body once the trailers say OK. */
function rawGrpcCall(session, path, frame) {
  return new Promise((resolve, reject) => {
    const stream = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
    });
    const chunks = [];
    let grpcStatus;
    stream.on("response", (headers) => {
      if (headers["grpc-status"] !== undefined) grpcStatus = String(headers["grpc-status"]);
    });
    stream.on("trailers", (trailers) => {
      grpcStatus = String(trailers["grpc-status"]);
    });
    stream.on("data", (chunk) => chunks.push(chunk));
    stream.on("error", reject);
    stream.on("end", () => {
      if (grpcStatus === "0") resolve(Buffer.concat(chunks));
      else reject(new Error(`${path}: grpc-status ${grpcStatus}`));
    });
    stream.end(frame);
  });
}

function percentile(sortedMs, p) {
  return sortedMs[Math.min(sortedMs.length - 1, Math.floor((p / 100) * sortedMs.length))];
}

function summary(samplesNs) {
  const ms = samplesNs.map((ns) => Number(ns) / 1e6).sort((a, b) => a - b);
  return { p50: percentile(ms, 50), p99: percentile(ms, 99), mean: ms.reduce((a, b) => a + b, 0) / ms.length };
}

function connect(port, tls) {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`https://127.0.0.1:${port}`, tls);
    session.once("connect", () => resolve(session));
    session.once("error", reject);
  });
}

async function main() {
  const dataRoot = await mkdtemp(join(tmpdir(), "mvm-bench-rpc-"));
  const cleanups = [() => rm(dataRoot, { recursive: true, force: true })];
  try {
    // The production runtime, minus nothing: GetInstance only reads the store, so no VM, network or cgroup is touched.
    const hub = new WatchHub();
    const runtime = await openNodeRuntime({
      dataDir: dataRoot,
      env: {},
      actor: { kind: "system", id: "system:bench" },
      events: hub,
    });
    const certStore = CertStore.at(dataRoot);
    await certStore.init({ nodeId: (await runtime.store.node()).nodeId, hostName: "localhost" });
    const clientDir = join(dataRoot, "bench-client");
    const admin = await certStore.issueToDirectory({ identity: { kind: "admin" }, outDir: clientDir });
    const clientTls = createMtlsClientOptions({
      caPem: await certStore.caCertificatePem(),
      certPem: await readFile(admin.certPath, "utf8"),
      keyPem: await readFile(admin.keyPath, "utf8"),
      servername: "127.0.0.1",
    });

    const agent = buildAgentServer({
      runtime,
      certStore,
      listen: { host: "127.0.0.1", port: 0 },
      logger: createAgentLogger({ level: "info", destination: { write() {} } }),
      shutdownGraceMs: 200,
      certificateCheckIntervalMs: 0,
    });
    const agentPort = (await agent.start()).api.port;
    cleanups.unshift(() => agent.stop(), () => runtime.close());

    // Seed one instance through the API itself.
    const transport = createGrpcTransport({ baseUrl: `https://127.0.0.1:${agentPort}`, nodeOptions: clientTls });
    await createClient(TenantService, transport).createTenant({ tenantId: "bench" });
    await createClient(PoolService, transport).createPool({
      pool: { tenantId: "bench", poolId: "web" },
      spec: { image: { source: { case: "debian", value: {} } }, resources: { vcpus: 1, memMib: 256, dataDiskMib: 0 } },
    });
    const created = await createClient(InstanceService, transport).createInstance({ pool: { tenantId: "bench", poolId: "web" } });
    const ref = { tenantId: "bench", poolId: "web", instanceId: created.instance.instanceId };
    const requestFrame = grpcFrame(toBinary(GetInstanceRequestSchema, create(GetInstanceRequestSchema, { instance: ref })));

    const agentSession = await connect(agentPort, clientTls);
    cleanups.unshift(() => agentSession.close());
    const agentReply = await rawGrpcCall(agentSession, GET_INSTANCE_PATH, requestFrame);

    // The baseline: node:http2 with the same TLS settings, reading the request and answering the same bytes.
    const raw = http2.createSecureServer(await createMtlsServerOptions(certStore));
    raw.on("stream", (stream) => {
      stream.on("data", () => undefined);
      stream.on("end", () => {
        stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
        stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
        stream.end(agentReply);
      });
    });
    await new Promise((resolve) => raw.listen(0, "127.0.0.1", resolve));
    cleanups.unshift(() => new Promise((resolve) => raw.close(resolve)));
    const rawSession = await connect(raw.address().port, clientTls);
    cleanups.unshift(() => rawSession.close());

    const capturedResponse = await createClient(InstanceService, transport).getInstance({ instance: ref });
    const bare = http2.createSecureServer(
      await createMtlsServerOptions(certStore),
      connectNodeAdapter({
        routes: (router) => router.service(InstanceService, { getInstance: () => capturedResponse }),
      }),
    );
    await new Promise((resolve) => bare.listen(0, "127.0.0.1", resolve));
    cleanups.unshift(() => new Promise((resolve) => bare.close(resolve)));
    const bareSession = await connect(bare.address().port, clientTls);
    cleanups.unshift(() => bareSession.close());

    const targets = {
      agent: () => rawGrpcCall(agentSession, GET_INSTANCE_PATH, requestFrame),
      raw: () => rawGrpcCall(rawSession, GET_INSTANCE_PATH, requestFrame),
      connect: () => rawGrpcCall(bareSession, GET_INSTANCE_PATH, requestFrame),
    };
    for (const name of ["raw", "connect"]) {
      if (!(await targets[name]()).equals(agentReply)) throw new Error(`the ${name} server's reply differs from the agent's`);
    }

    const names = Object.keys(targets);
    for (let i = 0; i < WARMUP; i++) for (const name of names) await targets[name]();
    const samples = Object.fromEntries(names.map((name) => [name, []]));
    for (let round = 0; round < CALLS / ROUND; round++) {
      // Rotate which server goes first, so none always runs right after another's garbage.
      const order = names.map((_, i) => names[(i + round) % names.length]);
      for (const name of order) {
        for (let i = 0; i < ROUND; i++) {
          const start = process.hrtime.bigint();
          await targets[name]();
          samples[name].push(process.hrtime.bigint() - start);
        }
      }
    }

    const a = summary(samples.agent);
    const r = summary(samples.raw);
    const c = summary(samples.connect);
    const ratioP50 = a.p50 / r.p50;
    const ratioP99 = a.p99 / r.p99;
    const fmt = (v) => v.toFixed(3).padStart(8);
    console.log(`rpc-latency: unary GetInstance over mTLS HTTP/2, ${samples.agent.length} calls each after ${WARMUP} warm-up, one in flight`);
    console.log(`  payload: request ${requestFrame.length} B, response ${agentReply.length} B (gRPC-framed)`);
    console.log(`  ${"server".padEnd(28)}${"p50 ms".padStart(8)}${"p99 ms".padStart(8)}${"mean ms".padStart(8)}`);
    console.log(`  ${"agent (Connect, real stack)".padEnd(28)}${fmt(a.p50)}${fmt(a.p99)}${fmt(a.mean)}`);
    console.log(`  ${"raw node:http2".padEnd(28)}${fmt(r.p50)}${fmt(r.p99)}${fmt(r.mean)}`);
    console.log(`  ${"connect alone (breakdown)".padEnd(28)}${fmt(c.p50)}${fmt(c.p99)}${fmt(c.mean)}`);
    console.log(`  ratio agent/raw: p50 ${ratioP50.toFixed(2)}, p99 ${ratioP99.toFixed(2)} (target p50 <= ${P50_RATIO_TARGET.toFixed(1)}: ${ratioP50 <= P50_RATIO_TARGET ? "met" : "MISSED"})`);
    console.log(JSON.stringify({
      bench: "rpc-latency",
      calls: samples.agent.length,
      agent_ms: a,
      raw_ms: r,
      connect_alone_ms: c,
      ratio_p50: ratioP50,
      ratio_p99: ratioP99,
      target_ratio_p50: P50_RATIO_TARGET,
      met: ratioP50 <= P50_RATIO_TARGET,
    }));
    if (flags.check && ratioP50 > P50_RATIO_TARGET) process.exitCode = 1;
  } finally {
    for (const cleanup of cleanups) await cleanup();
  }
}

await main();
