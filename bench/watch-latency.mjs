#!/usr/bin/env node
// WatchInstances fan-out latency (ISSUE 5): with 1000 instance records and 10 watchers, the time from a state change
// to the moment every watcher has received it; targets p50 <= 5 ms and p99 <= 50 ms.
//
// Control-plane benchmark: the agent is the production composition (openNodeRuntime, FsStore on a temporary data
// root, mTLS HTTP/2 on 127.0.0.1), but no VM is booted: the records are written through the use cases and the store,
// and the VMM side is never called.
// Each watcher is its own connect-node client with its own HTTP/2 session, as separate controllers would be. A change
// is a health-check result written through the agent's store (`runtime.store.putInstance`, the path the watch hub
// observes); one change is in flight at a time, and its latency ends when the tenth watcher has it. Sender and
// watchers share this process, so one monotonic clock times both ends. Two figures per change:
//   publish from the hub's publish call (the change is committed: the record is durably on disk) to the last
//           watcher's receipt: the watch path itself, and what the targets are judged on
//   write   from the start of the store write to the last watcher's receipt: adds the durable atomic write (two
//           fsyncs), so it mostly measures the disk; printed with its own verdict
//
// Usage: npm run build && node bench/watch-latency.mjs [--changes N] [--warmup N] [--check]
//   --changes  measured changes (default 200)
//   --warmup   changes before measuring (default 20)
//   --check    exit 1 when a target is missed

import { existsSync, rmSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const P50_TARGET_MS = 5;
const P99_TARGET_MS = 50;
const INSTANCES = 1000;
const TENANTS = 10;
const WATCHERS = 10;
/** The whole run must end well inside two minutes; past this the process cleans up and exits. */
const DEADLINE_MS = 110_000;
const RECEIPT_TIMEOUT_MS = 5_000;
const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = (path) => pathToFileURL(join(root, "dist", path)).href;

const { values: flags } = parseArgs({
  options: {
    changes: { type: "string", default: "200" },
    warmup: { type: "string", default: "20" },
    check: { type: "boolean", default: false },
  },
});
const CHANGES = Number(flags.changes);
const WARMUP = Number(flags.warmup);
if (!Number.isInteger(CHANGES) || CHANGES < 1 || !Number.isInteger(WARMUP) || WARMUP < 0 || CHANGES + WARMUP > INSTANCES) {
  console.error(`watch-latency: --changes must be a whole number >= 1, --warmup >= 0, together at most ${INSTANCES}`);
  process.exit(2);
}
if (!existsSync(join(root, "dist/src/agent/server.js"))) {
  console.error("watch-latency: dist/src/agent/server.js not found: run `npm run build` first");
  process.exit(2);
}

const { createClient } = await import("@connectrpc/connect");
const { createGrpcTransport } = await import("@connectrpc/connect-node");
const { createAgentLogger } = await import(dist("src/agent/agent-logger.js"));
const { buildAgentServer } = await import(dist("src/agent/server.js"));
const { openNodeRuntime } = await import(dist("src/agent/node-runtime.js"));
const { WatchHub } = await import(dist("src/core/watch-hub.js"));
const { CertStore, createMtlsClientOptions } = await import(dist("src/platform/pki/index.js"));
const { InstanceService } = await import(dist("gen/mvm/v1/instance_service_pb.js"));
const { seedInstances } = await import("./lib/seed-instances.mjs");

function percentile(sortedMs, p) {
  return sortedMs[Math.min(sortedMs.length - 1, Math.floor((p / 100) * sortedMs.length))];
}

function summary(samplesMs) {
  const ms = [...samplesMs].sort((a, b) => a - b);
  return { p50: percentile(ms, 50), p99: percentile(ms, 99), max: ms[ms.length - 1], mean: ms.reduce((a, b) => a + b, 0) / ms.length };
}

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

async function main() {
  const dataRoot = await mkdtemp(join(tmpdir(), "mvm-bench-watch-"));
  const deadline = setTimeout(() => {
    console.error(`watch-latency: still running after ${DEADLINE_MS} ms, giving up`);
    rmSync(dataRoot, { recursive: true, force: true });
    process.exit(3);
  }, DEADLINE_MS);
  deadline.unref();
  const cleanups = [() => rm(dataRoot, { recursive: true, force: true })];
  try {
    const hub = new WatchHub();
    const runtime = await openNodeRuntime({ dataDir: dataRoot, env: {}, actor: { kind: "system", id: "system:bench" }, events: hub });
    cleanups.unshift(() => runtime.close());
    const seedStart = nowMs();
    const records = await seedInstances(runtime, INSTANCES, TENANTS);
    const seedMs = nowMs() - seedStart;

    const certStore = CertStore.at(dataRoot);
    await certStore.init({ nodeId: (await runtime.store.node()).nodeId, hostName: "localhost" });
    const admin = await certStore.issueToDirectory({ identity: { kind: "admin" }, outDir: join(dataRoot, "bench-client") });
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
    cleanups.unshift(() => agent.stop());

    // The change in flight: which instance, when its write and its publish began, which watchers still lack it.
    let pending = null;
    const originalPublish = hub.publish.bind(hub);
    hub.publish = (event) => {
      if (pending !== null && event.instance.instanceId === pending.instanceId) pending.publishedAt = nowMs();
      originalPublish(event);
    };

    const streams = new AbortController();
    cleanups.unshift(() => streams.abort());
    const ready = [];
    const ended = [];
    for (let w = 0; w < WATCHERS; w++) {
      const transport = createGrpcTransport({ baseUrl: `https://127.0.0.1:${agentPort}`, nodeOptions: clientTls });
      const client = createClient(InstanceService, transport);
      let markReady;
      let snapshotSize = 0;
      ready.push(new Promise((resolve) => (markReady = resolve)));
      ended.push((async () => {
        try {
          for await (const res of client.watchInstances({ heartbeatIntervalMs: 300_000 }, { signal: streams.signal })) {
            if (res.event.case === "initialStateComplete") {
              snapshotSize = res.event.value.instanceCount;
              markReady(snapshotSize);
            } else if (res.event.case === "upsert" && pending !== null && res.event.value.instanceId === pending.instanceId) {
              if (pending.waiting.delete(w) && pending.waiting.size === 0) pending.done(nowMs());
            }
          }
        } catch (e) {
          if (!streams.signal.aborted) throw e;
        }
      })());
    }
    const snapshotStart = nowMs();
    const sizes = await Promise.race([
      Promise.all(ready),
      Promise.all(ended).then(() => { throw new Error("a watch stream ended before initial_state_complete"); }),
    ]);
    const snapshotMs = nowMs() - snapshotStart;
    if (sizes.some((n) => n !== INSTANCES)) throw new Error(`snapshot sizes ${sizes.join(",")}, expected ${INSTANCES} each`);

    const writeSamples = [];
    const publishSamples = [];
    for (let c = 0; c < WARMUP + CHANGES; c++) {
      const current = records[c];
      const checkedAt = new Date().toISOString();
      const next = { ...current, healthy: !current.healthy, lastHealthCheckAt: checkedAt, updatedAt: checkedAt };
      let done;
      const received = new Promise((resolve) => (done = resolve));
      pending = { instanceId: current.instanceId, waiting: new Set(Array.from({ length: WATCHERS }, (_, w) => w)), publishedAt: NaN, done };
      const writeStart = nowMs();
      await runtime.store.putInstance(next);
      const lastReceipt = await Promise.race([
        received,
        sleep(RECEIPT_TIMEOUT_MS).then(() => { throw new Error(`change ${c}: ${pending.waiting.size} watchers had nothing after ${RECEIPT_TIMEOUT_MS} ms`); }),
      ]);
      if (c >= WARMUP) {
        writeSamples.push(lastReceipt - writeStart);
        publishSamples.push(lastReceipt - pending.publishedAt);
      }
      records[c] = next;
      pending = null;
      await sleep(1);
    }

    const write = summary(writeSamples);
    const publish = summary(publishSamples);
    const meets = (s) => s.p50 <= P50_TARGET_MS && s.p99 <= P99_TARGET_MS;
    const met = meets(publish);
    const metWithWrite = meets(write);
    const fmt = (v) => v.toFixed(3).padStart(9);
    console.log("watch-latency: control-plane benchmark, no VM booted (records only; the VMM side is never called)");
    console.log(`  ${INSTANCES} instance records in ${TENANTS} tenants on FsStore (seeded in ${seedMs.toFixed(0)} ms), ${WATCHERS} watchers over mTLS HTTP/2, each its own session`);
    console.log(`  initial snapshots: all ${WATCHERS} complete in ${snapshotMs.toFixed(0)} ms; ${CHANGES} changes measured after ${WARMUP} warm-up, one in flight`);
    console.log(`  ${"change -> last of 10 watchers".padEnd(34)}${"p50 ms".padStart(9)}${"p99 ms".padStart(9)}${"max ms".padStart(9)}${"mean ms".padStart(9)}`);
    console.log(`  ${"from commit (hub publish)".padEnd(34)}${fmt(publish.p50)}${fmt(publish.p99)}${fmt(publish.max)}${fmt(publish.mean)}`);
    console.log(`  ${"from store write start (+fsyncs)".padEnd(34)}${fmt(write.p50)}${fmt(write.p99)}${fmt(write.max)}${fmt(write.mean)}`);
    console.log(`  targets p50 <= ${P50_TARGET_MS} ms, p99 <= ${P99_TARGET_MS} ms, from commit: ${met ? "PASS" : "MISS"}; including the durable write: ${metWithWrite ? "PASS" : "MISS"}`);
    console.log(JSON.stringify({
      bench: "watch-latency",
      kind: "control-plane benchmark, no VM booted",
      instances: INSTANCES,
      watchers: WATCHERS,
      changes: writeSamples.length,
      snapshot_ms: snapshotMs,
      from_commit_ms: publish,
      from_write_start_ms: write,
      target_p50_ms: P50_TARGET_MS,
      target_p99_ms: P99_TARGET_MS,
      met,
      met_including_write: metWithWrite,
    }));
    if (flags.check && !met) process.exitCode = 1;
  } finally {
    for (const cleanup of cleanups) await cleanup();
    clearTimeout(deadline);
  }
}

await main();
