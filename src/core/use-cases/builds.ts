// Pool builds: produce a revision with the image builder, record it (history of the newest 20), make it current;
// roll back to an earlier built revision.

import { failedPrecondition, invalid, notFound } from "../errors.js";
import { idViolations } from "../ids.js";
import type { BuildRevision, WorkerPool } from "../model.js";
import type { BuildProgressEvent, ImageBuilder } from "../data-plane-ports.js";
import { audited, LOCAL_ACTOR } from "./audit-trail.js";
import { timestamp, type RecordDeps } from "./deps.js";
import type { PoolKey } from "./pools.js";

export const BUILD_HISTORY_KEEP = 20;

export interface BuildDeps extends RecordDeps {
  imageBuilder: ImageBuilder;
  revisionsDir(tenantId: string, poolId: string): string;
}

function assertKey(key: PoolKey): void {
  const violations = [...idViolations(key.tenantId, "tenant_id"), ...idViolations(key.poolId, "pool_id")];
  if (violations.length > 0) throw invalid(violations);
}

export async function buildPool(
  deps: BuildDeps,
  key: PoolKey,
  onProgress: (e: BuildProgressEvent) => void = () => undefined,
): Promise<{ pool: WorkerPool; build: BuildRevision }> {
  return audited(deps, { tenantId: key.tenantId, action: "pool_build_finish", target: `${key.tenantId}/${key.poolId}` }, async () => {
    assertKey(key);
    const pool = await deps.store.getPool(key.tenantId, key.poolId);
    if (!pool) throw notFound(`pool ${key.tenantId}/${key.poolId}`);
    if (pool.image.kind !== "debian") {
      throw failedPrecondition(`pool ${key.tenantId}/${key.poolId}: the ${pool.image.kind} image builder is not available on this node yet`);
    }
    await deps.audit?.append({
      tenantId: key.tenantId,
      actor: deps.actor ?? LOCAL_ACTOR,
      action: "pool_build_start",
      target: `${key.tenantId}/${key.poolId}`,
      outcome: "success",
      reason: "",
      details: { image: pool.image.kind },
    });
    // The build itself runs outside the tenant lock (it can take minutes); only recording it takes the lock.
    const started = deps.clock.nowMs();
    const built = await deps.imageBuilder.build(pool.image, deps.revisionsDir(key.tenantId, key.poolId), onProgress);
    const build: BuildRevision = {
      revision: built.revision,
      image: pool.image,
      flakeLockHash: built.flakeLockHash,
      kernel: built.kernel,
      initrd: built.initrd,
      rootfs: built.rootfs,
      builder: built.builder,
      builtAt: timestamp(deps.clock),
      durationMs: deps.clock.nowMs() - started,
    };
    return deps.store.withTenantLock(key.tenantId, async () => {
      const current = await deps.store.getPool(key.tenantId, key.poolId);
      if (!current) throw notFound(`pool ${key.tenantId}/${key.poolId}`);
      await deps.store.appendBuild(key.tenantId, key.poolId, build, BUILD_HISTORY_KEEP);
      const updated: WorkerPool = { ...current, currentRevision: build.revision, updatedAt: timestamp(deps.clock) };
      await deps.store.putPool(updated);
      return { pool: updated, build };
    });
  });
}

export async function listBuilds(deps: RecordDeps, key: PoolKey): Promise<BuildRevision[]> {
  assertKey(key);
  if (!(await deps.store.getPool(key.tenantId, key.poolId))) throw notFound(`pool ${key.tenantId}/${key.poolId}`);
  return deps.store.listBuilds(key.tenantId, key.poolId);
}

/** Makes an earlier built revision current again; instances adopt it at their next cold start. */
export async function rollbackPool(deps: RecordDeps, key: PoolKey, revision: string): Promise<WorkerPool> {
  return audited(deps, { tenantId: key.tenantId, action: "pool_rollback", target: `${key.tenantId}/${key.poolId}`, details: { revision: String(revision) } }, async () => {
    assertKey(key);
    if (typeof revision !== "string" || !/^[0-9a-f]{8,64}$/.test(revision)) {
      throw invalid([{ field: "revision", rule: "must be a revision ID (hex) from mvm pool builds" }]);
    }
    return deps.store.withTenantLock(key.tenantId, async () => {
      const pool = await deps.store.getPool(key.tenantId, key.poolId);
      if (!pool) throw notFound(`pool ${key.tenantId}/${key.poolId}`);
      const history = await deps.store.listBuilds(key.tenantId, key.poolId);
      const match = history.filter((b) => b.revision.startsWith(revision));
      if (match.length === 0) throw notFound(`revision ${revision} in the build history of ${key.tenantId}/${key.poolId}`);
      if (match.length > 1) throw invalid([{ field: "revision", rule: `is ambiguous: ${match.map((b) => b.revision).join(", ")}` }]);
      const updated: WorkerPool = { ...pool, currentRevision: match[0]!.revision, updatedAt: timestamp(deps.clock) };
      await deps.store.putPool(updated);
      return updated;
    });
  });
}
