// Reconcile (SPEC §9): apply a desired state, measure the node, plan (core/reconcile/planner.ts) and take the steps
// through the same use cases the CLI and the API use, so every step is quota-checked, locked, audited and
// idempotent. Failures stay per item: the step's object gets a condition, the report an error, and the item is
// retried by later passes with exponential backoff and jitter, except a terminal error (invalid, terminal), which
// waits for a new document.
//
// Passes run one at a time per controller; a trigger while one runs joins it, an apply queues the next. Scaling steps
// of different tenants run side by side (bounded); within one tenant they take turns, because the lifecycle use
// cases hold the tenant's lock through a whole boot.

import { parseDesiredState, type DesiredPool, type DesiredState } from "../desired-state.js";
import { failedPrecondition, invalid, isMvmError, MvmError, type MvmErrorKind } from "../errors.js";
import { asDesiredClass } from "../idle-mark.js";
import type { Condition, Instance, WorkerPool } from "../model.js";
import type { AppliedDesiredState } from "../ports.js";
import { planReconcile, type ObservedNode, type ObservedPool } from "../reconcile/planner.js";
import {
  describeStep,
  targetPath,
  type ConditionChange,
  type ReconcileItemError,
  type ReconcilePlan,
  type ReconcileReport,
  type ReconcileStep,
  type ReconcileStepResult,
  type ReconcileTrigger,
  type StepTarget,
} from "../reconcile/steps.js";
import { buildPool, type BuildDeps } from "./builds.js";
import { timestamp } from "./deps.js";
import { createInstance } from "./instances.js";
import { destroyInstance, startInstance, stopInstance, tenantNetworkPlan, type DataPlaneDeps } from "./lifecycle.js";
import { createPool, updatePool, type PoolSpecInput } from "./pools.js";
import { clearIdleMark } from "./idle.js";
import { resumeInstance, sleepInstance, wakeInstance, warmInstance } from "./sleep-wake.js";
import { destroyPoolCompletely } from "./teardown.js";
import { createTenant, destroyTenant, updateTenant } from "./tenants.js";

export interface ReconcileDeps extends DataPlaneDeps, BuildDeps {
  /** Lowercase hex SHA-256 of the document's canonical protobuf form (computed at the edge: core has no codec). */
  digestDesiredState(document: DesiredState): string;
}

export interface ReconcileOptions {
  /** Step 6 of a pass: the agent's idle policy, run after the steps. Default: none. */
  idlePolicy?: () => Promise<void>;
  /** Steps taken side by side at most (different tenants, or instances of one). Default 4. */
  concurrency?: number;
  /** First retry delay after a failure, ms; doubles per attempt. Default 5000. */
  backoffBaseMs?: number;
  /** Longest retry delay, ms. Default 300000. */
  backoffMaxMs?: number;
  /** Uniform in [0, 1): spreads retries (±20 %). Default Math.random. */
  random?: () => number;
}

export const DEFAULT_RECONCILE_CONCURRENCY = 4;
const DEFAULT_BACKOFF_BASE_MS = 5_000;
const DEFAULT_BACKOFF_MAX_MS = 300_000;
const TERMINAL_KINDS: readonly MvmErrorKind[] = ["invalid", "terminal"];

/** Validates a document (as decoded from JSON/YAML or converted from protobuf) and checks it is for this node. */
export async function validateDesiredStateFor(deps: ReconcileDeps, input: unknown): Promise<DesiredState> {
  const document = parseDesiredState(input);
  const nodeId = (await deps.store.node()).nodeId;
  if (document.nodeId !== nodeId) {
    throw invalid([{ field: "node_id", rule: `must be this node's ID ${nodeId} (got ${document.nodeId}): the document is for another node` }]);
  }
  return document;
}

/** Measures the node: every tenant, pool (with the image of its current build) and live instance record. */
export async function measureNode(deps: ReconcileDeps): Promise<ObservedNode> {
  const { store } = deps;
  const nodeId = (await store.node()).nodeId;
  const tenants = await store.listTenants();
  return {
    nodeId,
    tenants: await Promise.all(
      tenants.map(async (tenant) => {
        const pools = await store.listPools(tenant.tenantId);
        return {
          tenant,
          pools: await Promise.all(
            pools.map(async (pool): Promise<ObservedPool> => {
              const [builds, instances] = await Promise.all([
                pool.currentRevision === "" ? Promise.resolve([]) : store.listBuilds(tenant.tenantId, pool.poolId),
                store.listInstances(tenant.tenantId, pool.poolId),
              ]);
              const current = builds.find((b) => b.revision === pool.currentRevision);
              // Instances the idle policy parked count in the class they were parked from (idle-mark.ts).
              const live = instances.filter((i) => i.status !== "destroyed").map(asDesiredClass);
              return { pool, builtImage: current ? current.image : null, instances: live };
            }),
          ),
        };
      }),
    ),
  };
}

function specOf(pool: DesiredPool): PoolSpecInput {
  return {
    image: pool.image,
    resources: pool.resources,
    desiredCounts: pool.desiredCounts,
    hypervisor: pool.hypervisor,
    seccompPolicy: pool.seccompPolicy,
    snapshotCompression: pool.snapshotCompression,
    metadataEnabled: pool.metadataEnabled,
    userData: pool.userData,
    sleepPolicy: pool.sleepPolicy,
    pinned: pool.pinned,
    critical: pool.critical,
  };
}

function mergeCondition(conditions: readonly Condition[] | undefined, next: ConditionChange, at: string): Condition[] | null {
  const list = conditions ?? [];
  const previous = list.find((c) => c.type === next.type);
  if (previous && previous.status === next.status && previous.reason === next.reason && previous.message === next.message) return null;
  const changed = !previous || previous.status !== next.status;
  const merged: Condition = { ...next, lastTransitionAt: changed ? at : (previous as Condition).lastTransitionAt };
  return [...list.filter((c) => c.type !== next.type), merged];
}

/** Sets a condition on a pool, or on an instance when the target names one; a vanished object is no error. */
async function setTargetCondition(deps: ReconcileDeps, target: StepTarget, condition: ConditionChange): Promise<boolean> {
  if (target.poolId === undefined) return false;
  const { tenantId, poolId, instanceId } = target;
  return deps.store.withTenantLock(tenantId, async () => {
    const at = timestamp(deps.clock);
    if (instanceId !== undefined) {
      const instance = await deps.store.getInstance(tenantId, poolId, instanceId);
      const merged = instance && mergeCondition(instance.conditions, condition, at);
      if (!instance || !merged) return false;
      await deps.store.putInstance({ ...instance, conditions: merged });
      return true;
    }
    const pool = await deps.store.getPool(tenantId, poolId);
    const merged = pool && mergeCondition(pool.conditions, condition, at);
    if (!pool || !merged) return false;
    await deps.store.putPool({ ...pool, conditions: merged });
    return true;
  });
}

function conditionStatus(conditions: readonly Condition[] | undefined, type: string): Condition["status"] | null {
  return conditions?.find((c) => c.type === type)?.status ?? null;
}

const NOT_BUILT = "NotBuilt";
const RECONCILED = "Reconciled";

function failureReason(kind: MvmErrorKind): string {
  if (kind === "exhausted") return "QuotaBlocked";
  if (kind === "failed_precondition") return "WrongState";
  if (kind === "unavailable") return "Unavailable";
  return "ReconcileFailed";
}

/** Prune of a tenant: its VMs and records first (TAPs, cgroups, disks), then its bridge, then the tenant's files. */
async function pruneTenant(deps: ReconcileDeps, tenantId: string): Promise<void> {
  const tenant = await deps.store.getTenant(tenantId);
  if (!tenant) return;
  for (const pool of await deps.store.listPools(tenantId)) {
    for (const instance of await deps.store.listInstances(tenantId, pool.poolId)) {
      await destroyInstance(deps, { tenantId, poolId: pool.poolId, instanceId: instance.instanceId });
    }
  }
  await deps.network.removeTenant(tenantNetworkPlan(tenant, deps.metadataPort));
  await destroyTenant(deps, { tenantId, force: true });
}

interface RetryEntry {
  attempt: number;
  kind: MvmErrorKind;
  message: string;
  field: string;
  target: StepTarget;
  retryable: boolean;
  nextRetryAtMs: number | null;
}

function stepKey(step: ReconcileStep): string {
  return `${step.kind}:${targetPath(step.target)}`;
}

const tenantId = (step: ReconcileStep): string => step.target.tenantId;

function errorKind(error: unknown): MvmErrorKind {
  return isMvmError(error) ? error.kind : "internal";
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Runs `tasks` with at most `limit` at a time. */
async function bounded(tasks: ReadonlyArray<() => Promise<void>>, limit: number): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const task = tasks[next++] as () => Promise<void>;
      await task();
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, tasks.length)) }, worker));
}

/** Steps of one lane run in order; a failure blocks the rest of the lane. */
type Lane = ReconcileStep[];

function scope(target: StepTarget): string[] {
  const scopes = [target.tenantId];
  if (target.poolId !== undefined) scopes.push(`${target.tenantId}/${target.poolId}`);
  if (target.instanceId !== undefined) scopes.push(targetPath(target));
  return scopes;
}

const FREES_CAPACITY = new Set<ReconcileStep["kind"]>(["warm_instance", "sleep_instance", "stop_instance"]);

export class ReconcileController {
  private readonly retries = new Map<string, RetryEntry>();
  private readonly listeners = new Set<(report: ReconcileReport) => void>();
  private running: Promise<ReconcileReport> | null = null;
  private runningId: string | null = null;
  private queued: Promise<ReconcileReport> | null = null;
  private last: ReconcileReport | null = null;
  private retryGeneration = 0;

  constructor(
    private readonly deps: ReconcileDeps,
    private readonly options: ReconcileOptions = {},
  ) {}

  get lastReport(): ReconcileReport | null {
    return this.last;
  }

  /** ID of the pass in progress, or null. */
  get currentPassId(): string | null {
    return this.runningId;
  }

  /** Calls `listener` with the report of every pass as it finishes; returns the unsubscribe function. */
  onReport(listener: (report: ReconcileReport) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async applied(): Promise<AppliedDesiredState | null> {
    return this.deps.store.getDesiredState();
  }

  /**
   * Validates and persists `input` as the node's desired state (nothing is written when it is invalid). The
   * generation rises only when the document changed.
   */
  async apply(input: unknown): Promise<{ applied: AppliedDesiredState; changed: boolean }> {
    const document = await validateDesiredStateFor(this.deps, input);
    const hash = this.deps.digestDesiredState(document);
    return this.deps.store.withNodeLock(async () => {
      const previous = await this.deps.store.getDesiredState();
      if (previous && previous.hash === hash) return { applied: previous, changed: false };
      const applied: AppliedDesiredState = {
        schemaVersion: 1,
        document,
        generation: (previous?.generation ?? 0) + 1,
        hash,
        appliedAt: timestamp(this.deps.clock),
      };
      await this.deps.store.putDesiredState(applied);
      return { applied, changed: true };
    });
  }

  /** The steps a pass would take now, for `input` (validated first) or else the applied document. */
  async plan(input?: unknown): Promise<ReconcilePlan> {
    let document: DesiredState;
    let generation = 0;
    if (input === undefined) {
      const applied = await this.deps.store.getDesiredState();
      if (!applied) throw failedPrecondition("no desired state was ever applied to this node: nothing to plan against");
      document = applied.document;
      generation = applied.generation;
    } else {
      document = await validateDesiredStateFor(this.deps, input);
    }
    return planReconcile(document, await measureNode(this.deps), { generation, nowMs: this.deps.clock.nowMs() });
  }

  /**
   * Runs a pass against the applied document. While a pass runs, a manual or periodic trigger joins it; an apply,
   * startup or retry trigger queues one pass after it (which later such triggers share).
   */
  reconcile(trigger: ReconcileTrigger): Promise<ReconcileReport> {
    if (this.running === null) return this.start(trigger);
    if (trigger === "manual" || trigger === "periodic") return this.running;
    this.queued ??= this.running.catch(() => undefined).then(() => {
      this.queued = null;
      return this.start(trigger);
    });
    return this.queued;
  }

  /** Earliest time a failed item may be retried, ms since the epoch; null when nothing waits. */
  nextRetryAtMs(): number | null {
    let earliest: number | null = null;
    for (const entry of this.retries.values()) {
      if (entry.nextRetryAtMs !== null && (earliest === null || entry.nextRetryAtMs < earliest)) earliest = entry.nextRetryAtMs;
    }
    return earliest;
  }

  private start(trigger: ReconcileTrigger): Promise<ReconcileReport> {
    const id = `r-${this.deps.ids.randomHex(8)}`;
    this.runningId = id;
    const pass = this.pass(id, trigger).finally(() => {
      this.running = null;
      this.runningId = null;
    });
    this.running = pass;
    return pass;
  }

  private async pass(reconcileId: string, trigger: ReconcileTrigger): Promise<ReconcileReport> {
    const deps = this.deps;
    const startedAtMs = deps.clock.nowMs();
    const applied = await deps.store.getDesiredState();
    if (!applied) throw failedPrecondition("no desired state was ever applied to this node: nothing to reconcile against");
    if (applied.generation !== this.retryGeneration) {
      // A new document: what failed against the old one (terminal errors included) is tried afresh.
      this.retries.clear();
      this.retryGeneration = applied.generation;
    }
    const observed = await measureNode(deps);
    const plan = planReconcile(applied.document, observed, { generation: applied.generation, nowMs: startedAtMs });
    const results: ReconcileStepResult[] = [];
    const errors: ReconcileItemError[] = [...plan.errors];
    const blocked = new Map<string, string>();
    const poolsWithoutRevision = new Set(
      observed.tenants.flatMap((t) => t.pools.filter((p) => p.pool.currentRevision === "").map((p) => `${p.pool.tenantId}/${p.pool.poolId}`)),
    );

    const runStep = async (step: ReconcileStep): Promise<boolean> => {
      const began = deps.clock.nowMs();
      const blockedBy = scope(step.target).map((s) => blocked.get(s)).find((b) => b !== undefined);
      const poolKey = step.target.poolId === undefined ? null : `${step.target.tenantId}/${step.target.poolId}`;
      const result = (outcome: ReconcileStepResult["outcome"], message: string, createdInstanceId = ""): ReconcileStepResult => ({
        step,
        outcome,
        message,
        durationMs: deps.clock.nowMs() - began,
        createdInstanceId,
      });
      if (blockedBy !== undefined) {
        results.push(result("skipped", blockedBy));
        return false;
      }
      const key = stepKey(step);
      const retry = this.retries.get(key);
      if (retry && (!retry.retryable || (retry.nextRetryAtMs !== null && retry.nextRetryAtMs > began))) {
        const message = retry.retryable
          ? `in backoff after ${retry.attempt} failed attempt(s) until ${new Date(retry.nextRetryAtMs as number).toISOString()}: ${retry.message}`
          : `not retried (terminal error): ${retry.message}`;
        results.push(result("skipped", message));
        errors.push({ target: retry.target, field: retry.field, kind: retry.kind, message: retry.message, retryable: retry.retryable, attempt: retry.attempt, nextRetryAtMs: retry.nextRetryAtMs });
        this.blockAfter(step, blocked, poolsWithoutRevision, message);
        await this.noteNotBuilt(step, poolsWithoutRevision, message);
        return false;
      }
      try {
        const created = await this.take(step);
        this.retries.delete(key);
        if (step.kind === "build_pool" && poolKey !== null) poolsWithoutRevision.delete(poolKey);
        if (step.kind === "create_pool" && poolKey !== null && !(await deps.store.getPool(tenantId(step), step.target.poolId as string))?.currentRevision) {
          poolsWithoutRevision.add(poolKey);
        }
        results.push(result("succeeded", "", created));
        return true;
      } catch (error) {
        const kind = errorKind(error);
        const message = errorMessage(error);
        const retryable = !TERMINAL_KINDS.includes(kind);
        const attempt = (retry?.attempt ?? 0) + 1;
        const nextRetryAtMs = retryable ? deps.clock.nowMs() + this.delayMs(attempt) : null;
        const entry: RetryEntry = { attempt, kind, message, field: step.field, target: step.target, retryable, nextRetryAtMs };
        this.retries.set(key, entry);
        errors.push({ target: step.target, field: step.field, kind, message, retryable, attempt, nextRetryAtMs });
        results.push(result("failed", message));
        this.blockAfter(step, blocked, poolsWithoutRevision, `${describeStep(step).split(" (")[0]} failed: ${message}`);
        await setTargetCondition(deps, step.target, { type: RECONCILED, status: "false", reason: failureReason(kind), message }).catch(() => false);
        await this.noteNotBuilt(step, poolsWithoutRevision, message);
        return false;
      }
    };

    const runLane = async (lane: Lane): Promise<void> => {
      for (const step of lane) if (!(await runStep(step))) break;
    };

    // Tenants, pools and builds, in plan order; then the scaling steps; then the prune.
    const isScale = (s: ReconcileStep) => s.kind.endsWith("_instance") && s.kind !== "destroy_instance";
    const isPrune = (s: ReconcileStep) => s.kind === "delete_pool" || s.kind === "delete_tenant";
    for (const step of plan.steps.filter((s) => !isScale(s) && !isPrune(s))) await runStep(step);

    const byTenant = new Map<string, ReconcileStep[]>();
    for (const step of plan.steps.filter(isScale)) {
      const list = byTenant.get(step.target.tenantId) ?? [];
      list.push(step);
      byTenant.set(step.target.tenantId, list);
    }
    const limit = Math.max(1, this.options.concurrency ?? DEFAULT_RECONCILE_CONCURRENCY);
    const tenantWork: Array<() => Promise<void>> = [];
    for (const steps of byTenant.values()) {
      // One lane per instance (its chain: start then warm), one per instance to create. Within a tenant the lanes
      // take turns: the lifecycle use cases hold the tenant lock through a whole boot, and lanes waiting on it side
      // by side would only run into the lock's timeout. Capacity is freed first, so that the lanes that take it find
      // the quota free.
      const lanes = new Map<string, Lane>();
      steps.forEach((step, i) => {
        const laneKey = step.kind === "create_instance" ? `create#${i}` : targetPath(step.target);
        const lane = lanes.get(laneKey) ?? [];
        lane.push(step);
        lanes.set(laneKey, lane);
      });
      const all = [...lanes.values()];
      const ordered = [...all.filter((l) => FREES_CAPACITY.has((l[0] as ReconcileStep).kind)), ...all.filter((l) => !FREES_CAPACITY.has((l[0] as ReconcileStep).kind))];
      tenantWork.push(async () => {
        for (const lane of ordered) await runLane(lane);
      });
    }
    await bounded(tenantWork, limit);

    for (const step of plan.steps.filter(isPrune)) await runStep(step);

    if (this.options.idlePolicy) {
      try {
        await this.options.idlePolicy();
      } catch (error) {
        errors.push({ target: { tenantId: "" }, field: "", kind: errorKind(error), message: `idle policy: ${errorMessage(error)}`, retryable: true, attempt: 1, nextRetryAtMs: null });
      }
    }
    await this.clearRecoveredConditions(applied.document, errors);

    const report: ReconcileReport = {
      reconcileId,
      nodeId: observed.nodeId,
      generation: applied.generation,
      trigger,
      startedAtMs,
      finishedAtMs: deps.clock.nowMs(),
      results,
      errors,
      converged: errors.length === 0 && results.every((r) => r.outcome === "succeeded"),
    };
    this.last = report;
    for (const listener of this.listeners) {
      try {
        listener(report);
      } catch {
        // A listener's failure is its own; the pass is done.
      }
    }
    return report;
  }

  /** After a failed or skipped step: what else in the pass depends on it. */
  private blockAfter(step: ReconcileStep, blocked: Map<string, string>, poolsWithoutRevision: Set<string>, why: string): void {
    const poolKey = step.target.poolId === undefined ? null : `${step.target.tenantId}/${step.target.poolId}`;
    if (step.kind === "create_tenant") blocked.set(step.target.tenantId, `tenant ${step.target.tenantId} was not created: ${why}`);
    else if (step.kind === "create_pool" && poolKey) blocked.set(poolKey, `pool ${poolKey} was not created: ${why}`);
    else if (step.kind === "build_pool" && poolKey && poolsWithoutRevision.has(poolKey)) {
      blocked.set(poolKey, `pool ${poolKey} has no built revision (NotBuilt): no instance is created or started for it`);
    } else if (step.target.instanceId !== undefined) blocked.set(targetPath(step.target), why);
  }

  /** A pool left without a revision gets the `NotBuilt` condition rather than instances that cannot boot. */
  private async noteNotBuilt(step: ReconcileStep, poolsWithoutRevision: Set<string>, message: string): Promise<void> {
    if (step.kind !== "build_pool" || step.target.poolId === undefined) return;
    if (!poolsWithoutRevision.has(`${step.target.tenantId}/${step.target.poolId}`)) return;
    await setTargetCondition(this.deps, step.target, { type: NOT_BUILT, status: "true", reason: "BuildFailed", message }).catch(() => false);
  }

  /** Pools and instances of the document that had a failure condition and no error in this pass get it cleared. */
  private async clearRecoveredConditions(document: DesiredState, errors: readonly ReconcileItemError[]): Promise<void> {
    const failing = new Set(errors.flatMap((e) => scope(e.target)));
    for (const dt of document.tenants) {
      for (const dp of dt.pools) {
        const key = `${dt.tenantId}/${dp.poolId}`;
        if (failing.has(key)) continue;
        const pool: WorkerPool | null = await this.deps.store.getPool(dt.tenantId, dp.poolId).catch(() => null);
        if (!pool) continue;
        const target = { tenantId: dt.tenantId, poolId: dp.poolId };
        if (conditionStatus(pool.conditions, NOT_BUILT) === "true" && pool.currentRevision !== "") {
          await setTargetCondition(this.deps, target, { type: NOT_BUILT, status: "false", reason: "Built", message: `revision ${pool.currentRevision}` });
        }
        if (conditionStatus(pool.conditions, RECONCILED) === "false") {
          await setTargetCondition(this.deps, target, { type: RECONCILED, status: "true", reason: "Converged", message: "" });
        }
        const instances: Instance[] = await this.deps.store.listInstances(dt.tenantId, dp.poolId);
        for (const instance of instances) {
          if (conditionStatus(instance.conditions, RECONCILED) !== "false" || failing.has(`${key}/${instance.instanceId}`)) continue;
          await setTargetCondition(this.deps, { ...target, instanceId: instance.instanceId }, { type: RECONCILED, status: "true", reason: "Converged", message: "" });
        }
      }
    }
  }

  private delayMs(attempt: number): number {
    const base = this.options.backoffBaseMs ?? DEFAULT_BACKOFF_BASE_MS;
    const max = this.options.backoffMaxMs ?? DEFAULT_BACKOFF_MAX_MS;
    const random = this.options.random ?? Math.random;
    const raw = Math.min(max, base * 2 ** (attempt - 1));
    return Math.round(raw * (0.8 + 0.4 * random()));
  }

  /** Takes one step; returns the ID of an instance it created ("" otherwise). */
  private async take(step: ReconcileStep): Promise<string> {
    const deps = this.deps;
    const { tenantId } = step.target;
    const poolId = step.target.poolId as string;
    const instanceKey = () => ({ tenantId, poolId, instanceId: step.target.instanceId as string });
    switch (step.kind) {
      case "create_tenant": {
        const t = step.tenant;
        try {
          await createTenant(deps, { tenantId, quotas: t.quotas, labels: t.labels, ...(t.network ? { network: t.network } : {}) });
        } catch (error) {
          if (!(isMvmError(error) && error.kind === "already_exists")) throw error;
        }
        return "";
      }
      case "update_tenant":
        await updateTenant(deps, { tenantId, ...step.changes });
        return "";
      case "delete_tenant":
        await pruneTenant(deps, tenantId);
        return "";
      case "create_pool":
        try {
          await createPool(deps, { tenantId, poolId }, specOf(step.pool));
        } catch (error) {
          if (!(isMvmError(error) && error.kind === "already_exists")) throw error;
          await updatePool(deps, { tenantId, poolId }, specOf(step.pool));
        }
        return "";
      case "update_pool":
        await updatePool(deps, { tenantId, poolId }, specOf(step.pool));
        return "";
      case "delete_pool":
        await destroyPoolCompletely(deps, { tenantId, poolId }, true);
        return "";
      case "build_pool":
        await buildPool(deps, { tenantId, poolId });
        return "";
      case "create_instance": {
        const pool = await deps.store.getPool(tenantId, poolId);
        if (!pool?.currentRevision) {
          throw failedPrecondition(`pool ${tenantId}/${poolId} has no built revision (NotBuilt): no instance is created for it`);
        }
        const instance = await createInstance(deps, { tenantId, poolId });
        const key = { tenantId, poolId, instanceId: instance.instanceId };
        try {
          await startInstance(deps, key);
          if (step.goal === "warm") await warmInstance(deps, key);
          if (step.goal === "sleeping") await sleepInstance(deps, key);
        } catch (error) {
          throw new MvmError(errorKind(error), `created ${instance.instanceId}, then: ${errorMessage(error)}`, isMvmError(error) ? error.violations : [], { cause: error });
        }
        return instance.instanceId;
      }
      case "start_instance":
        await startInstance(deps, instanceKey());
        return "";
      case "resume_instance":
        await resumeInstance(deps, instanceKey());
        return "";
      case "wake_instance":
        await wakeInstance(deps, instanceKey());
        return "";
      // A parked instance (idle-mark.ts) counted in its old class may be the surplus this step moves: reconcile
      // takes it over first, so that the next pass sees it where it really is, even if this step is refused.
      case "warm_instance":
        await clearIdleMark(deps, instanceKey());
        await warmInstance(deps, instanceKey());
        return "";
      case "sleep_instance":
        await clearIdleMark(deps, instanceKey());
        await sleepInstance(deps, instanceKey());
        return "";
      case "stop_instance":
        await stopInstance(deps, instanceKey());
        return "";
      case "destroy_instance":
        await destroyInstance(deps, instanceKey());
        return "";
      case "set_condition":
        await setTargetCondition(deps, step.target, step.condition);
        return "";
    }
  }
}
