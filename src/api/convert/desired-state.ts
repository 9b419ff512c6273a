// Desired state, plans and reconcile reports between the domain (core/desired-state.ts, core/reconcile/steps.ts) and
// the contract (desired_state.proto, reconcile.proto); and the document digest the contract defines: SHA-256 of the
// canonical binary form.

import { createHash } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { DesiredState } from "../../core/desired-state.js";
import type { MvmErrorKind } from "../../core/errors.js";
import type { WorkerPool } from "../../core/model.js";
import type {
  ReconcileItemError,
  ReconcilePlan,
  ReconcileReport,
  ReconcileStep,
  ReconcileTrigger,
  StepKind,
  StepOutcome,
  StepTarget,
} from "../../core/reconcile/steps.js";
import { ResourceRefSchema, type ResourceRef } from "../../../gen/mvm/v1/common_pb.js";
import { DesiredPoolSchema, DesiredStateSchema, DesiredTenantSchema, type DesiredState as ProtoDesiredState } from "../../../gen/mvm/v1/desired_state_pb.js";
import { ErrorKind } from "../../../gen/mvm/v1/errors_pb.js";
import {
  ReconcileActionKind,
  ReconcileActionOutcome,
  ReconcileActionResultSchema,
  ReconcileActionSchema,
  ReconcileItemErrorSchema,
  ReconcilePlanSchema,
  ReconcileReportSchema,
  ReconcileTrigger as ProtoReconcileTrigger,
  type ReconcileAction,
  type ReconcileItemError as ProtoReconcileItemError,
  type ReconcilePlan as ProtoReconcilePlan,
  type ReconcileReport as ProtoReconcileReport,
} from "../../../gen/mvm/v1/reconcile_pb.js";
import { TenantNetworkSchema } from "../../../gen/mvm/v1/tenant_pb.js";
import { poolSpecToProto } from "./pool.js";
import { quotaToProto } from "./tenant.js";

function sortedRecord(r: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(r).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

export function desiredStateToProto(doc: DesiredState): ProtoDesiredState {
  return create(DesiredStateSchema, {
    schemaVersion: doc.schemaVersion,
    nodeId: doc.nodeId,
    pruneUnknownTenants: doc.pruneUnknownTenants,
    pruneUnknownPools: doc.pruneUnknownPools,
    tenants: doc.tenants.map((t) =>
      create(DesiredTenantSchema, {
        tenantId: t.tenantId,
        ...(t.network ? { network: create(TenantNetworkSchema, { netId: t.network.netId, ipv4Subnet: t.network.ipv4Subnet }) } : {}),
        quotas: quotaToProto(t.quotas),
        labels: sortedRecord(t.labels),
        secretsHash: t.secretsHash,
        pools: t.pools.map((p) => {
          const image = p.image.kind === "debian" ? { ...p.image, extraFiles: sortedRecord(p.image.extraFiles) } : p.image;
          return create(DesiredPoolSchema, { poolId: p.poolId, spec: poolSpecToProto({ ...p, image, tenantId: t.tenantId } as unknown as WorkerPool) });
        }),
      }),
    ),
  });
}

/**
 * Lowercase hex SHA-256 of the document's binary form. The form is canonical for one document: the parser fills in
 * every default, fields are written in field-number order and map entries sorted by key.
 */
export function desiredStateDigest(doc: DesiredState): string {
  return createHash("sha256").update(toBinary(DesiredStateSchema, desiredStateToProto(doc))).digest("hex");
}

const ACTION_KINDS: Record<StepKind, ReconcileActionKind> = {
  create_tenant: ReconcileActionKind.CREATE_TENANT,
  update_tenant: ReconcileActionKind.UPDATE_TENANT,
  delete_tenant: ReconcileActionKind.DELETE_TENANT,
  create_pool: ReconcileActionKind.CREATE_POOL,
  update_pool: ReconcileActionKind.UPDATE_POOL,
  delete_pool: ReconcileActionKind.DELETE_POOL,
  build_pool: ReconcileActionKind.BUILD_POOL,
  create_instance: ReconcileActionKind.CREATE_INSTANCE,
  start_instance: ReconcileActionKind.START_INSTANCE,
  resume_instance: ReconcileActionKind.RESUME_INSTANCE,
  wake_instance: ReconcileActionKind.WAKE_INSTANCE,
  warm_instance: ReconcileActionKind.WARM_INSTANCE,
  sleep_instance: ReconcileActionKind.SLEEP_INSTANCE,
  stop_instance: ReconcileActionKind.STOP_INSTANCE,
  destroy_instance: ReconcileActionKind.DESTROY_INSTANCE,
  set_condition: ReconcileActionKind.SET_CONDITION,
};

const ERROR_KINDS: Record<MvmErrorKind, ErrorKind> = {
  invalid: ErrorKind.INVALID,
  not_found: ErrorKind.NOT_FOUND,
  already_exists: ErrorKind.ALREADY_EXISTS,
  failed_precondition: ErrorKind.FAILED_PRECONDITION,
  exhausted: ErrorKind.EXHAUSTED,
  unavailable: ErrorKind.UNAVAILABLE,
  permission_denied: ErrorKind.PERMISSION_DENIED,
  terminal: ErrorKind.TERMINAL,
  internal: ErrorKind.INTERNAL,
};

const OUTCOMES: Record<StepOutcome, ReconcileActionOutcome> = {
  succeeded: ReconcileActionOutcome.SUCCEEDED,
  failed: ReconcileActionOutcome.FAILED,
  skipped: ReconcileActionOutcome.SKIPPED,
};

const TRIGGERS: Record<ReconcileTrigger, ProtoReconcileTrigger> = {
  apply: ProtoReconcileTrigger.APPLY,
  manual: ProtoReconcileTrigger.MANUAL,
  periodic: ProtoReconcileTrigger.PERIODIC,
  startup: ProtoReconcileTrigger.STARTUP,
  retry: ProtoReconcileTrigger.RETRY,
  event: ProtoReconcileTrigger.EVENT,
};

const STEP_KINDS_BY_ACTION = new Map<ReconcileActionKind, StepKind>(
  (Object.entries(ACTION_KINDS) as [StepKind, ReconcileActionKind][]).map(([step, action]) => [action, step]),
);

/** The step kind of a plan action as an agent sent it; null for a kind this build does not know. */
export function stepKindFromProto(kind: ReconcileActionKind): StepKind | null {
  return STEP_KINDS_BY_ACTION.get(kind) ?? null;
}

export function targetToProto(t: StepTarget): ResourceRef {
  if (t.instanceId !== undefined) {
    return create(ResourceRefSchema, { ref: { case: "instance", value: { tenantId: t.tenantId, poolId: t.poolId ?? "", instanceId: t.instanceId } } });
  }
  if (t.poolId !== undefined) return create(ResourceRefSchema, { ref: { case: "pool", value: { tenantId: t.tenantId, poolId: t.poolId } } });
  if (t.tenantId === "") return create(ResourceRefSchema, { ref: { case: "node", value: {} } });
  return create(ResourceRefSchema, { ref: { case: "tenant", value: { tenantId: t.tenantId } } });
}

export function stepToProto(step: ReconcileStep): ReconcileAction {
  return create(ReconcileActionSchema, { kind: ACTION_KINDS[step.kind], target: targetToProto(step.target), reason: step.reason, field: step.field });
}

export function itemErrorToProto(e: ReconcileItemError): ProtoReconcileItemError {
  return create(ReconcileItemErrorSchema, {
    target: targetToProto(e.target),
    field: e.field,
    kind: ERROR_KINDS[e.kind],
    message: e.message,
    retryable: e.retryable,
    attempt: e.attempt,
    ...(e.nextRetryAtMs === null ? {} : { nextRetryAt: timestampFromMs(e.nextRetryAtMs) }),
  });
}

export function planToProto(plan: ReconcilePlan): ProtoReconcilePlan {
  return create(ReconcilePlanSchema, {
    nodeId: plan.nodeId,
    generation: BigInt(plan.generation),
    actions: plan.steps.map(stepToProto),
    errors: plan.errors.map(itemErrorToProto),
    computedAt: timestampFromMs(plan.computedAtMs),
  });
}

export function reportToProto(r: ReconcileReport): ProtoReconcileReport {
  return create(ReconcileReportSchema, {
    reconcileId: r.reconcileId,
    nodeId: r.nodeId,
    generation: BigInt(r.generation),
    trigger: TRIGGERS[r.trigger],
    startedAt: timestampFromMs(r.startedAtMs),
    finishedAt: timestampFromMs(r.finishedAtMs),
    results: r.results.map((res) =>
      create(ReconcileActionResultSchema, {
        action: stepToProto(res.step),
        outcome: OUTCOMES[res.outcome],
        message: res.message,
        duration: durationFromMs(res.durationMs),
      }),
    ),
    errors: r.errors.map(itemErrorToProto),
    converged: r.converged,
  });
}
