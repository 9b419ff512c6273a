// PoolService on the pool and build use cases.

import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { invalid, type FieldViolation } from "../../core/errors.js";
import { idViolations } from "../../core/ids.js";
import type { WorkerPool } from "../../core/model.js";
import type { BuildProgressEvent } from "../../core/data-plane-ports.js";
import { buildPool, listBuilds, rollbackPool } from "../../core/use-cases/builds.js";
import { destroyInstance } from "../../core/use-cases/lifecycle.js";
import { createPool, destroyPool, getPool, listPools, scalePool, updatePool, type PoolKey } from "../../core/use-cases/pools.js";
import type { PoolRef } from "../../../gen/mvm/v1/common_pb.js";
import {
  BuildPhase,
  BuildPoolResponseSchema,
  CreatePoolRequestSchema,
  DeletePoolRequestSchema,
  PoolService,
  RollbackPoolRequestSchema,
  ScalePoolRequestSchema,
  UpdatePoolRequestSchema,
  type BuildPoolResponse,
} from "../../../gen/mvm/v1/pool_service_pb.js";
import type { ApiRuntime } from "../api-deps.js";
import { buildRevisionToProto } from "../convert/build.js";
import { desiredCountsFromProto, observedCounts, poolSpecInputFromProto, poolSpecPatchFromMask, poolToProto } from "../convert/pool.js";
import { remapViolations } from "../errors.js";
import { REQUEST_ID_RULE } from "../idempotency.js";
import { filterKeyOf, paginate, type PageLimits } from "../paging.js";
import { callInfo, type CallInfo } from "../policy.js";
import { EventLog, untilShutdown } from "../streams.js";
import { hasLabels } from "./tenant-service.js";
import type { ServiceKit } from "./service-kit.js";

export const BUILD_PAGE_LIMITS: PageLimits = { defaultSize: 20, maxSize: 100 };
const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

/** The pool a ref names, every ID checked (`pool.tenant_id`, `pool.pool_id`). */
export function poolKeyOf(ref: PoolRef | undefined, field = "pool"): PoolKey {
  if (ref === undefined) throw invalid([{ field, rule: "is required (tenant_id and pool_id)" }]);
  const violations = [...idViolations(ref.tenantId, `${field}.tenant_id`), ...idViolations(ref.poolId, `${field}.pool_id`)];
  if (violations.length > 0) throw invalid(violations);
  return { tenantId: ref.tenantId, poolId: ref.poolId };
}

/** Core names the key fields bare and the spec fields relative to the spec; the request nests both. */
function specField(field: string): string {
  return field === "tenant_id" || field === "pool_id" ? `pool.${field}` : `spec.${field}`;
}

function keyField(field: string): string {
  return field === "tenant_id" || field === "pool_id" ? `pool.${field}` : field;
}

async function withFieldPaths<T>(rename: (field: string) => string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (e) {
    throw remapViolations(e, rename);
  }
}

async function poolMessage(runtime: ApiRuntime, pool: WorkerPool) {
  return poolToProto(pool, observedCounts(await runtime.store.listInstances(pool.tenantId, pool.poolId)));
}

const PHASES: Readonly<Record<string, BuildPhase>> = {
  resolve: BuildPhase.RESOLVE,
  fetch: BuildPhase.FETCH,
  kernel: BuildPhase.KERNEL,
  initramfs: BuildPhase.INITRAMFS,
  rootfs: BuildPhase.ROOTFS,
  disk_image: BuildPhase.DISK_IMAGE,
  manifest: BuildPhase.MANIFEST,
};

/** A builder's phase name (`rootfs`, `disk-image`) as the contract's enum; unknown names keep the previous phase. */
export function buildPhaseOf(name: string, previous: BuildPhase): BuildPhase {
  return PHASES[name.toLowerCase().replace(/-/g, "_")] ?? (previous === BuildPhase.UNSPECIFIED ? BuildPhase.RESOLVE : previous);
}

async function destroyPoolInstances(runtime: ApiRuntime, key: PoolKey): Promise<void> {
  for (const i of await runtime.store.listInstances(key.tenantId, key.poolId)) {
    await destroyInstance(runtime, { ...key, instanceId: i.instanceId });
  }
}

export function poolService(kit: ServiceKit): ServiceImpl<typeof PoolService> {
  /** Builds running now, by `tenant/pool`: a second BuildPool for the same pool joins the first. */
  const builds = new Map<string, EventLog<BuildPoolResponse>>();

  function startBuild(call: CallInfo, key: PoolKey): EventLog<BuildPoolResponse> {
    const log = new EventLog<BuildPoolResponse>();
    const id = `${key.tenantId}/${key.poolId}`;
    builds.set(id, log);
    let phase: BuildPhase = BuildPhase.UNSPECIFIED;
    let percent = 0;
    const onProgress = (e: BuildProgressEvent) => {
      phase = buildPhaseOf(e.phase, phase);
      // The contract promises a never-decreasing estimate.
      percent = Math.max(percent, Math.min(100, Math.max(0, Math.round(e.percent))));
      log.push(create(BuildPoolResponseSchema, { event: { case: "progress", value: { phase, percent, message: e.message, at: timestampNow() } } }));
    };
    // The build goes on when its client disconnects: it is long, and a retry joins it.
    void buildPool(kit.runtimeFor(call), key, onProgress)
      .then(({ build }) => {
        log.push(create(BuildPoolResponseSchema, { event: { case: "completed", value: { revision: buildRevisionToProto(build), cached: false } } }));
        log.end();
      })
      .catch((e: unknown) => log.fail(e))
      .finally(() => {
        if (builds.get(id) === log) builds.delete(id);
      });
    return log;
  }

  return {
    async createPool(req, context) {
      const call = callInfo(context);
      const key = poolKeyOf(req.pool);
      await kit.policy.requireTenant(call, key.tenantId, `${key.tenantId}/${key.poolId}`);
      return kit.once(call, CreatePoolRequestSchema, req, req.requestId, async () => {
        const violations: FieldViolation[] = [];
        const spec = poolSpecInputFromProto(req.spec, "spec", violations);
        if (violations.length > 0) throw invalid(violations);
        const runtime = kit.runtimeFor(call);
        const pool = await withFieldPaths(specField, () => createPool(runtime, key, spec));
        return { pool: await poolMessage(runtime, pool) };
      });
    },

    async getPool(req, context) {
      const call = callInfo(context);
      const key = poolKeyOf(req.pool);
      await kit.policy.requireTenant(call, key.tenantId, `${key.tenantId}/${key.poolId}`);
      const runtime = kit.runtimeFor(call);
      return { pool: await poolMessage(runtime, await getPool(runtime, key)) };
    },

    async listPools(req, context) {
      const call = callInfo(context);
      const tenantId = await kit.policy.scopeTenant(call, req.tenantId, "tenant_id");
      const runtime = kit.runtimeFor(call);
      const pools = await listPools(runtime, tenantId);
      const tenantLabels = new Map((await runtime.store.listTenants()).map((t) => [t.tenantId, t.labels] as const));
      const matching = pools
        .filter((p) => hasLabels(tenantLabels.get(p.tenantId) ?? {}, req.labels))
        .sort((a, b) => (`${a.tenantId}\u0000${a.poolId}` < `${b.tenantId}\u0000${b.poolId}` ? -1 : 1));
      const page = paginate(matching, (p) => `${p.tenantId}\u0000${p.poolId}`, req, filterKeyOf({ tenantId: tenantId ?? "", labels: req.labels }));
      return { pools: await Promise.all(page.items.map((p) => poolMessage(runtime, p))), nextPageToken: page.nextPageToken };
    },

    async updatePool(req, context) {
      const call = callInfo(context);
      const key = poolKeyOf(req.pool);
      await kit.policy.requireTenant(call, key.tenantId, `${key.tenantId}/${key.poolId}`);
      return kit.once(call, UpdatePoolRequestSchema, req, req.requestId, async () => {
        const violations: FieldViolation[] = [];
        const patch = poolSpecPatchFromMask(req.spec, req.updateMask?.paths ?? [], violations);
        if (violations.length > 0) throw invalid(violations);
        const runtime = kit.runtimeFor(call);
        const pool = await withFieldPaths(specField, () => updatePool(runtime, key, patch));
        return { pool: await poolMessage(runtime, pool) };
      });
    },

    async deletePool(req, context) {
      const call = callInfo(context);
      const key = poolKeyOf(req.pool);
      await kit.policy.requireTenant(call, key.tenantId, `${key.tenantId}/${key.poolId}`);
      return kit.once(call, DeletePoolRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call);
        await getPool(runtime, key);
        if (req.force) await destroyPoolInstances(runtime, key);
        await destroyPool(runtime, { ...key, force: req.force });
        return {};
      });
    },

    async scalePool(req, context) {
      const call = callInfo(context);
      const key = poolKeyOf(req.pool);
      await kit.policy.requireTenant(call, key.tenantId, `${key.tenantId}/${key.poolId}`);
      if (req.desiredCounts === undefined) throw invalid([{ field: "desired_counts", rule: "is required (running, warm, sleeping)" }]);
      const counts = desiredCountsFromProto(req.desiredCounts);
      return kit.once(call, ScalePoolRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call);
        const pool = await withFieldPaths(keyField, () => scalePool(runtime, key, counts));
        return { pool: await poolMessage(runtime, pool) };
      });
    },

    async *buildPool(req, context) {
      const call = callInfo(context);
      const key = poolKeyOf(req.pool);
      if (req.requestId !== "" && !REQUEST_ID_PATTERN.test(req.requestId)) throw invalid([{ field: "request_id", rule: REQUEST_ID_RULE }]);
      await kit.policy.requireTenant(call, key.tenantId, `${key.tenantId}/${key.poolId}`);
      await getPool(kit.runtimeFor(call), key);
      const log = builds.get(`${key.tenantId}/${key.poolId}`) ?? startBuild(call, key);
      yield* untilShutdown(log.subscribe(), kit.deps.shutdownSignal, context.signal);
    },

    async listBuilds(req, context) {
      const call = callInfo(context);
      const key = poolKeyOf(req.pool);
      await kit.policy.requireTenant(call, key.tenantId, `${key.tenantId}/${key.poolId}`);
      const runtime = kit.runtimeFor(call);
      const pool = await getPool(runtime, key);
      const keyOf = (b: { builtAt: string; revision: string }) => `${b.builtAt}\u0000${b.revision}`;
      const newestFirst = (await listBuilds(runtime, key)).sort((a, b) => (keyOf(a) < keyOf(b) ? 1 : -1));
      const page = paginate(newestFirst, keyOf, req, filterKeyOf(key), BUILD_PAGE_LIMITS, "desc");
      return { builds: page.items.map(buildRevisionToProto), nextPageToken: page.nextPageToken, currentRevision: pool.currentRevision };
    },

    async rollbackPool(req, context) {
      const call = callInfo(context);
      const key = poolKeyOf(req.pool);
      await kit.policy.requireTenant(call, key.tenantId, `${key.tenantId}/${key.poolId}`);
      return kit.once(call, RollbackPoolRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call);
        const before = await getPool(runtime, key);
        const pool = await withFieldPaths(keyField, () => rollbackPool(runtime, key, req.revision));
        return { pool: await poolMessage(runtime, pool), previousRevision: before.currentRevision };
      });
    },
  };
}
