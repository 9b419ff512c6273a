#!/usr/bin/env node
// Coordinator push fan-out (ISSUE 8): ApplyDesiredState on 100 agents (25 per process, 4 processes, real mTLS HTTP/2
// on 127.0.0.1, records only, no VM), total wall time per push p50/p99, with the coordinator's own fan-out over
// connect-node sessions and, side by side, the same fan-out (same concurrency limit, deadline and retry code) with
// @grpc/grpc-js channels. Also the coordinator process's memory with 100 open sessions.
//
// Usage: npm run build && node bench/coordinator-push.mjs [--rounds N] [--warmup N] [--nodes N] [--concurrency N]

import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { memoryMib, startBenchFleet, summary } from "./coordinator-fleet.mjs";

const dist = (path) => pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), "..", "dist", path)).href;
const { values: flags } = parseArgs({
  options: {
    rounds: { type: "string", default: "30" },
    warmup: { type: "string", default: "3" },
    nodes: { type: "string", default: "100" },
    processes: { type: "string", default: "4" },
    concurrency: { type: "string", default: "32" },
  },
});
const ROUNDS = Number(flags.rounds);
const WARMUP = Number(flags.warmup);
const NODES = Number(flags.nodes);
const CONCURRENCY = Number(flags.concurrency);

const grpc = await import("@grpc/grpc-js");
const { create, toBinary, fromBinary } = await import("@bufbuild/protobuf");
const { fanOut } = await import(dist("src/coordinator/fan-out.js"));
const { pushDesiredState } = await import(dist("src/coordinator/fleet-operations.js"));
const { parsePushDocuments, desiredStateToProto } = await import(dist("src/coordinator/desired-documents.js"));
const { NodeConnections, readFleetCredentials } = await import(dist("src/coordinator/node-connections.js"));
const { ReconcileService, ApplyDesiredStateRequestSchema } = await import(dist("gen/mvm/v1/reconcile_service_pb.js"));

const deadline = setTimeout(() => {
  console.error("coordinator-push: still running after 300 s, giving up");
  process.exit(3);
}, 300_000);
deadline.unref();

const bench = await startBenchFleet(NODES, Number(flags.processes));
const baseline = memoryMib();
try {
  const { fleet } = bench;
  const nodeIds = new Map(fleet.nodes.map((n) => [n.name, n.agent.nodeId]));
  // No pools (and none pruned): each pass has nothing to build or boot. The label changes every round, so every
  // push stores a new generation.
  const docFor = (round) => parsePushDocuments({ schema_version: 1, tenants: [{ tenant_id: "bench", labels: { round: String(round) } }] }, fleet.nodes.map((n) => n.name));
  const fanOutOptions = { concurrency: CONCURRENCY, deadlineMs: 10_000 };

  // connect-node: the coordinator's own code path.
  const connections = new NodeConnections(await readFleetCredentials(fleet.credentials));
  const ctx = { connections, nodeIds, fanOut: fanOutOptions };
  const connectRounds = [];
  let failures = 0;
  for (let r = 0; r < WARMUP + ROUNDS; r++) {
    const docs = docFor(r);
    const t0 = performance.now();
    const outcomes = await pushDesiredState(ctx, fleet.nodes, docs);
    const wall = performance.now() - t0;
    failures += outcomes.filter((o) => !o.ok).length;
    if (r === 0 && failures > 0) throw new Error(`push failed: ${outcomes.filter((o) => !o.ok).slice(0, 3).map((o) => `${o.node.name}: ${o.error.kind}: ${o.error.message}`).join("; ")}`);
    if (r >= WARMUP) connectRounds.push(wall);
  }
  const connectMemory = memoryMib();

  // @grpc/grpc-js: one channel per node, the same fan-out.
  const pem = { ca: await readFile(fleet.credentials.ca), cert: await readFile(fleet.credentials.cert), key: await readFile(fleet.credentials.key) };
  const credentials = grpc.credentials.createSsl(pem.ca, pem.key, pem.cert);
  const channels = new Map(fleet.nodes.map((n) => [n.name, new grpc.Client(n.address, credentials, { "grpc.ssl_target_name_override": "localhost", "grpc.keepalive_time_ms": 10_000 })]));
  const method = ReconcileService.method.applyDesiredState;
  const path = `/${ReconcileService.typeName}/${method.name}`;
  const grpcRounds = [];
  for (let r = 0; r < WARMUP + ROUNDS; r++) {
    const docs = docFor(1000 + r);
    const t0 = performance.now();
    const outcomes = await fanOut(
      fleet.nodes,
      (node, signal) =>
        new Promise((resolve, reject) => {
          const request = create(ApplyDesiredStateRequestSchema, { desiredState: desiredStateToProto(docs.document, nodeIds.get(node.name)) });
          const call = channels.get(node.name).makeUnaryRequest(path, (m) => Buffer.from(toBinary(method.input, m)), (b) => fromBinary(method.output, b), request, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (e, res) => (e ? reject(e) : resolve(res)));
          signal.addEventListener("abort", () => call.cancel(), { once: true });
        }),
      fanOutOptions,
    );
    const wall = performance.now() - t0;
    failures += outcomes.filter((o) => !o.ok).length;
    if (r >= WARMUP) grpcRounds.push(wall);
  }
  const grpcMemory = memoryMib();
  for (const c of channels.values()) c.close();
  connections.close();

  const c = summary(connectRounds);
  const g = summary(grpcRounds);
  const fmt = (v) => v.toFixed(1).padStart(9);
  console.log(`coordinator-push: control-plane benchmark, no VM booted; ${NODES} agents in ${flags.processes} processes, mTLS HTTP/2 on 127.0.0.1, concurrency ${CONCURRENCY}`);
  console.log(`  ${"push to all nodes, wall ms".padEnd(32)}${"p50".padStart(9)}${"p99".padStart(9)}${"max".padStart(9)}${"mean".padStart(9)}`);
  console.log(`  ${"connect-node (coordinator)".padEnd(32)}${fmt(c.p50)}${fmt(c.p99)}${fmt(c.max)}${fmt(c.mean)}`);
  console.log(`  ${"@grpc/grpc-js".padEnd(32)}${fmt(g.p50)}${fmt(g.p99)}${fmt(g.max)}${fmt(g.mean)}`);
  console.log(`  coordinator memory: before ${baseline.rss.toFixed(0)} MiB RSS; after connect-node pushes ${connectMemory.rss.toFixed(0)} MiB RSS (${connectMemory.heapUsed.toFixed(0)} MiB heap); with grpc-js channels too ${grpcMemory.rss.toFixed(0)} MiB RSS`);
  console.log(`  failed node calls: ${failures}`);
  console.log(JSON.stringify({ bench: "coordinator-push", nodes: NODES, rounds: ROUNDS, concurrency: CONCURRENCY, connect_node_ms: c, grpc_js_ms: g, memory_mib: { baseline, connect: connectMemory, grpc: grpcMemory }, failures }));
} catch (e) {
  console.error(`coordinator-push: ${e?.stack ?? e}`);
  process.exitCode = 1;
} finally {
  await bench.stop();
  clearTimeout(deadline);
}
