// The vocabulary of a reconcile pass (SPEC §9): the steps a plan is made of, the per-item errors it records, and
// the report of an executed pass. Each step names one object, says why it is needed in words a person reads, and
// carries what the executor needs to take it; taking a step is idempotent (the use cases behind it measure first).

import type { DesiredPool, DesiredTenant } from "../desired-state.js";
import type { MvmErrorKind } from "../errors.js";
import type { ConditionStatus, TenantQuota } from "../model.js";

export const STEP_KINDS = [
  "create_tenant",
  "update_tenant",
  "delete_tenant",
  "create_pool",
  "update_pool",
  "delete_pool",
  "build_pool",
  "create_instance",
  "start_instance",
  "resume_instance",
  "wake_instance",
  "warm_instance",
  "sleep_instance",
  "stop_instance",
  "destroy_instance",
  "set_condition",
] as const;
export type StepKind = (typeof STEP_KINDS)[number];

/** The object a step or an error concerns: a tenant, a pool (poolId set) or an instance (instanceId set too). */
export interface StepTarget {
  tenantId: string;
  poolId?: string;
  instanceId?: string;
}

/** Where a freshly created instance is taken in the same step. */
export type InstanceGoal = "running" | "warm" | "sleeping";

/** Changes to an existing tenant; absent parts stay as they are. */
export interface TenantChanges {
  quotas?: TenantQuota;
  /** Labels to set; a key mapped to null is removed. */
  labels?: Record<string, string | null>;
  network?: { netId: number; ipv4Subnet: string };
}

export interface ConditionChange {
  type: string;
  status: ConditionStatus;
  reason: string;
  message: string;
}

interface StepBase {
  target: StepTarget;
  /** Why the step is needed, lower-case: `pool wants 2 running, has 1; cheapest: stopped → running`. */
  reason: string;
  /** Path in the desired-state document that asks for the step (`tenants[0].pools[1]`); "" for a prune. */
  field: string;
}

export type ReconcileStep = StepBase &
  (
    | { kind: "create_tenant"; tenant: DesiredTenant }
    | { kind: "update_tenant"; changes: TenantChanges }
    | { kind: "create_pool" | "update_pool"; pool: DesiredPool }
    | { kind: "create_instance"; goal: InstanceGoal }
    | { kind: "set_condition"; condition: ConditionChange }
    | {
        kind: Exclude<StepKind, "create_tenant" | "update_tenant" | "create_pool" | "update_pool" | "create_instance" | "set_condition">;
      }
  );

/** A failure on one item. `retryable` false: a later pass will not try the item again until the document changes. */
export interface ReconcileItemError {
  target: StepTarget;
  field: string;
  kind: MvmErrorKind;
  message: string;
  retryable: boolean;
  /** Consecutive failed attempts, from 1; 0 for a problem found while planning. */
  attempt: number;
  /** When the item is retried next, ms since the epoch; null when not retryable or found while planning. */
  nextRetryAtMs: number | null;
}

export interface ReconcilePlan {
  nodeId: string;
  /** Generation of the document planned against; 0 for a document given inline. */
  generation: number;
  steps: ReconcileStep[];
  /** Items that cannot converge now, found while planning. */
  errors: ReconcileItemError[];
  computedAtMs: number;
}

export type StepOutcome = "succeeded" | "failed" | "skipped";

export interface ReconcileStepResult {
  step: ReconcileStep;
  outcome: StepOutcome;
  /** Lower-case; "" when the step succeeded. */
  message: string;
  durationMs: number;
  /** The instance a `create_instance` step made; "" otherwise. */
  createdInstanceId: string;
}

export const RECONCILE_TRIGGERS = ["apply", "manual", "periodic", "startup", "retry", "event"] as const;
export type ReconcileTrigger = (typeof RECONCILE_TRIGGERS)[number];

export interface ReconcileReport {
  reconcileId: string;
  nodeId: string;
  generation: number;
  trigger: ReconcileTrigger;
  startedAtMs: number;
  finishedAtMs: number;
  results: ReconcileStepResult[];
  errors: ReconcileItemError[];
  /** Every step succeeded and no item error remains. */
  converged: boolean;
}

export function targetPath(t: StepTarget): string {
  return [t.tenantId, t.poolId, t.instanceId].filter((s) => s !== undefined).join("/");
}

const VERBS: Record<StepKind, string> = {
  create_tenant: "create tenant",
  update_tenant: "update tenant",
  delete_tenant: "delete tenant",
  create_pool: "create pool",
  update_pool: "update pool",
  delete_pool: "delete pool",
  build_pool: "build pool",
  create_instance: "create instance in",
  start_instance: "start",
  resume_instance: "resume",
  wake_instance: "wake",
  warm_instance: "warm",
  sleep_instance: "sleep",
  stop_instance: "stop",
  destroy_instance: "destroy",
  set_condition: "set condition on",
};

/**
 * The same line for a step known only by kind, target path and reason (as an agent's plan reaches a coordinator);
 * an unknown kind (from a newer agent) reads as its raw name.
 */
export function describeStepParts(kind: string, target: string, reason: string): string {
  const verb = (VERBS as Record<string, string>)[kind] ?? kind;
  return `${verb} ${target || "node"} (${reason})`;
}

/** One line a person reads: `start acme/web/i-1a2b3c4d (pool wants 2 running, has 1; cheapest: stopped → running)`. */
export function describeStep(step: ReconcileStep): string {
  const what = step.kind === "set_condition" ? `${VERBS[step.kind]} ${targetPath(step.target)}: ${step.condition.type}=${step.condition.status}` : `${VERBS[step.kind]} ${targetPath(step.target)}`;
  return `${what} (${step.reason})`;
}
