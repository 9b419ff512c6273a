// Ports through which use cases report what they did: the per-tenant audit log (SPEC §10.3) and instance change
// events (for WatchInstances). Adapters: src/runtime/audit (hash-chained files), src/core/watch-hub.ts (in memory).

import type { Instance, Timestamp } from "./model.js";

/** Every action mvm audits; mirrors `mvm.v1.AuditAction` (lower snake case of the enum names). */
export const AUDIT_ACTIONS = [
  "tenant_create",
  "tenant_update",
  "tenant_delete",
  "tenant_secrets_rotate",
  "pool_create",
  "pool_update",
  "pool_delete",
  "pool_scale",
  "pool_build_start",
  "pool_build_finish",
  "pool_rollback",
  "instance_create",
  "instance_start",
  "instance_stop",
  "instance_warm",
  "instance_resume",
  "instance_sleep",
  "instance_wake",
  "instance_destroy",
  "instance_exec",
  "instance_adopt",
  "snapshot_create",
  "snapshot_restore",
  "snapshot_delete",
  "quota_reject",
  "permission_deny",
  "certificate_ca_init",
  "certificate_issue",
  "certificate_rotate",
  "desired_state_apply",
  "garbage_collect",
  "network_repair",
] as const;
export type AuditAction = (typeof AUDIT_ACTIONS)[number];

export type AuditOutcome = "success" | "failure" | "denied";

export type ActorKind = "admin" | "coordinator" | "tenant" | "node" | "local" | "system";

export interface AuditActor {
  kind: ActorKind;
  /** SPIFFE ID for remote callers, `local:<user>` for the CLI, `system:<loop>` for the agent's own loops. */
  id: string;
}

/** What a caller hands to the log; the log adds sequence number, time and the hash chain. */
export interface AuditRecord {
  tenantId: string;
  actor: AuditActor;
  action: AuditAction;
  /** `tenant`, `tenant/pool` or `tenant/pool/instance`. */
  target: string;
  outcome: AuditOutcome;
  /** Why it failed or was denied; empty on success. */
  reason: string;
  details: Record<string, string>;
}

export interface AuditEntry extends AuditRecord {
  /** 1-based, per tenant, without gaps. */
  seq: number;
  at: Timestamp;
  /** Hash of the previous entry (64 zeros for the first, as `mvm.v1.AuditEntry.prev_hash` says). */
  prevHash: string;
  /** sha256 hex over the canonical JSON of this entry without `hash`. */
  hash: string;
}

export interface AuditLog {
  append(record: AuditRecord): Promise<AuditEntry>;
}

/** One audited operation as it finished: what, on what, how it ended and how long it took. */
export interface OperationTiming {
  tenantId: string;
  action: AuditAction;
  target: string;
  outcome: AuditOutcome;
  durationMs: number;
  /** The audit entry's details (`retry: wake_hook` marks a wake that only asked a running guest again). */
  details: Record<string, string>;
}

/** One phase of a successful wake: `prepare` (checks, snapshot hash, network, cgroup, disks), `restore` (VMM start
 * to guest running), `guest` (the guest's wake hook until it answered). */
export interface OperationPhase {
  action: AuditAction;
  target: string;
  phase: "prepare" | "restore" | "guest";
  hypervisor: string;
  durationMs: number;
}

/** Receives the timing of every audited operation (the agent turns boot, wake and sleep times into metrics). */
export interface OperationObserver {
  finished(timing: OperationTiming): void;
  /** Where the time of a successful wake went, phase by phase. */
  phase?(phase: OperationPhase): void;
}

export type InstanceEvent = { kind: "upsert"; instance: Instance } | { kind: "deleted"; instance: Instance };

export interface InstanceEventSink {
  publish(event: InstanceEvent): void;
}
