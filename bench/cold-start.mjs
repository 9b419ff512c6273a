#!/usr/bin/env node
// Cold start: `instance start` until the guest reports ready, against the very same QEMU command started directly
// by this script and timed to the same readiness signal (the `MVM-READY <instance-id>` line on the serial console).
// Targets (data-plane issue, Benchmark): median ratio mvm/direct <= 1.10, and mvm's own overhead (time spent before
// the VMM starts plus after the guest is ready) <= 50 ms median.
//
// The mvm side is the production composition (openNodeRuntime's adapters) in-process, with the data plane in a
// network namespace this script creates and deletes; the image comes from the shared test-image cache
// (MVM_IMAGE_CACHE, default .cache/test-images), so the pool build is a cache hit. The runtime's VMM is wrapped to
// timestamp boot(): overhead = startInstance's total minus the time inside boot() (the adapter's launch, QMP
// handshake and wait for the ready line). Stops are not timed.
//
// The direct side rebuilds the argv with buildQemuArgv from the launch spec mvm handed to boot(), with the KVM/TCG
// choice mvm's adapter makes; only the run directory and the writable disks differ (a fresh qcow2 overlay on the
// same base and copies of the read-only disks, made before the clock starts). It uses the instance's own TAP name,
// created through the same network adapter while mvm's VM is stopped and removed again afterwards, so mvm's start
// pays for its TAP as it always does. It polls the serial file every 5 ms (mvm polls every 20 ms, which is counted
// against mvm).
//
// One untimed warm-up of each side runs first (KVM probe, page cache), then 5 alternating pairs.
//
// Usage (root): npm run build && node bench/cold-start.mjs [--pairs N]
// Exit status: 0 whether the targets are met or not (benchmarks report, they do not assert); 1 on an error; 2 when
// it cannot run here.

import { spawn } from "node:child_process";
import { execFileSync, spawnSync } from "node:child_process";
import { copyFile, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { existsSync, openSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import { benchCgroupParent } from "./lib/cgroup-parent.mjs";
import { qemuPidsUsing } from "./lib/qemu-leftovers.mjs";

const RATIO_TARGET = 1.1;
const OVERHEAD_TARGET_MS = 50;
const DIRECT_POLL_MS = 5;
const DIRECT_READY_TIMEOUT_MS = 120_000;
const QEMU_BINARY = "qemu-system-x86_64";
const TENANT = "bench";
const POOL = "cold";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = (path) => pathToFileURL(join(root, "dist", path)).href;

const { values: flags } = parseArgs({ options: { pairs: { type: "string", default: "5" } } });
const PAIRS = Number(flags.pairs);
if (!Number.isInteger(PAIRS) || PAIRS < 1) {
  console.error("cold-start: --pairs must be a whole number >= 1");
  process.exit(2);
}
if (process.getuid?.() !== 0) {
  console.error("cold-start: needs root (network namespace, bridge, TAP, cgroups)");
  process.exit(2);
}
if (!existsSync(join(root, "dist/src/agent/node-runtime.js"))) {
  console.error("cold-start: dist/src/agent/node-runtime.js not found: run `npm run build` first");
  process.exit(2);
}

const { openNodeRuntime } = await import(dist("src/agent/node-runtime.js"));
const { createTenant } = await import(dist("src/core/use-cases/tenants.js"));
const { createPool } = await import(dist("src/core/use-cases/pools.js"));
const { buildPool } = await import(dist("src/core/use-cases/builds.js"));
const { createInstance } = await import(dist("src/core/use-cases/instances.js"));
const { startInstance, stopInstance, tenantNetworkPlan, REVISION_FILES } = await import(dist("src/core/use-cases/lifecycle.js"));
const { destroyTenantCompletely } = await import(dist("src/core/use-cases/teardown.js"));
const { buildQemuArgv, controlPortFiles, qemuRunFiles } = await import(dist("src/runtime/qemu/qemu-command.js"));
const { createControlPortFifos } = await import(dist("src/runtime/qemu/control-port.js"));
const { probeKvmCached, readHostTscKhz } = await import(dist("src/runtime/qemu/kvm-probe.js"));
const { waitForGuestReady } = await import(dist("src/runtime/qemu/guest-ready.js"));
const { readProcCmdline } = await import(dist("src/runtime/process/proc-stat.js"));

const median = (values) => {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
};
const ms = (v) => v.toFixed(1).padStart(8);
const now = () => performance.now();

const netns = `mvm-bench-${process.pid}`;
const dataDir = await mkdtemp(join(tmpdir(), "mvm-bench-data-"));
const directDir = await mkdtemp(join(tmpdir(), "mvm-bench-direct-"));
const cgroups = await benchCgroupParent(root, "cold-start");
let runtime = null;
let directChild = null;
let netnsCreated = false;
let exitCode = 0;

/** What boot() saw last: the spec (on the first call) and how long the adapter took. */
const bootProbe = { spec: null, enteredAt: 0, returnedAt: 0 };

function timedVmm(real) {
  return {
    ...real,
    async boot(spec) {
      bootProbe.spec ??= structuredClone(spec);
      bootProbe.enteredAt = now();
      try {
        return await real.boot(spec);
      } finally {
        bootProbe.returnedAt = now();
      }
    },
  };
}

/** Time spent in each adapter call during the current mvm start, ms (for the overhead breakdown). */
let stepTimes = null;

/** Lock wrappers span the whole operation, boot included; they are left out of the breakdown. */
const UNTIMED_METHODS = new Set(["withTenantLock", "withNodeLock"]);

function timedAdapter(name, adapter) {
  return new Proxy(adapter, {
    get(target, method, receiver) {
      const value = Reflect.get(target, method, receiver);
      if (typeof value !== "function" || typeof method !== "string" || UNTIMED_METHODS.has(method)) {
        return typeof value === "function" ? value.bind(target) : value;
      }
      return async (...args) => {
        const t0 = now();
        try {
          return await value.apply(target, args);
        } finally {
          if (stepTimes) {
            const step = `${name}.${method}`;
            stepTimes[step] = (stepTimes[step] ?? 0) + (now() - t0);
          }
        }
      };
    },
  });
}

async function chooseAccel() {
  const kvm = await probeKvmCached({ binary: QEMU_BINARY });
  if (kvm.usable) return { accel: "kvm", hostTscKhz: null };
  return { accel: "tcg", hostTscKhz: await readHostTscKhz() };
}

async function runMvm(deps, key) {
  stepTimes = {};
  const t0 = now();
  const started = await startInstance(deps, key);
  const total = now() - t0;
  const steps = stepTimes;
  stepTimes = null;
  const boot = bootProbe.returnedAt - bootProbe.enteredAt;
  if (started.status !== "running" || !started.vmm) throw new Error(`mvm start left the instance ${started.status}`);
  const throttledMs = await cpuThrottledMs(started.vmm.pid);
  await stopInstance(deps, key);
  return { total, boot, overhead: total - boot, throttledMs, steps };
}

/**
 * Diagnostic only: how long the CPU controller held back the VMM's cgroup so far (the pool's quota is one host CPU
 * per vCPU, shared by all of QEMU's threads), or null when it cannot be read. cgroup v2: usec; v1: ns.
 */
async function cpuThrottledMs(pid) {
  const lines = (await readFile(`/proc/${pid}/cgroup`, "utf8").catch(() => "")).split("\n");
  const v1 = lines.find((l) => /^\d+:([^:]*,)?cpu(,[^:]*)?:/.test(l));
  const v2 = lines.find((l) => l.startsWith("0::"));
  const statFile = v1
    ? join("/sys/fs/cgroup", v1.split(":")[1], v1.split(":")[2], "cpu.stat")
    : v2
      ? join("/sys/fs/cgroup", v2.slice(3), "cpu.stat")
      : null;
  if (statFile === null) return null;
  const stat = await readFile(statFile, "utf8").catch(() => null);
  if (stat === null) return null;
  const field = (name) => Number(new RegExp(`^${name} (\\d+)$`, "m").exec(stat)?.[1] ?? NaN);
  const value = v1 ? field("throttled_time") / 1e6 : field("throttled_usec") / 1e3;
  return Number.isFinite(value) ? value : null;
}

/** Disks for one direct run: a fresh overlay for the writable root, copies of the rest (made once). */
async function directSpec(spec, baseImage, runIndex) {
  const runDir = join(directDir, `run-${runIndex}`);
  await rm(runDir, { recursive: true, force: true });
  await mkdir(runDir, { recursive: true, mode: 0o700 });
  // The same machine as mvm's boot, control port included (its FIFOs are made before the clock starts, as mvm
  // makes them before it spawns QEMU).
  await createControlPortFifos(controlPortFiles(runDir));
  const disks = [];
  for (const disk of spec.disks) {
    if (disk.role === "root") {
      const overlay = join(runDir, "root.qcow2");
      execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", baseImage, overlay]);
      disks.push({ ...disk, path: overlay });
    } else {
      const copy = join(directDir, `${disk.role}-${basename(disk.path)}`);
      if (!existsSync(copy)) await copyFile(disk.path, copy);
      disks.push({ ...disk, path: copy });
    }
  }
  return { ...spec, runDir, disks, cgroupProcsFiles: [] };
}

async function runDirect(spec, accel) {
  const argv = buildQemuArgv({ binary: QEMU_BINARY, spec, accel: accel.accel, hostTscKhz: accel.hostTscKhz, controlPort: true });
  const files = qemuRunFiles(spec.runDir);
  const log = openSync(files.vmmLog, "w", 0o600);
  const t0 = now();
  const child = spawn("ip", ["netns", "exec", netns, ...argv], { cwd: spec.runDir, stdio: ["ignore", log, log] });
  closeSync(log);
  directChild = child;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const gone = new AbortController();
  void exited.then(() => gone.abort());
  const outcome = await waitForGuestReady(files.serialLog, spec.instanceId, {
    deadline: Date.now() + DIRECT_READY_TIMEOUT_MS,
    signal: gone.signal,
    pollMs: DIRECT_POLL_MS,
  });
  const total = now() - t0;
  // `ip netns exec` execs QEMU, so the child's pid is QEMU's.
  if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
  const killTimer = setTimeout(() => child.kill("SIGKILL"), 5_000);
  await exited;
  clearTimeout(killTimer);
  directChild = null;
  if (outcome.kind !== "ready") {
    const tail = await readFile(files.vmmLog, "utf8").catch(() => "");
    throw new Error(`direct qemu: ${outcome.kind}${outcome.line ? ` (${outcome.line})` : ""}\n${tail.slice(-2000)}`);
  }
  return { total };
}

const leftoverQemuPids = () => qemuPidsUsing([dataDir, directDir], root);

try {
  execFileSync("ip", ["netns", "add", netns]);
  netnsCreated = true;
  execFileSync("ip", ["-n", netns, "link", "set", "lo", "up"]);

  runtime = await openNodeRuntime({
    dataDir,
    env: { ...process.env, MVM_IMAGE_CACHE: process.env.MVM_IMAGE_CACHE || join(root, ".cache/test-images"), ...cgroups.env },
    netns,
    actor: { kind: "local", id: "local:bench" },
  });
  const deps = {
    ...runtime,
    vmm: (kind) => timedVmm(runtime.vmm(kind)),
    network: timedAdapter("network", runtime.network),
    cgroups: timedAdapter("cgroups", runtime.cgroups),
    volumes: timedAdapter("volumes", runtime.volumes),
    store: timedAdapter("store", runtime.store),
    audit: timedAdapter("audit", runtime.audit),
  };

  await createTenant(deps, { tenantId: TENANT });
  await createPool(deps, { tenantId: TENANT, poolId: POOL }, { resources: { vcpus: 1, memMib: 256, dataDiskMib: 0 } });
  const buildStarted = now();
  const { pool } = await buildPool(deps, { tenantId: TENANT, poolId: POOL });
  const buildMs = now() - buildStarted;
  const instance = await createInstance(deps, { tenantId: TENANT, poolId: POOL });
  const key = { tenantId: TENANT, poolId: POOL, instanceId: instance.instanceId };
  const tenant = await runtime.store.getTenant(TENANT);
  const netPlan = tenantNetworkPlan(tenant, runtime.metadataPort);
  const tap = { name: instance.net.tapName, mac: instance.net.mac, guestIp: instance.net.guestIp };
  const baseImage = join(runtime.paths.revisionDir(TENANT, POOL, pool.currentRevision), REVISION_FILES.rootfs);
  const accel = await chooseAccel();

  // Warm-up, untimed: also captures the launch spec and checks that the direct argv is mvm's own.
  const warm = await startInstance(deps, key);
  const mvmArgv = await readProcCmdline(warm.vmm.pid);
  const spec = bootProbe.spec;
  const rebuilt = buildQemuArgv({ binary: QEMU_BINARY, spec, accel: accel.accel, hostTscKhz: accel.hostTscKhz, controlPort: true });
  const argvSame = JSON.stringify(mvmArgv) === JSON.stringify(rebuilt);
  if (!argvSame) {
    throw new Error(`rebuilt argv differs from mvm's:\n  mvm:     ${mvmArgv?.join(" ")}\n  rebuilt: ${rebuilt.join(" ")}`);
  }
  // Copies of the read-only disks are taken while mvm's copies exist for certain.
  const firstDirect = await directSpec(spec, baseImage, 0);
  await stopInstance(deps, key);

  async function directOnce(index) {
    const s = await directSpec(spec, baseImage, index);
    await runtime.network.ensureTap(netPlan, tap);
    try {
      return await runDirect(s, accel);
    } finally {
      await runtime.network.removeTap(netPlan, tap.name);
    }
  }
  await rm(firstDirect.runDir, { recursive: true, force: true });
  await directOnce(0);

  console.log(`cold start: ${PAIRS} alternating pairs, accel ${accel.accel}, ${spec.vcpus} vcpu, ${spec.memMib} MiB, ` +
    `instance ${instance.instanceId}, netns ${netns} (pool build, cache hit: ${buildMs.toFixed(0)} ms)`);
  console.log("pair   mvm total  mvm boot()  mvm overhead    direct   ratio   mvm cpu-throttled");
  const rows = [];
  const stepRuns = [];
  for (let i = 1; i <= PAIRS; i += 1) {
    const m = await runMvm(deps, key);
    const d = await directOnce(i);
    const row = { pair: i, mvmMs: m.total, mvmBootMs: m.boot, overheadMs: m.overhead, directMs: d.total, ratio: m.total / d.total, mvmThrottledMs: m.throttledMs };
    rows.push(row);
    stepRuns.push(m.steps);
    console.log(`${String(i).padStart(4)} ${ms(row.mvmMs)}    ${ms(row.mvmBootMs)}      ${ms(row.overheadMs)}  ${ms(row.directMs)}  ${row.ratio.toFixed(3).padStart(6)}   ${row.mvmThrottledMs === null ? "     n/a" : ms(row.mvmThrottledMs)}`);
  }
  const mvmMedian = median(rows.map((r) => r.mvmMs));
  const directMedian = median(rows.map((r) => r.directMs));
  const overheadMedian = median(rows.map((r) => r.overheadMs));
  const ratio = mvmMedian / directMedian;
  const ratioPass = ratio <= RATIO_TARGET;
  const overheadPass = overheadMedian <= OVERHEAD_TARGET_MS;
  console.log(`median  ${ms(mvmMedian)}    ${ms(median(rows.map((r) => r.mvmBootMs)))}      ${ms(overheadMedian)}  ${ms(directMedian)}`);
  const stepNames = [...new Set(stepRuns.flatMap((r) => Object.keys(r)))];
  const stepMedians = Object.fromEntries(stepNames.map((n) => [n, median(stepRuns.map((r) => r[n] ?? 0))]));
  console.log("mvm start, time inside each adapter call outside boot() (median ms):");
  for (const [n, v] of Object.entries(stepMedians).sort((a, b) => b[1] - a[1])) console.log(`  ${n.padEnd(28)} ${ms(v)}`);
  console.log(`ratio of medians (mvm/direct): ${ratio.toFixed(3)} (target <= ${RATIO_TARGET.toFixed(2)}): ${ratioPass ? "PASS" : "MISS"}`);
  console.log(`mvm overhead median: ${overheadMedian.toFixed(1)} ms (target <= ${OVERHEAD_TARGET_MS} ms): ${overheadPass ? "PASS" : "MISS"}`);
  console.log(JSON.stringify({
    bench: "cold-start",
    accel: accel.accel,
    pairs: PAIRS,
    mvmMedianMs: Number(mvmMedian.toFixed(1)),
    directMedianMs: Number(directMedian.toFixed(1)),
    ratio: Number(ratio.toFixed(3)),
    ratioTarget: RATIO_TARGET,
    ratioPass,
    overheadMedianMs: Number(overheadMedian.toFixed(1)),
    overheadTargetMs: OVERHEAD_TARGET_MS,
    overheadPass,
    overheadStepMediansMs: Object.fromEntries(Object.entries(stepMedians).map(([k, v]) => [k, Number(v.toFixed(1))])),
    runs: rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, k === "pair" || v === null ? v : Number(v.toFixed(1))]))),
  }));
} catch (e) {
  console.error(`cold-start: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
  exitCode = 1;
} finally {
  if (directChild && directChild.exitCode === null && directChild.signalCode === null) directChild.kill("SIGKILL");
  if (runtime) {
    try {
      if (await runtime.store.getTenant(TENANT)) await destroyTenantCompletely(runtime, TENANT, true);
    } catch (e) {
      console.error(`cold-start: cleanup: destroying tenant ${TENANT}: ${e instanceof Error ? e.message : String(e)}`);
      exitCode = 1;
    }
    await runtime.close();
  }
  for (const pid of await leftoverQemuPids().catch(() => [])) {
    console.error(`cold-start: cleanup: killing leftover qemu pid ${pid}`);
    try {
      process.kill(pid, "SIGKILL");
    } catch {}
    exitCode = 1;
  }
  await sleep(100);
  if (!cgroups.remove()) exitCode = 1;
  if (netnsCreated) {
    const deleted = spawnSync("ip", ["netns", "delete", netns], { encoding: "utf8" });
    if (deleted.status !== 0) {
      console.error(`cold-start: cleanup: ip netns delete ${netns}: ${deleted.stderr.trim()}`);
      exitCode = 1;
    }
  }
  await rm(dataDir, { recursive: true, force: true });
  await rm(directDir, { recursive: true, force: true });
}
process.exit(exitCode);
