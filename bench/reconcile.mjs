#!/usr/bin/env node
// Reconcile (SPEC §9), two measurements:
//
// 1. CONTROL-PLANE BENCHMARK: a no-op pass (measure, plan, nothing to do) over 1000 instance records in a real
//    FsStore on disk. The Vmm, network, cgroup and volume ports are the in-memory test doubles (FakeDataPlane): a
//    converged pass never calls them, and this part measures mvm's own bookkeeping only. Target: <= 1 s (median of 5).
//
// 2. Real instances (root only, QEMU; skipped with a reason otherwise): a pass that has to start 10 instances,
//    spread over 5 tenants (2 each: the lifecycle use cases hold a tenant's lock through a whole boot, so a pass
//    overlaps boots of different tenants only), against 10 sequential direct starts (createInstance +
//    startInstance, one after the other) of the same shape on the same runtime. Boots overlap up to the number of CPUs. Reported as the ratio
//    pass wall time / sequential wall time (below 1: the pass overlapped work). Images come from the shared test
//    cache (MVM_IMAGE_CACHE, default .cache/test-images); the data plane lives in a network namespace this script
//    creates and deletes.
//
// Usage: npm run build && node bench/reconcile.mjs [--instances N] [--real-instances N] [--skip-real]
// Exit status: 0 whether or not the target is met; 1 on an error.

import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { availableParallelism, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { benchCgroupParent } from "./lib/cgroup-parent.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = (path) => pathToFileURL(join(root, "dist", path)).href;
if (!existsSync(join(root, "dist/src/core/use-cases/reconcile.js"))) {
  console.error("reconcile bench: dist/ not found: run `npm run build` first");
  process.exit(1);
}
const { values: flags } = parseArgs({
  options: { instances: { type: "string", default: "1000" }, "real-instances": { type: "string", default: "10" }, "skip-real": { type: "boolean", default: false } },
});
const RECORDS = Number(flags.instances);
const REAL = Number(flags["real-instances"]);
const NOOP_TARGET_MS = 1000;

const { FsStore } = await import(dist("src/runtime/store/fs-store.js"));
const { FakeDataPlane } = await import(dist("src/runtime/fake/fake-data-plane.js"));
const { ReconcileController } = await import(dist("src/core/use-cases/reconcile.js"));
const { desiredStateDigest } = await import(dist("src/api/convert/desired-state.js"));
const { macAddress, tapName } = await import(dist("src/core/naming.js"));
const { allocateGuestAddress, parseCidr } = await import(dist("src/core/subnet.js"));

const median = (values) => {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
};

const IMAGE = { kind: "debian", suite: "bookworm", packages: [], extraFiles: {} };
const QUOTAS = { max_vcpus: 1000, max_mem_mib: 1_000_000, max_running: 1000, max_warm: 100, max_pools: 4, max_instances_per_pool: 1000, max_disk_gib: 1000 };

function poolDoc(poolId, running) {
  return { pool_id: poolId, image: { debian: { suite: "bookworm" } }, resources: { vcpus: 1, mem_mib: 256 }, desired_counts: { running } };
}

/** Part 1: records written straight into an FsStore (the use cases re-read the node on every create). */
async function noopPass() {
  const dir = await mkdtemp(join(tmpdir(), "mvm-bench-reconcile-"));
  try {
    const store = await FsStore.open(dir);
    const plane = new FakeDataPlane();
    let n = 0;
    const deps = {
      store,
      clock: { nowMs: () => Date.now() },
      ids: { randomHex: (bytes) => (n++).toString(16).padStart(bytes * 2, "0") },
      keys: { ed25519: (c) => ({ publicKey: `ssh-ed25519 AAAA ${c}`, privateKey: "PRIVATE" }) },
      networkPool: { cidr: "10.240.0.0/12", prefixLen: 24 },
      vmm: (kind) => plane.vmm(kind),
      chooseHypervisor: async () => "qemu",
      network: plane.network(null),
      cgroups: plane.cgroupsPort(),
      volumes: plane.volumes(),
      guest: plane.guest(() => ({ exitCode: 0, stdout: "", stderr: "" })),
      paths: { revisionDir: () => "/nonexistent", instanceDir: () => "/nonexistent", tenantPrivateKey: () => "/nonexistent", keptDataDisk: () => "/nonexistent" },
      cgroupLimits: () => ({ memoryBytes: 1, cpuQuotaUs: 1, cpuPeriodUs: 1, pidsMax: 1 }),
      metadataPort: 8169,
      bootTimeoutMs: 1000,
      stopTimeoutMs: 1000,
      imageBuilder: { build: async () => { throw new Error("bench: no build expected"); } },
      revisionsDir: () => "/nonexistent",
      digestDesiredState: desiredStateDigest,
    };
    const tenants = 10;
    const poolsPerTenant = 2;
    const perPool = Math.ceil(RECORDS / (tenants * poolsPerTenant));
    const nodeId = (await store.node()).nodeId;
    const now = new Date().toISOString();
    let written = 0;
    const doc = { schema_version: 1, node_id: nodeId, tenants: [] };
    for (let t = 0; t < tenants; t++) {
      const tenantId = `bench-${t}`;
      const netId = 100 + t;
      const subnet = `10.${100 + t}.0.0/20`;
      const net = { netId, ipv4Subnet: subnet, gatewayIp: `10.${100 + t}.0.1`, bridgeName: `br-${netId}` };
      await store.putTenant({ schemaVersion: 1, tenantId, quotas: { maxVcpus: 1000, maxMemMib: 1_000_000, maxRunning: 1000, maxWarm: 100, maxPools: 4, maxInstancesPerPool: 1000, maxDiskGib: 1000 }, network: net, sshPublicKey: "ssh-ed25519 AAAA bench", secretsEpoch: 0, labels: {}, createdAt: now, updatedAt: now });
      const tenantDoc = { tenant_id: tenantId, network: { net_id: netId, ipv4_subnet: subnet }, quotas: QUOTAS, pools: [] };
      const used = new Set();
      for (let p = 0; p < poolsPerTenant; p++) {
        const poolId = `pool-${p}`;
        const count = Math.min(perPool, RECORDS - written);
        const revision = "0123456789abcdef";
        await store.putPool({ schemaVersion: 1, tenantId, poolId, image: IMAGE, resources: { vcpus: 1, memMib: 256, dataDiskMib: 0 }, desiredCounts: { running: count, warm: 0, sleeping: 0 }, hypervisor: "auto", seccompPolicy: "default", snapshotCompression: "none", metadataEnabled: true, sleepPolicy: { warmAfterIdleS: 300, sleepAfterIdleS: 900, cpuIdlePct: 5, netIdleBytes: 1024 }, pinned: false, critical: false, currentRevision: revision, createdAt: now, updatedAt: now });
        const artifact = { path: "x", sha256: revision, sizeBytes: 1 };
        await store.appendBuild(tenantId, poolId, { revision, image: IMAGE, flakeLockHash: "", kernel: artifact, initrd: artifact, rootfs: artifact, builder: "bench", builtAt: now, durationMs: 0 }, 20);
        tenantDoc.pools.push(poolDoc(poolId, count));
        const writes = [];
        for (let i = 0; i < count; i++, written++) {
          const { ip, offset } = allocateGuestAddress(parseCidr(subnet, "s"), used);
          used.add(ip);
          const instanceId = `i-${written.toString(16).padStart(8, "0")}`;
          writes.push(store.putInstance({
            schemaVersion: 1, instanceId, tenantId, poolId, status: "running", revision,
            net: { tapName: tapName(netId, offset), mac: macAddress(netId, offset), guestIp: ip, gatewayIp: net.gatewayIp, prefixLen: 20 },
            vmm: { hypervisor: "qemu", pid: 1, pidStartTime: 1, apiSocket: "/nonexistent", netns: null },
            conditions: [], idle: { idleS: 0, cpuPct: 0, netBytes: 0, lastSampleAt: null },
            createdAt: now, updatedAt: now, lastStartedAt: now, lastStoppedAt: null, lastSnapshotAt: null, healthy: true, lastHealthCheckAt: now,
          }));
        }
        await Promise.all(writes);
      }
      doc.tenants.push(tenantDoc);
    }
    const controller = new ReconcileController(deps);
    await controller.apply(doc);
    const timings = [];
    for (let i = 0; i < 6; i++) {
      const started = performance.now();
      const report = await controller.reconcile("periodic");
      const elapsed = performance.now() - started;
      if (report.results.length !== 0 || !report.converged) throw new Error(`bench: the no-op pass took ${report.results.length} step(s): the seeded state is not converged`);
      if (i > 0) timings.push(elapsed); // the first pass warms the page cache and the JIT
    }
    return { records: written, medianMs: median(timings), maxMs: Math.max(...timings) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Part 2: real boots. */
async function realStarts() {
  if (process.getuid?.() !== 0) return { skipped: "needs root (network namespace, bridges, TAPs, cgroups)" };
  if (!existsSync("/usr/bin/qemu-system-x86_64")) return { skipped: "qemu-system-x86_64 is not installed" };
  const { openNodeRuntime } = await import(dist("src/agent/node-runtime.js"));
  const { createInstance } = await import(dist("src/core/use-cases/instances.js"));
  const { startInstance } = await import(dist("src/core/use-cases/lifecycle.js"));
  const { destroyTenantCompletely } = await import(dist("src/core/use-cases/teardown.js"));
  const netns = `mvm-bench-rec-${process.pid}`;
  const dir = await mkdtemp(join(tmpdir(), "mvm-bench-reconcile-real-"));
  execFileSync("ip", ["netns", "add", netns]);
  const cgroups = await benchCgroupParent(root, "reconcile");
  const env = { ...process.env, MVM_IMAGE_CACHE: process.env.MVM_IMAGE_CACHE || join(root, ".cache/test-images"), ...cgroups.env };
  const runtime = await openNodeRuntime({ dataDir: dir, env, netns, actor: { kind: "system", id: "system:bench" } });
  const tenantsOf = (prefix, count) => Array.from({ length: count }, (_, i) => `${prefix}-${i}`);
  const perTenant = 2;
  const tenantCount = Math.ceil(REAL / perTenant);
  const passTenants = tenantsOf("pass", tenantCount);
  const directTenants = tenantsOf("direct", tenantCount);
  const nodeId = (await runtime.store.node()).nodeId;
  const doc = (running) => ({
    schema_version: 1,
    node_id: nodeId,
    tenants: [...passTenants, ...directTenants].map((tenantId, i) => ({
      tenant_id: tenantId,
      network: { net_id: 300 + i, ipv4_subnet: `10.213.${i}.0/24` },
      pools: [poolDoc("web", passTenants.includes(tenantId) ? Math.min(perTenant, running - i * perTenant > 0 ? running - i * perTenant : 0) : 0)],
    })),
  });
  // No more boots side by side than there are CPUs: under software emulation each boot keeps a CPU busy, and more
  // at once only pushes every one of them towards its boot timeout.
  const concurrency = Math.max(1, Math.min(tenantCount, availableParallelism()));
  const controller = new ReconcileController({ ...runtime, digestDesiredState: desiredStateDigest }, { concurrency });
  try {
    // Tenants, pools and builds (cache hits) first, untimed.
    await controller.apply(doc(0));
    const setup = await controller.reconcile("manual");
    if (!setup.converged) throw new Error(`bench: setup pass failed: ${setup.errors[0]?.message}`);

    const directStarted = performance.now();
    for (let i = 0; i < REAL; i++) {
      const tenantId = directTenants[Math.floor(i / perTenant)];
      const instance = await createInstance(runtime, { tenantId, poolId: "web" });
      await startInstance(runtime, { tenantId, poolId: "web", instanceId: instance.instanceId });
    }
    const directMs = performance.now() - directStarted;
    for (const t of directTenants) await destroyTenantCompletely(runtime, t, true);

    await controller.apply(doc(REAL));
    const passStarted = performance.now();
    const report = await controller.reconcile("apply");
    const passMs = performance.now() - passStarted;
    if (!report.converged) throw new Error(`bench: the pass did not converge: ${report.errors[0]?.message}`);
    const started = report.results.filter((r) => r.step.kind === "create_instance").length;
    return { instances: started, tenants: tenantCount, concurrency, passMs, directMs, ratio: passMs / directMs };
  } finally {
    for (const t of [...passTenants, ...directTenants]) await destroyTenantCompletely(runtime, t, true).catch(() => undefined);
    await runtime.close();
    cgroups.remove();
    spawnSync("ip", ["netns", "delete", netns]);
    await rm(dir, { recursive: true, force: true });
  }
}

const noop = await noopPass();
console.log(`control-plane benchmark (real FsStore, Vmm port faked): no-op pass over ${noop.records} instance records: median ${noop.medianMs.toFixed(1)} ms, max ${noop.maxMs.toFixed(1)} ms (target <= ${NOOP_TARGET_MS} ms: ${noop.medianMs <= NOOP_TARGET_MS ? "met" : "NOT met"})`);
const real = flags["skip-real"] ? { skipped: "--skip-real" } : await realStarts();
if (real.skipped) console.log(`real starts: skipped: ${real.skipped}`);
else {
  console.log(
    `real starts: a pass starting ${real.instances} instances over ${real.tenants} tenants (${real.concurrency} side by side) took ${(real.passMs / 1000).toFixed(1)} s; ${REAL} sequential direct starts took ${(real.directMs / 1000).toFixed(1)} s: ratio ${real.ratio.toFixed(2)}`,
  );
}
console.log(JSON.stringify({ bench: "reconcile", noop: { ...noop, targetMs: NOOP_TARGET_MS, met: noop.medianMs <= NOOP_TARGET_MS }, real }));
