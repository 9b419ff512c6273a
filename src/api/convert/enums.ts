// Closed sets between the domain's string unions and the contract's enums. On input, `*_UNSPECIFIED` means "the
// default" (undefined here) and a number outside the enum is a violation naming the field; on output the
// UNSPECIFIED value is never produced for a known domain value.

import type { FieldViolation } from "../../core/errors.js";
import {
  INSTANCE_STATUSES,
  type Compression,
  type ConditionStatus,
  type HypervisorChoice,
  type HypervisorKind,
  type InstanceStatus,
  type SeccompPolicy,
} from "../../core/model.js";
import { AUDIT_ACTIONS, type ActorKind, type AuditAction, type AuditOutcome } from "../../core/observability-ports.js";
import type { Operation } from "../../core/state-machine.js";
import {
  ActorKind as ProtoActorKind,
  AuditAction as ProtoAuditAction,
  AuditOutcome as ProtoAuditOutcome,
} from "../../../gen/mvm/v1/audit_pb.js";
import {
  Compression as ProtoCompression,
  ConditionStatus as ProtoConditionStatus,
  Hypervisor as ProtoHypervisor,
  SeccompPolicy as ProtoSeccompPolicy,
} from "../../../gen/mvm/v1/common_pb.js";
import { InstanceOperation as ProtoInstanceOperation } from "../../../gen/mvm/v1/errors_pb.js";
import { InstanceStatus as ProtoInstanceStatus } from "../../../gen/mvm/v1/instance_pb.js";

function invert<K extends string, V extends number>(map: Readonly<Record<K, V>>): Map<number, K> {
  return new Map(Object.entries(map).map(([k, v]) => [v as number, k as K]));
}

function fromProto<K extends string>(
  table: Map<number, K>,
  value: number,
  field: string,
  accepted: string,
  violations: FieldViolation[],
): K | undefined {
  if (value === 0) return undefined;
  const known = table.get(value);
  if (known === undefined) violations.push({ field, rule: `must be one of ${accepted} (got ${value})` });
  return known;
}

// ── Instance status ─────────────────────────────────────────────────────────────────────────────────────────────
// The proto enum lists the statuses in the domain's order, starting at 1.

export function instanceStatusToProto(status: InstanceStatus): ProtoInstanceStatus {
  return (INSTANCE_STATUSES.indexOf(status) + 1) as ProtoInstanceStatus;
}

/** The domain status of an enum value, or undefined for UNSPECIFIED and unknown values. */
export function instanceStatusFromProto(value: ProtoInstanceStatus): InstanceStatus | undefined {
  return INSTANCE_STATUSES[value - 1];
}

// ── Hypervisor ──────────────────────────────────────────────────────────────────────────────────────────────────

const HYPERVISOR_TO_PROTO: Readonly<Record<HypervisorChoice, ProtoHypervisor>> = {
  auto: ProtoHypervisor.AUTO,
  firecracker: ProtoHypervisor.FIRECRACKER,
  qemu: ProtoHypervisor.QEMU,
};
const HYPERVISOR_FROM_PROTO = invert(HYPERVISOR_TO_PROTO);

export function hypervisorToProto(h: HypervisorChoice): ProtoHypervisor {
  return HYPERVISOR_TO_PROTO[h];
}

export function hypervisorChoiceFromProto(value: ProtoHypervisor, field: string, violations: FieldViolation[]): HypervisorChoice | undefined {
  return fromProto(HYPERVISOR_FROM_PROTO, value, field, "HYPERVISOR_AUTO, HYPERVISOR_FIRECRACKER, HYPERVISOR_QEMU", violations);
}

/** What a running VMM reports: never AUTO. */
export function hypervisorKindFromProto(value: ProtoHypervisor): HypervisorKind {
  return value === ProtoHypervisor.FIRECRACKER ? "firecracker" : "qemu";
}

// ── Seccomp, compression, condition status ──────────────────────────────────────────────────────────────────────

const SECCOMP_TO_PROTO: Readonly<Record<SeccompPolicy, ProtoSeccompPolicy>> = {
  default: ProtoSeccompPolicy.DEFAULT,
  strict: ProtoSeccompPolicy.STRICT,
};
const SECCOMP_FROM_PROTO = invert(SECCOMP_TO_PROTO);

export function seccompPolicyToProto(p: SeccompPolicy): ProtoSeccompPolicy {
  return SECCOMP_TO_PROTO[p];
}

export function seccompPolicyFromProto(value: ProtoSeccompPolicy, field: string, violations: FieldViolation[]): SeccompPolicy | undefined {
  return fromProto(SECCOMP_FROM_PROTO, value, field, "SECCOMP_POLICY_DEFAULT, SECCOMP_POLICY_STRICT", violations);
}

const COMPRESSION_TO_PROTO: Readonly<Record<Compression, ProtoCompression>> = {
  none: ProtoCompression.NONE,
  lz4: ProtoCompression.LZ4,
  zstd: ProtoCompression.ZSTD,
};
const COMPRESSION_FROM_PROTO = invert(COMPRESSION_TO_PROTO);

export function compressionToProto(c: Compression): ProtoCompression {
  return COMPRESSION_TO_PROTO[c];
}

export function compressionFromProto(value: ProtoCompression, field: string, violations: FieldViolation[]): Compression | undefined {
  return fromProto(COMPRESSION_FROM_PROTO, value, field, "COMPRESSION_NONE, COMPRESSION_LZ4, COMPRESSION_ZSTD", violations);
}

const CONDITION_STATUS_TO_PROTO: Readonly<Record<ConditionStatus, ProtoConditionStatus>> = {
  true: ProtoConditionStatus.TRUE,
  false: ProtoConditionStatus.FALSE,
  unknown: ProtoConditionStatus.UNKNOWN,
};
const CONDITION_STATUS_FROM_PROTO = invert(CONDITION_STATUS_TO_PROTO);

export function conditionStatusToProto(s: ConditionStatus): ProtoConditionStatus {
  return CONDITION_STATUS_TO_PROTO[s];
}

export function conditionStatusFromProto(value: ProtoConditionStatus): ConditionStatus {
  return CONDITION_STATUS_FROM_PROTO.get(value) ?? "unknown";
}

// ── Audit ───────────────────────────────────────────────────────────────────────────────────────────────────────
// core's AUDIT_ACTIONS lists the actions in the proto enum's order, starting at 1.

export function auditActionToProto(action: AuditAction): ProtoAuditAction {
  return (AUDIT_ACTIONS.indexOf(action) + 1) as ProtoAuditAction;
}

export function auditActionFromProto(value: ProtoAuditAction): AuditAction | undefined {
  return AUDIT_ACTIONS[value - 1];
}

const OUTCOME_TO_PROTO: Readonly<Record<AuditOutcome, ProtoAuditOutcome>> = {
  success: ProtoAuditOutcome.SUCCESS,
  failure: ProtoAuditOutcome.FAILURE,
  denied: ProtoAuditOutcome.DENIED,
};
const OUTCOME_FROM_PROTO = invert(OUTCOME_TO_PROTO);

export function auditOutcomeToProto(o: AuditOutcome): ProtoAuditOutcome {
  return OUTCOME_TO_PROTO[o];
}

export function auditOutcomeFromProto(value: ProtoAuditOutcome): AuditOutcome {
  return OUTCOME_FROM_PROTO.get(value) ?? "failure";
}

const ACTOR_KIND_TO_PROTO: Readonly<Record<ActorKind, ProtoActorKind>> = {
  admin: ProtoActorKind.ADMIN,
  coordinator: ProtoActorKind.COORDINATOR,
  tenant: ProtoActorKind.TENANT,
  node: ProtoActorKind.NODE,
  local: ProtoActorKind.LOCAL,
  system: ProtoActorKind.SYSTEM,
};
const ACTOR_KIND_FROM_PROTO = invert(ACTOR_KIND_TO_PROTO);

export function actorKindToProto(k: ActorKind): ProtoActorKind {
  return ACTOR_KIND_TO_PROTO[k];
}

export function actorKindFromProto(value: ProtoActorKind): ActorKind {
  return ACTOR_KIND_FROM_PROTO.get(value) ?? "system";
}

// ── State machine operations (error details) ────────────────────────────────────────────────────────────────────

const OPERATION_TO_PROTO: Readonly<Record<Exclude<Operation, "bind">, ProtoInstanceOperation>> = {
  start: ProtoInstanceOperation.START,
  stop: ProtoInstanceOperation.STOP,
  warm: ProtoInstanceOperation.WARM,
  resume: ProtoInstanceOperation.RESUME,
  sleep: ProtoInstanceOperation.SLEEP,
  wake: ProtoInstanceOperation.WAKE,
  destroy: ProtoInstanceOperation.DESTROY,
};

/** `bind` is internal to the first start and has no contract value. */
export function instanceOperationToProto(op: Operation): ProtoInstanceOperation {
  return op === "bind" ? ProtoInstanceOperation.UNSPECIFIED : OPERATION_TO_PROTO[op];
}
