#!/usr/bin/env node
// Sleep and wake (SPEC §7). Three measurements, ratios from this one run:
//
// 1. wake-to-ready against cold-start-to-ready for the same pool (256 MiB): `wakeInstance` until the guest's wake
//    hook has answered (over the control port, as mvm runs it on QEMU), against `startInstance` until the guest
//    reports ready. Target: median ratio <= 0.20.
// 2. wake against restoring the very same snapshot with a direct QEMU command: before mvm wakes the instance, this
//    script copies the migration stream and the instance's disks, starts QEMU itself with the argv mvm's adapter
//    builds for a restore (buildQemuArgv with `incoming`), feeds the stream over QMP (`migrate-incoming`, `cont`)
//    and times until the guest's own wake hook has run through the same control port (SSH for a guest without one;
//    clock set from the host's time, secrets disk — a copy of the instance's — mounted again), exactly what mvm's
//    wake waits for, so the ratio is what mvm adds around the restore. A second figure, for reference, stops at a
//    bare `ssh true` instead. It uses the instance's own TAP, which a sleeping instance keeps while no VMM holds it.
//    Target: median ratio <= 1.10.
// 3. sleep time (sleep-prep hook, pause, migration stream, compression, hashing, VMM exit) and snapshot size for
//    128, 256 and 512 MiB guests, without compression and with lz4 and zstd, as a table.
//
// The mvm side is the production composition (openNodeRuntime's adapters) in-process, in a network namespace this
// script creates and deletes; images come from the test-image cache (MVM_IMAGE_CACHE, default .cache/test-images).
//
// Usage (root): npm run build && node bench/wake.mjs [--pairs N (default 5: single pairs vary by ±15% here)] [--sizes 128,256,512]
// Exit status: 0 whether the targets are met or not; 1 on an error; 2 when it cannot run here.

import { spawn, execFileSync } from "node:child_process";
import { copyFile, mkdir, mkdtemp, rm } from "node:fs/promises";
import { closeSync, existsSync, openSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import { benchCgroupParent } from "./lib/cgroup-parent.mjs";
import { qemuPidsUsing } from "./lib/qemu-leftovers.mjs";

const COLD_RATIO_TARGET = 0.2;
const DIRECT_RATIO_TARGET = 1.1;
const QEMU_BINARY = "qemu-system-x86_64";
const TENANT = "bench";
const DIRECT_TIMEOUT_MS = 60_000;

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = (path) => pathToFileURL(join(root, "dist", path)).href;

const { values: flags } = parseArgs({ options: { pairs: { type: "string", default: "5" }, sizes: { type: "string", default: "128,256,512" } } });
const PAIRS = Number(flags.pairs);
const SIZES = flags.sizes.split(",").map(Number);
if (!Number.isInteger(PAIRS) || PAIRS < 1 || SIZES.some((s) => !Number.isInteger(s) || s < 128)) {
  console.error("wake: --pairs must be a whole number >= 1 and --sizes whole MiB >= 128, comma-separated");
  process.exit(2);
}
if (process.getuid?.() !== 0) {
  console.error("wake: needs root (network namespace, bridge, TAP, cgroups)");
  process.exit(2);
}
if (!existsSync(join(root, "dist/src/core/use-cases/sleep-wake.js"))) {
  console.error("wake: dist/src/core/use-cases/sleep-wake.js not found: run `npm run build` first");
  process.exit(2);
}

const { openNodeRuntime } = await import(dist("src/agent/node-runtime.js"));
const { createTenant } = await import(dist("src/core/use-cases/tenants.js"));
const { createPool } = await import(dist("src/core/use-cases/pools.js"));
const { buildPool } = await import(dist("src/core/use-cases/builds.js"));
const { createInstance } = await import(dist("src/core/use-cases/instances.js"));
const { startInstance, stopInstance, instanceFiles } = await import(dist("src/core/use-cases/lifecycle.js"));
const { sleepInstance, wakeInstance, instanceSnapshot, GUEST_HOOKS } = await import(dist("src/core/use-cases/sleep-wake.js"));
const { destroyTenantCompletely } = await import(dist("src/core/use-cases/teardown.js"));
const { buildQemuArgv, controlPortFiles, qemuRunFiles, migrationSourceUri } = await import(dist("src/runtime/qemu/qemu-command.js"));
const { createControlPortFifos, guestAnnouncedControlPort, hasControlPortFifos, runHookOverControlPort } = await import(dist("src/runtime/qemu/control-port.js"));
const { probeKvmCached, readHostTscKhz } = await import(dist("src/runtime/qemu/kvm-probe.js"));
const { QmpClient } = await import(dist("src/runtime/qemu/qmp-client.js"));
const { readProcCmdline } = await import(dist("src/runtime/process/proc-stat.js"));

const median = (values) => {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
};
const ms = (v) => v.toFixed(1).padStart(8);
const mib = (bytes) => (bytes / 1024 / 1024).toFixed(1).padStart(7);
const now = () => performance.now();

const netns = `mvm-bench-wake-${process.pid}`;
const dataDir = await mkdtemp(join(tmpdir(), "mvm-bench-data-"));
const directDir = await mkdtemp(join(tmpdir(), "mvm-bench-direct-"));
const cgroups = await benchCgroupParent(root, "wake");
let runtime = null;
let directChild = null;
let netnsCreated = false;
let exitCode = 0;

/** The launch spec of the last boot, per instance. */
const bootSpecs = new Map();

function recordingVmm(real) {
  return {
    ...real,
    async boot(spec) {
      bootSpecs.set(spec.instanceId, structuredClone(spec));
      return real.boot(spec);
    },
  };
}

async function chooseAccel() {
  const kvm = await probeKvmCached({ binary: QEMU_BINARY });
  if (kvm.usable) return { accel: "kvm", hostTscKhz: null };
  return { accel: "tcg", hostTscKhz: await readHostTscKhz() };
}

async function newInstance(deps, poolId, memMib) {
  await createPool(deps, { tenantId: TENANT, poolId }, { resources: { vcpus: 1, memMib, dataDiskMib: 0 } });
  await buildPool(deps, { tenantId: TENANT, poolId });
  const instance = await createInstance(deps, { tenantId: TENANT, poolId });
  return { tenantId: TENANT, poolId, instanceId: instance.instanceId };
}

async function timed(fn) {
  const t0 = now();
  const value = await fn();
  return { ms: now() - t0, value };
}

/**
 * Restores the sleeping instance's snapshot with QEMU started by hand, on copies of its disks, and times until the
 * guest has run its wake hook over SSH (`until: "hook"`, what mvm's wake waits for) or answered a bare `true`.
 */
async function directRestore(deps, key, accel, index, until) {
  const instance = await deps.store.getInstance(key.tenantId, key.poolId, key.instanceId);
  const files = instanceFiles(deps.paths, instance);
  const meta = await instanceSnapshot(deps, key);
  if (!meta || meta.compression !== "none") throw new Error("direct restore needs an uncompressed snapshot");
  const runDir = join(directDir, `run-${index}`);
  await rm(runDir, { recursive: true, force: true });
  await mkdir(runDir, { recursive: true, mode: 0o700 });
  const spec = bootSpecs.get(key.instanceId);
  const disks = [];
  for (const disk of spec.disks) {
    const copy = join(runDir, `${disk.role}.img`);
    await copyFile(disk.path, copy);
    disks.push({ ...disk, path: copy });
  }
  const stream = join(runDir, "memory.mig");
  await copyFile(join(files.snapshotDir, meta.memoryFile), stream);
  const direct = { ...spec, runDir, disks, cgroupProcsFiles: [] };
  // The restored machine must have what the sleeping one had, the control port included (mvm's adapter decides
  // the same way: the instance's run directory holds the port's FIFOs).
  const controlPort = hasControlPortFifos(controlPortFiles(files.runDir));
  if (controlPort) await createControlPortFifos(controlPortFiles(runDir));
  const hookOverControlPort = controlPort && (await guestAnnouncedControlPort(files.serialLog));
  const argv = buildQemuArgv({ binary: QEMU_BINARY, spec: direct, accel: accel.accel, hostTscKhz: accel.hostTscKhz, incoming: true, controlPort });
  const qemuFiles = qemuRunFiles(runDir);
  const log = openSync(qemuFiles.vmmLog, "w", 0o600);
  const target = { guestIp: instance.net.guestIp, netns, privateKeyPath: deps.paths.tenantPrivateKey(key.tenantId) };

  const t0 = now();
  const child = spawn("ip", ["netns", "exec", netns, ...argv], { cwd: runDir, stdio: ["ignore", log, log] });
  closeSync(log);
  directChild = child;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  try {
    const qmp = await QmpClient.connect(qemuFiles.qmpSocket, { connectTimeoutMs: 10_000 });
    await qmp.execute("migrate-incoming", { uri: migrationSourceUri(stream) });
    while ((await qmp.execute("query-status")).status === "inmigrate") await sleep(5);
    await qmp.execute("cont");
    await qmp.close();
    const deadline = Date.now() + DIRECT_TIMEOUT_MS;
    for (;;) {
      const hostSeconds = String(Math.floor(Date.now() / 1000));
      const answer =
        until !== "hook"
          ? deps.guest.exec(target, ["true"], { timeoutMs: 5_000 })
          : hookOverControlPort
            ? runHookOverControlPort(controlPortFiles(runDir), "wake", [hostSeconds], DIRECT_TIMEOUT_MS)
            : deps.guest.exec(target, [GUEST_HOOKS.wake, hostSeconds], { timeoutMs: 5_000 });
      const answered = await answer.then((r) => r.exitCode === 0, () => false);
      if (answered) break;
      if (Date.now() > deadline) throw new Error("direct restore: the guest did not answer over ssh");
      await sleep(50);
    }
    return now() - t0;
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
    directChild = null;
    await rm(runDir, { recursive: true, force: true });
  }
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
  const deps = { ...runtime, vmm: (kind) => recordingVmm(runtime.vmm(kind)) };
  const accel = await chooseAccel();
  await createTenant(deps, { tenantId: TENANT });

  // 1 and 2: one 256 MiB instance; per pair a cold start, a sleep, a direct restore of that snapshot and a wake.
  const key = await newInstance(deps, "ratios", 256);
  await startInstance(deps, key);
  await stopInstance(deps, key);
  console.log(`wake: ${PAIRS} pairs, accel ${accel.accel}, 1 vcpu, 256 MiB, instance ${key.instanceId}, netns ${netns}`);
  console.log("pair  cold start      wake    direct  wake/cold  wake/direct   direct (bare ssh)");
  const rows = [];
  for (let i = 1; i <= PAIRS; i += 1) {
    const cold = await timed(() => startInstance(deps, key));
    await sleep(1_000);
    await sleepInstance(deps, key, { compression: "none" });
    const directMs = await directRestore(deps, key, accel, i, "hook");
    const directSshMs = await directRestore(deps, key, accel, i, "ssh");
    const wake = await timed(() => wakeInstance(deps, key));
    if (wake.value.status !== "running") throw new Error(`wake left the instance ${wake.value.status}`);
    await stopInstance(deps, key);
    const row = { pair: i, coldMs: cold.ms, wakeMs: wake.ms, directMs, directSshMs, wakeColdRatio: wake.ms / cold.ms, wakeDirectRatio: wake.ms / directMs };
    rows.push(row);
    console.log(
      `${String(i).padStart(4)} ${ms(row.coldMs)}  ${ms(row.wakeMs)}  ${ms(row.directMs)}  ${row.wakeColdRatio.toFixed(3).padStart(9)}  ${row.wakeDirectRatio.toFixed(3).padStart(11)}   ${ms(directSshMs)}`,
    );
  }
  const coldMedian = median(rows.map((r) => r.coldMs));
  const wakeMedian = median(rows.map((r) => r.wakeMs));
  const directMedian = median(rows.map((r) => r.directMs));
  const coldRatio = wakeMedian / coldMedian;
  const directRatio = wakeMedian / directMedian;
  console.log(`median ${ms(coldMedian)}  ${ms(wakeMedian)}  ${ms(directMedian)}`);
  console.log(`wake/cold start (medians): ${coldRatio.toFixed(3)} (target <= ${COLD_RATIO_TARGET.toFixed(2)}): ${coldRatio <= COLD_RATIO_TARGET ? "PASS" : "MISS"}`);
  console.log(`wake/direct restore (medians): ${directRatio.toFixed(3)} (target <= ${DIRECT_RATIO_TARGET.toFixed(2)}): ${directRatio <= DIRECT_RATIO_TARGET ? "PASS" : "MISS"}`);
  // What mvm adds in milliseconds, pair by pair: the ratio's budget shrinks with the direct restore (10 % of it),
  // this figure does not, so it shows what a faster or slower host does to each.
  const addedMedian = median(rows.map((r) => r.wakeMs - r.directMs));
  console.log(`mvm's own time per wake (median of wake - direct over the pairs): ${addedMedian.toFixed(1)} ms; the target allows ${(directMedian * (DIRECT_RATIO_TARGET - 1)).toFixed(1)} ms here`);
  const directSshMedian = median(rows.map((r) => r.directSshMs));
  console.log(`for reference, wake/direct restore answering a bare ssh true (no wake hook): ${(wakeMedian / directSshMedian).toFixed(3)}`);

  // 3: sleep time and snapshot size by guest memory and compression.
  const table = [];
  console.log("\nsleep by guest memory and compression (one sleep each; the guest idle ~1 s after boot or wake)");
  console.log("  MiB  compression   sleep ms   stored MiB   stream MiB   wake ms");
  for (const memMib of SIZES) {
    const sized = await newInstance(deps, `mem-${memMib}`, memMib);
    await startInstance(deps, sized);
    for (const compression of ["none", "lz4", "zstd"]) {
      await sleep(1_000);
      const slept = await timed(() => sleepInstance(deps, sized, { compression }));
      const meta = await instanceSnapshot(deps, sized);
      const woken = await timed(() => wakeInstance(deps, sized));
      const row = { memMib, compression, sleepMs: slept.ms, storedBytes: meta.memorySizeBytes, streamBytes: meta.uncompressedSizeBytes, wakeMs: woken.ms };
      table.push(row);
      console.log(`${String(memMib).padStart(5)}  ${compression.padEnd(11)} ${ms(row.sleepMs)}     ${mib(row.storedBytes)}      ${mib(row.streamBytes)}  ${ms(row.wakeMs)}`);
    }
    await stopInstance(deps, sized);
  }

  console.log(JSON.stringify({
    bench: "wake",
    accel: accel.accel,
    pairs: PAIRS,
    coldMedianMs: Number(coldMedian.toFixed(1)),
    wakeMedianMs: Number(wakeMedian.toFixed(1)),
    directMedianMs: Number(directMedian.toFixed(1)),
    addedMedianMs: Number(addedMedian.toFixed(1)),
    directBareSshMedianMs: Number(directSshMedian.toFixed(1)),
    wakeColdRatio: Number(coldRatio.toFixed(3)),
    wakeColdTarget: COLD_RATIO_TARGET,
    wakeColdPass: coldRatio <= COLD_RATIO_TARGET,
    wakeDirectRatio: Number(directRatio.toFixed(3)),
    wakeDirectTarget: DIRECT_RATIO_TARGET,
    wakeDirectPass: directRatio <= DIRECT_RATIO_TARGET,
    sleepTable: table.map((r) => ({ ...r, sleepMs: Number(r.sleepMs.toFixed(1)), wakeMs: Number(r.wakeMs.toFixed(1)) })),
  }));
} catch (e) {
  console.error(`wake: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
  exitCode = 1;
} finally {
  if (directChild && directChild.exitCode === null) directChild.kill("SIGKILL");
  if (runtime) {
    if (await runtime.store.getTenant(TENANT)) await destroyTenantCompletely(runtime, TENANT, true).catch((e) => console.error(`wake: cleanup: ${e.message}`));
  }
  const leftovers = await leftoverQemuPids();
  for (const pid of leftovers) process.kill(pid, "SIGKILL");
  if (leftovers.length > 0) await sleep(200);
  await runtime?.close();
  if (!cgroups.remove()) exitCode = 1;
  if (netnsCreated) spawnSyncQuiet("ip", ["netns", "delete", netns]);
  await rm(dataDir, { recursive: true, force: true });
  await rm(directDir, { recursive: true, force: true });
}
process.exit(exitCode);

function spawnSyncQuiet(file, args) {
  try {
    execFileSync(file, args, { stdio: "ignore" });
  } catch {
    // Cleanup is best effort; a namespace that is already gone is fine.
  }
}
