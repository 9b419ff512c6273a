#!/usr/bin/env node
// Merged-watch event latency (ISSUE 8): the coordinator watches 100 agents (25 per process, 4 processes, mTLS HTTP/2
// on 127.0.0.1, records only, no VM) through its merger; one instance record at a time is changed on a node chosen
// round-robin, and the latency runs from the agent's watch-hub publish (the change is committed) to the merged event
// in the coordinator. Agents and coordinator are separate processes on one host: both ends are read from the wall
// clock with sub-millisecond precision (performance.timeOrigin + performance.now()). Targets p50 <= 10 ms, p99 <= 100 ms.
// Also the coordinator process's memory holding 100 streams.
//
// Usage: npm run build && node bench/coordinator-watch.mjs [--changes N] [--warmup N] [--nodes N] [--check]

import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import { memoryMib, startBenchFleet, summary } from "./coordinator-fleet.mjs";

const P50_TARGET_MS = 10;
const P99_TARGET_MS = 100;
const dist = (path) => pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), "..", "dist", path)).href;
const { values: flags } = parseArgs({
  options: {
    changes: { type: "string", default: "300" },
    warmup: { type: "string", default: "30" },
    nodes: { type: "string", default: "100" },
    processes: { type: "string", default: "4" },
    check: { type: "boolean", default: false },
  },
});
const CHANGES = Number(flags.changes);
const WARMUP = Number(flags.warmup);
const NODES = Number(flags.nodes);

const { FleetWatchMerger } = await import(dist("src/coordinator/watch-merge.js"));
const { watchFleet } = await import(dist("src/coordinator/node-watch.js"));
const { NodeConnections, readFleetCredentials } = await import(dist("src/coordinator/node-connections.js"));

const deadline = setTimeout(() => {
  console.error("coordinator-watch: still running after 300 s, giving up");
  process.exit(3);
}, 300_000);
deadline.unref();
const wallNow = () => performance.timeOrigin + performance.now();

const bench = await startBenchFleet(NODES, Number(flags.processes));
const baseline = memoryMib();
const stop = new AbortController();
let watching = null;
try {
  const { fleet } = bench;
  const connections = new NodeConnections(await readFleetCredentials(fleet.credentials));
  const received = new Map();
  let initialDone;
  const initial = new Promise((resolve) => (initialDone = resolve));
  let downs = 0;
  const merger = new FleetWatchMerger(
    fleet.nodes.map((n) => n.name),
    (e) => {
      if (e.kind === "upsert") {
        const waiter = received.get(`${e.node}/${e.instance.instanceId}`);
        if (waiter) waiter(wallNow());
      } else if (e.kind === "initial_state_complete") initialDone(e.instanceCount);
      else if (e.kind === "node_status" && e.health === "down") downs++;
    },
  );
  const t0 = performance.now();
  watching = watchFleet({ nodes: fleet.nodes, connections, merger, signal: stop.signal, heartbeatIntervalMs: 15_000 });
  const count = await initial;
  const initialMs = performance.now() - t0;
  if (count !== NODES || downs > 0) throw new Error(`initial state: ${count} instances, ${downs} nodes down`);
  const streamsMemory = memoryMib();

  const samples = [];
  for (let c = 0; c < WARMUP + CHANGES; c++) {
    const node = fleet.nodes[c % fleet.nodes.length];
    const key = `${node.name}/${node.agent.instanceId}`;
    const arrived = new Promise((resolve) => received.set(key, resolve));
    const { publishedAt } = await bench.touch(node);
    const at = await Promise.race([arrived, sleep(5_000).then(() => { throw new Error(`change ${c} on ${node.name}: no merged event after 5 s`); })]);
    received.delete(key);
    if (c >= WARMUP) samples.push(at - publishedAt);
    await sleep(2);
  }
  const afterMemory = memoryMib();
  const s = summary(samples);
  const met = s.p50 <= P50_TARGET_MS && s.p99 <= P99_TARGET_MS;
  const fmt = (v) => v.toFixed(3).padStart(9);
  console.log(`coordinator-watch: control-plane benchmark, no VM booted; ${NODES} agents in ${flags.processes} processes, one merged watch over mTLS HTTP/2 (connect-node)`);
  console.log(`  initial state of all ${NODES} nodes merged in ${initialMs.toFixed(0)} ms; ${CHANGES} changes measured after ${WARMUP} warm-up, one in flight, round-robin over the nodes`);
  console.log(`  ${"agent publish -> merged event".padEnd(32)}${"p50 ms".padStart(9)}${"p99 ms".padStart(9)}${"max ms".padStart(9)}${"mean ms".padStart(9)}`);
  console.log(`  ${"".padEnd(32)}${fmt(s.p50)}${fmt(s.p99)}${fmt(s.max)}${fmt(s.mean)}`);
  console.log(`  targets p50 <= ${P50_TARGET_MS} ms, p99 <= ${P99_TARGET_MS} ms: ${met ? "PASS" : "MISS"}`);
  console.log(`  coordinator memory: before ${baseline.rss.toFixed(0)} MiB RSS; with ${NODES} streams ${streamsMemory.rss.toFixed(0)} MiB RSS (${streamsMemory.heapUsed.toFixed(0)} MiB heap); after the changes ${afterMemory.rss.toFixed(0)} MiB RSS`);
  console.log(JSON.stringify({ bench: "coordinator-watch", nodes: NODES, changes: samples.length, initial_ms: initialMs, latency_ms: s, target_p50_ms: P50_TARGET_MS, target_p99_ms: P99_TARGET_MS, met, memory_mib: { baseline, streams: streamsMemory, after: afterMemory } }));
  if (flags.check && !met) process.exitCode = 1;
  stop.abort();
  await watching;
  connections.close();
} catch (e) {
  console.error(`coordinator-watch: ${e?.stack ?? e}`);
  process.exitCode = 1;
} finally {
  stop.abort();
  await bench.stop();
  clearTimeout(deadline);
}
