// The control plane in this process: the core use cases on the node runtime the CLI opens itself. Used when no agent
// runs (or with --local); the cross-process locks keep it safe beside an agent, but that agent's watchers do not
// see what it does.

import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import type { NodeRuntime } from "../../agent/node-runtime-types.js";
import type { TenantNetworkReport } from "../../core/data-plane-ports.js";
import { reservedTaps } from "../../core/reservations.js";
import { invalid } from "../../core/errors.js";
import { audited } from "../../core/use-cases/audit-trail.js";
import { buildPool, listBuilds, rollbackPool } from "../../core/use-cases/builds.js";
import { collectGarbage } from "../../core/use-cases/garbage.js";
import { createInstance, getInstance, listInstances } from "../../core/use-cases/instances.js";
import {
  destroyInstance,
  execInInstance,
  instanceLogPath,
  instanceStats,
  refreshInstanceHealth,
  startInstance,
  stopInstance,
  tenantNetworkPlan,
} from "../../core/use-cases/lifecycle.js";
import { createPool, getPool, listPools, scalePool, updatePool } from "../../core/use-cases/pools.js";
import { resumeInstance, sleepInstance, wakeInstance, warmInstance } from "../../core/use-cases/sleep-wake.js";
import { destroyPoolCompletely, destroyTenantCompletely } from "../../core/use-cases/teardown.js";
import { createTenant, getTenant, listTenants, rotateSecrets, updateTenant } from "../../core/use-cases/tenants.js";
import { FsAuditLog } from "../../runtime/audit/fs-audit-log.js";
import { readHostFacts } from "../../runtime/host/host-facts.js";
import type { ControlPlaneClient } from "./control-plane-client.js";

const LOG_POLL_MS = 250;

async function followFile(path: string, write: (t: string) => void, signal: AbortSignal | undefined): Promise<void> {
  let offset = 0;
  while (!signal?.aborted) {
    const size = await stat(path).then((s) => s.size, () => 0);
    if (size > offset) {
      await new Promise<void>((resolve, reject) => {
        createReadStream(path, { start: offset, end: size - 1 })
          .on("data", (chunk) => write(chunk.toString()))
          .on("end", resolve)
          .on("error", reject);
      });
      offset = size;
    }
    await new Promise((r) => setTimeout(r, LOG_POLL_MS));
  }
}

/** `open` is called on first use only, so a command that fails its own checks opens nothing. */
export function localControlPlane(open: () => Promise<NodeRuntime>): ControlPlaneClient {
  const deps = open;
  const auditLog = async () => new FsAuditLog((await deps()).store.dataRoot);
  return {
    kind: "local",
    target: "in-process",

    createTenant: async (input) => createTenant(await deps(), input),
    getTenant: async (tenantId) => getTenant(await deps(), tenantId),
    listTenants: async () => listTenants(await deps()),
    updateTenant: async (input) => updateTenant(await deps(), input),
    rotateSecrets: async (tenantId, files) => rotateSecrets(await deps(), { tenantId, ...(files === undefined ? {} : { files }) }),
    destroyTenant: async (tenantId, force) => {
      await destroyTenantCompletely(await deps(), tenantId, force);
    },

    createPool: async (key, spec) => createPool(await deps(), key, spec),
    getPool: async (key) => getPool(await deps(), key),
    listPools: async (tenantId) => listPools(await deps(), tenantId),
    updatePool: async (key, spec) => updatePool(await deps(), key, spec),
    scalePool: async (key, counts) => scalePool(await deps(), key, counts),
    destroyPool: async (key, force) => {
      await destroyPoolCompletely(await deps(), key, force);
    },
    buildPool: async (key, onProgress) => (await buildPool(await deps(), key, onProgress)).build,
    listBuilds: async (key) => listBuilds(await deps(), key),
    rollbackPool: async (key, revision) => rollbackPool(await deps(), key, revision),

    createInstance: async (pool) => createInstance(await deps(), pool),
    getInstance: async (key) => {
      const runtime = await deps();
      await getInstance(runtime, key);
      return refreshInstanceHealth(runtime, key);
    },
    listInstances: async (filter) => listInstances(await deps(), filter),
    startInstance: async (key) => startInstance(await deps(), key),
    stopInstance: async (key) => stopInstance(await deps(), key),
    warmInstance: async (key) => warmInstance(await deps(), key),
    resumeInstance: async (key) => resumeInstance(await deps(), key),
    sleepInstance: async (key, options) => sleepInstance(await deps(), key, options),
    wakeInstance: async (key) => wakeInstance(await deps(), key),
    destroyInstance: async (key, options) => {
      await destroyInstance(await deps(), key, options);
    },
    execInstance: async (key, argv, options) => {
      const result = await execInInstance(await deps(), key, argv, options);
      return { stdout: result.stdout, stderr: result.stderr, exitCode: result.exitCode };
    },
    instanceStats: async (key) => {
      const runtime = await deps();
      await refreshInstanceHealth(runtime, key);
      const stats = await instanceStats(runtime, key);
      return {
        instance: `${key.tenantId}/${key.poolId}/${key.instanceId}`,
        status: stats.instance.status,
        pid: stats.instance.vmm?.pid ?? null,
        cpuUsageUs: stats.cgroup?.cpuUsageUs ?? null,
        memoryBytes: stats.cgroup?.memoryBytes ?? null,
        memoryLimitBytes: stats.cgroupLimits?.memoryBytes ?? null,
        tapRxBytes: stats.tap?.rxBytes ?? null,
        tapTxBytes: stats.tap?.txBytes ?? null,
        idle: stats.instance.idle,
      };
    },
    instanceLogs: async (key, options, write, warn) => {
      const path = await instanceLogPath(await deps(), key);
      if (options.follow) {
        await followFile(path, write, options.signal);
        return;
      }
      const exists = await stat(path).then(() => true, () => false);
      if (!exists) {
        warn(`no console log yet at ${path}\n`);
        return;
      }
      await new Promise<void>((resolve, reject) =>
        createReadStream(path).on("data", (d) => write(d.toString())).on("end", resolve).on("error", reject),
      );
    },

    nodeInfo: async () => {
      const { store } = await deps();
      const [node, facts, broken] = await Promise.all([store.node(), readHostFacts(store.dataRoot), store.brokenRecords()]);
      return {
        nodeId: node.nodeId,
        dataRoot: store.dataRoot,
        hostname: facts.hostname,
        arch: facts.arch,
        kernel: facts.kernel,
        vcpus: facts.vcpus,
        memMib: facts.memMib,
        cgroupVersion: facts.cgroupVersion,
        dataRootFreeBytes: facts.dataRootFreeBytes,
        binaries: Object.fromEntries(facts.binaries.map((b) => [b.name, b.path ? { path: b.path, version: b.version } : null])),
        brokenRecords: broken,
      };
    },

    collectGarbage: async (options) => collectGarbage(await deps(), options),

    verifyNetwork: async (tenantId, fix) => {
      const runtime = await deps();
      const tenants = (await runtime.store.listTenants()).filter((t) => tenantId === undefined || t.tenantId === tenantId);
      if (tenantId !== undefined && tenants.length === 0) throw invalid([{ field: "tenant", rule: `no tenant ${tenantId}` }]);
      const reports: TenantNetworkReport[] = [];
      for (const tenant of tenants) {
        const pools = await runtime.store.listPools(tenant.tenantId);
        const instances = (await Promise.all(pools.map((p) => runtime.store.listInstances(tenant.tenantId, p.poolId)))).flat();
        const expected = reservedTaps(instances);
        const plan = tenantNetworkPlan(tenant, runtime.metadataPort);
        const report = fix
          ? await audited(runtime, { tenantId: tenant.tenantId, action: "network_repair", target: tenant.tenantId }, () =>
              runtime.network.verify(plan, expected, true),
            )
          : await runtime.network.verify(plan, expected, false);
        reports.push(report);
      }
      return reports;
    },

    tailAudit: async (tenantId, n) => (await auditLog()).tail(tenantId, n),
    followAudit: (tenantId, n, signal) => ({
      async *[Symbol.asyncIterator]() {
        yield* (await auditLog()).watch(tenantId, { backlog: n, signal });
      },
    }),
    verifyAudit: async (tenantId) => {
      const log = await auditLog();
      return { path: log.logPath(tenantId), ...(await log.verify(tenantId)) };
    },

    close: () => undefined,
  };
}
