#!/usr/bin/env node
// Resident memory of the node agent (ISSUE 5): with 1000 instance records and 10 watchers, RSS <= 150 MB.
//
// The agent runs as it does in production, in its own process: `bin/mvm agent serve` executed directly (so with the
// V8 flags of its #! line, as an operator's `mvm` or a service unit runs it) on a data root prepared here, certificates from `mvm agent certs init` and `mvm agent certs issue --identity admin`, the
// mTLS API on 127.0.0.1 (port chosen by the kernel), no local socket, no metrics endpoint. Its RSS is read from
// /proc/<pid>/status (VmRSS now, VmHWM the peak so far). In the same run, an idle agent on an empty data root gives
// the baseline. No VM is booted: the records are written through the use cases and the store.
//
// Usage: npm run build && node bench/agent-memory.mjs [--check]
//   --check  exit 1 when the target is missed

import { execFile, spawn } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs, promisify } from "node:util";

const RSS_TARGET_MB = 150;
const INSTANCES = 1000;
const TENANTS = 10;
const WATCHERS = 10;
/** Time for the agent to finish what followed the last snapshot (stream flushes, timers) before RSS is read. */
const SETTLE_MS = 1000;
const START_TIMEOUT_MS = 20_000;
const DEADLINE_MS = 110_000;
const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = (path) => pathToFileURL(join(root, "dist", path)).href;
const cliMain = join(root, "dist/src/cli/main.js");
const mvmProgram = join(root, "bin/mvm");
const run = promisify(execFile);

const { values: flags } = parseArgs({ options: { check: { type: "boolean", default: false } } });
if (!existsSync(cliMain)) {
  console.error("agent-memory: dist/src/cli/main.js not found: run `npm run build` first");
  process.exit(2);
}

const { createClient } = await import("@connectrpc/connect");
const { createGrpcTransport } = await import("@connectrpc/connect-node");
const { openNodeRuntime } = await import(dist("src/agent/node-runtime.js"));
const { createMtlsClientOptions } = await import(dist("src/platform/pki/index.js"));
const { InstanceService } = await import(dist("gen/mvm/v1/instance_service_pb.js"));
const { seedInstances } = await import("./lib/seed-instances.mjs");

const mvm = (dataRoot, ...args) => run(process.execPath, [cliMain, "--data-dir", dataRoot, ...args], { env: agentEnv() });

function agentEnv() {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith("MVM_")) delete env[name];
  return env;
}

/** Node ID, certificates and an admin client certificate, through the CLI as an operator would. */
async function prepareCerts(dataRoot) {
  await mvm(dataRoot, "agent", "certs", "init");
  const clientDir = join(dataRoot, "bench-client");
  await mvm(dataRoot, "agent", "certs", "issue", "--identity", "admin", "--out", clientDir, "--name", "admin");
  return createMtlsClientOptions({
    caPem: await readFile(join(clientDir, "ca.pem"), "utf8"),
    certPem: await readFile(join(clientDir, "admin.pem"), "utf8"),
    keyPem: await readFile(join(clientDir, "admin-key.pem"), "utf8"),
    servername: "127.0.0.1",
  });
}

/** Starts `mvm agent serve` and resolves once it says where it listens. */
function startAgent(dataRoot, children) {
  const child = spawn(
    mvmProgram,
    ["--data-dir", dataRoot, "agent", "serve", "--listen", "127.0.0.1:0", "--socket", "none", "--metrics-listen", "none"],
    { env: agentEnv(), stdio: ["ignore", "pipe", "pipe"] },
  );
  children.add(child);
  child.once("exit", () => children.delete(child));
  let output = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`agent did not start in ${START_TIMEOUT_MS} ms: ${output.slice(-2000)}`)), START_TIMEOUT_MS);
    const onData = (chunk) => {
      output += chunk;
      const m = /serving mTLS on 127\.0\.0\.1:(\d+)/.exec(output);
      if (m) {
        clearTimeout(timer);
        resolve({ child, port: Number(m[1]) });
      }
    };
    child.stdout.setEncoding("utf8").on("data", onData);
    child.stderr.setEncoding("utf8").on("data", onData);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`agent exited early (${signal ?? code}): ${output.slice(-2000)}`));
    });
  });
}

/** Ends the child by its PID: SIGTERM, then SIGKILL if it has not exited within 3 s. */
async function stopAgent(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  process.kill(child.pid, "SIGTERM");
  const outcome = await Promise.race([exited.then(() => "exited"), sleep(3000).then(() => "late")]);
  if (outcome === "late") {
    process.kill(child.pid, "SIGKILL");
    await exited;
  }
}

/** VmRSS and VmHWM of `pid`, in MB (10^6 bytes). */
function memoryOf(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (field) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)[1]);
  return { rssMb: (kb("VmRSS") * 1024) / 1e6, hwmMb: (kb("VmHWM") * 1024) / 1e6 };
}

async function main() {
  const baselineRoot = await mkdtemp(join(tmpdir(), "mvm-bench-mem-idle-"));
  const loadedRoot = await mkdtemp(join(tmpdir(), "mvm-bench-mem-"));
  const children = new Set();
  const deadline = setTimeout(() => {
    console.error(`agent-memory: still running after ${DEADLINE_MS} ms, giving up`);
    for (const child of children) process.kill(child.pid, "SIGKILL");
    rmSync(baselineRoot, { recursive: true, force: true });
    rmSync(loadedRoot, { recursive: true, force: true });
    process.exit(3);
  }, DEADLINE_MS);
  deadline.unref();
  const streams = new AbortController();
  try {
    // Baseline: an agent with an empty data root and nobody connected.
    await prepareCerts(baselineRoot);
    const idle = await startAgent(baselineRoot, children);
    await sleep(SETTLE_MS);
    const baseline = memoryOf(idle.child.pid);
    await stopAgent(idle.child);

    const runtime = await openNodeRuntime({ dataDir: loadedRoot, env: {}, actor: { kind: "system", id: "system:bench" } });
    await seedInstances(runtime, INSTANCES, TENANTS);
    await runtime.close();
    const clientTls = await prepareCerts(loadedRoot);
    const loaded = await startAgent(loadedRoot, children);
    const afterStart = memoryOf(loaded.child.pid);

    // Each stream stays open past its snapshot (the loop keeps reading) until the abort at the end.
    const ready = [];
    const ended = [];
    for (let w = 0; w < WATCHERS; w++) {
      const transport = createGrpcTransport({ baseUrl: `https://127.0.0.1:${loaded.port}`, nodeOptions: clientTls });
      const client = createClient(InstanceService, transport);
      let markReady;
      ready.push(new Promise((resolve) => (markReady = resolve)));
      ended.push((async () => {
        try {
          for await (const res of client.watchInstances({ heartbeatIntervalMs: 300_000 }, { signal: streams.signal })) {
            if (res.event.case === "initialStateComplete") markReady(res.event.value.instanceCount);
          }
        } catch (e) {
          if (!streams.signal.aborted) throw e;
        }
      })());
    }
    const sizes = await Promise.race([
      Promise.all(ready),
      Promise.all(ended).then(() => { throw new Error("a watch stream ended before initial_state_complete"); }),
    ]);
    if (sizes.some((n) => n !== INSTANCES)) throw new Error(`snapshot sizes ${sizes.join(",")}, expected ${INSTANCES} each`);
    await sleep(SETTLE_MS);
    const withWatchers = memoryOf(loaded.child.pid);
    const watcherCount = WATCHERS;
    streams.abort();
    await Promise.allSettled(ended);
    await stopAgent(loaded.child);

    const met = withWatchers.rssMb <= RSS_TARGET_MB;
    const f = (v) => v.toFixed(1).padStart(8);
    console.log("agent-memory: `mvm agent serve` in a child process, mTLS on 127.0.0.1; no VM booted (records only)");
    console.log(`  ${"state".padEnd(48)}${"RSS MB".padStart(8)}${"peak MB".padStart(8)}`);
    console.log(`  ${"idle, empty data root (baseline)".padEnd(48)}${f(baseline.rssMb)}${f(baseline.hwmMb)}`);
    console.log(`  ${`${INSTANCES} records, started, no watcher`.padEnd(48)}${f(afterStart.rssMb)}${f(afterStart.hwmMb)}`);
    console.log(`  ${`${INSTANCES} records, ${watcherCount} watchers past their snapshots`.padEnd(48)}${f(withWatchers.rssMb)}${f(withWatchers.hwmMb)}`);
    console.log(`  target RSS <= ${RSS_TARGET_MB} MB with ${INSTANCES} records and ${watcherCount} watchers: ${met ? "PASS" : "MISS"} (${(withWatchers.rssMb - baseline.rssMb).toFixed(1)} MB above baseline)`);
    console.log(JSON.stringify({
      bench: "agent-memory",
      instances: INSTANCES,
      watchers: watcherCount,
      baseline_rss_mb: baseline.rssMb,
      baseline_peak_mb: baseline.hwmMb,
      started_rss_mb: afterStart.rssMb,
      rss_mb: withWatchers.rssMb,
      peak_mb: withWatchers.hwmMb,
      target_rss_mb: RSS_TARGET_MB,
      met,
    }));
    if (flags.check && !met) process.exitCode = 1;
  } finally {
    streams.abort();
    for (const child of [...children]) await stopAgent(child);
    await rm(baselineRoot, { recursive: true, force: true });
    await rm(loadedRoot, { recursive: true, force: true });
    clearTimeout(deadline);
  }
}

await main();
