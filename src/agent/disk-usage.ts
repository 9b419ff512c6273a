// Disk use of the data root per tenant and pool (NodeService.GetDiskUsage, SPEC §11 "usage report per tenant/pool").
// Sizes are allocated blocks, so sparse disks count what they really take; a file hard-linked in several places
// (revision artifacts linked from the image cache) counts once per report.

import { lstat, readdir, statfs } from "node:fs/promises";
import { join } from "node:path";
import type { Store } from "../core/ports.js";
import type { DiskReport, PoolDiskReport, TenantDiskReport } from "../api/api-deps.js";

export interface DiskUsageOptions {
  store: Store;
  revisionsDir(tenantId: string, poolId: string): string;
  /** Bytes the agent keeps free on the data root's filesystem. */
  reserveBytes: number;
}

/** Sums allocated bytes under a path, each inode once. */
class BlockCounter {
  private readonly seen = new Set<string>();

  async size(path: string, skip: (p: string) => boolean = () => false): Promise<number> {
    let st;
    try {
      st = await lstat(path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") return 0;
      throw e;
    }
    let total = 0;
    const id = `${st.dev}:${st.ino}`;
    if (!this.seen.has(id)) {
      this.seen.add(id);
      total += st.blocks * 512;
    }
    if (st.isDirectory()) {
      let names: string[] = [];
      try {
        names = await readdir(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
      }
      for (const name of names) {
        const child = join(path, name);
        if (!skip(child)) total += await this.size(child, skip);
      }
    }
    return total;
  }
}

async function revisionCount(dir: string): Promise<number> {
  try {
    return (await readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory() && !e.name.startsWith(".")).length;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return 0;
    throw e;
  }
}

export async function measureDiskUsage(options: DiskUsageOptions, tenantId: string | undefined): Promise<DiskReport> {
  const { store } = options;
  const root = store.dataRoot;
  const counter = new BlockCounter();
  const fs = await statfs(root);
  const all = await store.listTenants();
  const tenants = all.filter((t) => tenantId === undefined || t.tenantId === tenantId).sort((a, b) => (a.tenantId < b.tenantId ? -1 : 1));
  const reports: TenantDiskReport[] = [];
  for (const tenant of tenants) {
    const pools: PoolDiskReport[] = [];
    for (const pool of (await store.listPools(tenant.tenantId)).sort((a, b) => (a.poolId < b.poolId ? -1 : 1))) {
      const revisions = options.revisionsDir(tenant.tenantId, pool.poolId);
      const poolDir = join(root, "tenants", tenant.tenantId, "pools", pool.poolId);
      let instancesBytes = 0;
      let dataDiskBytes = 0;
      let snapshotsBytes = await counter.size(join(poolDir, "snapshots"));
      for (const instance of await store.listInstances(tenant.tenantId, pool.poolId)) {
        const dir = store.instanceDir(tenant.tenantId, pool.poolId, instance.instanceId);
        const snapshotDir = join(dir, "snapshot");
        snapshotsBytes += await counter.size(snapshotDir);
        dataDiskBytes += await counter.size(join(dir, "volumes", "data.ext4"));
        instancesBytes += await counter.size(dir, (p) => p === snapshotDir);
      }
      // Data disks were counted on their own first, so add them back to their instances' share.
      instancesBytes += dataDiskBytes;
      const artifactsBytes = await counter.size(revisions);
      pools.push({ poolId: pool.poolId, artifactsBytes, instancesBytes, dataDiskBytes, snapshotsBytes, revisions: await revisionCount(revisions) });
    }
    // Every inode of the pools was counted above, so this is only what lies outside them.
    const otherBytes = await counter.size(join(root, "tenants", tenant.tenantId));
    reports.push({ tenantId: tenant.tenantId, pools, otherBytes });
  }
  return {
    dataRoot: root,
    filesystemBytes: fs.blocks * fs.bsize,
    freeBytes: fs.bavail * fs.bsize,
    reserveBytes: options.reserveBytes,
    imageCacheBytes: await counter.size(join(root, "images")),
    tenants: reports,
  };
}
