// Audit entries ↔ mvm.v1.AuditEntry. The domain names a target as a path (`tenant`, `tenant/pool`,
// `tenant/pool/instance`, or `node/<id>` for node-level entries); the contract as a ResourceRef.

import { create } from "@bufbuild/protobuf";
import type { AuditEntry } from "../../core/observability-ports.js";
import { AuditActorSchema, AuditEntrySchema, type AuditEntry as ProtoAuditEntry } from "../../../gen/mvm/v1/audit_pb.js";
import { ResourceRefSchema, type ResourceRef } from "../../../gen/mvm/v1/common_pb.js";
import {
  actorKindFromProto,
  actorKindToProto,
  auditActionFromProto,
  auditActionToProto,
  auditOutcomeFromProto,
  auditOutcomeToProto,
} from "./enums.js";
import { isoToTimestamp, requiredTimestampToIso } from "./timestamps.js";

export function targetToResourceRef(target: string): ResourceRef {
  if (target.startsWith("node/")) return create(ResourceRefSchema, { ref: { case: "node", value: { nodeId: target.slice(5) } } });
  const parts = target.split("/");
  switch (parts.length) {
    case 1:
      return target === ""
        ? create(ResourceRefSchema)
        : create(ResourceRefSchema, { ref: { case: "tenant", value: { tenantId: target } } });
    case 2:
      return create(ResourceRefSchema, { ref: { case: "pool", value: { tenantId: parts[0], poolId: parts[1] } } });
    default:
      return create(ResourceRefSchema, {
        ref: { case: "instance", value: { tenantId: parts[0], poolId: parts[1], instanceId: parts.slice(2).join("/") } },
      });
  }
}

export function resourceRefToTarget(ref: ResourceRef | undefined): string {
  switch (ref?.ref.case) {
    case "node":
      return `node/${ref.ref.value.nodeId}`;
    case "tenant":
      return ref.ref.value.tenantId;
    case "pool":
      return `${ref.ref.value.tenantId}/${ref.ref.value.poolId}`;
    case "instance":
      return `${ref.ref.value.tenantId}/${ref.ref.value.poolId}/${ref.ref.value.instanceId}`;
    default:
      return "";
  }
}

export function auditEntryToProto(e: AuditEntry): ProtoAuditEntry {
  return create(AuditEntrySchema, {
    seq: BigInt(e.seq),
    at: isoToTimestamp(e.at),
    tenantId: e.tenantId,
    // The domain keeps the request id, when there is one, among the details.
    actor: create(AuditActorSchema, { kind: actorKindToProto(e.actor.kind), identity: e.actor.id, requestId: e.details.request_id ?? "" }),
    action: auditActionToProto(e.action),
    target: targetToResourceRef(e.target),
    outcome: auditOutcomeToProto(e.outcome),
    reason: e.reason,
    details: { ...e.details },
    prevHash: e.prevHash,
    hash: e.hash,
  });
}

export function auditEntryFromProto(e: ProtoAuditEntry): AuditEntry {
  return {
    seq: Number(e.seq),
    at: requiredTimestampToIso(e.at),
    tenantId: e.tenantId,
    actor: { kind: actorKindFromProto(e.actor?.kind ?? 0), id: e.actor?.identity ?? "" },
    action: auditActionFromProto(e.action) ?? "tenant_create",
    target: resourceRefToTarget(e.target),
    outcome: auditOutcomeFromProto(e.outcome),
    reason: e.reason,
    details: { ...e.details },
    prevHash: e.prevHash,
    hash: e.hash,
  };
}
