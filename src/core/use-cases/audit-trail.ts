// Runs a use case and writes what happened to the tenant's audit log: success, failure with the reason, and a
// separate quota_reject entry when a quota refused it (SPEC §10.3). Refusals that touched nothing and name nothing
// that exists (invalid input, not found, already exists) are not audited: there may be no tenant to write to, and a
// refused call must leave no trace on disk.

import { isMvmError } from "../errors.js";
import { isValidId } from "../ids.js";
import type { AuditAction, AuditActor, AuditOutcome } from "../observability-ports.js";
import type { RecordDeps } from "./deps.js";

export const LOCAL_ACTOR: AuditActor = { kind: "local", id: "local" };

export interface AuditedAction {
  /** The tenant whose log receives the entry; "" for the node-level log. */
  tenantId: string;
  action: AuditAction;
  target: string;
  details?: Record<string, string>;
  /**
   * Which log an outcome goes to when the tenant's own log cannot hold it: a tenant that failed to be created, or one
   * that was just deleted, has no directory any more, so those entries go to the node-level log. Default "tenant".
   */
  successLog?: "tenant" | "node";
  failureLog?: "tenant" | "node";
}

const UNAUDITED_KINDS = new Set(["invalid", "not_found", "already_exists"]);

export async function audited<T>(deps: RecordDeps, what: AuditedAction, run: () => Promise<T>): Promise<T> {
  const log = deps.audit;
  if (!log || (what.tenantId !== "" && !isValidId(what.tenantId))) return run();
  const startedMs = deps.clock.nowMs();
  const timed = (outcome: AuditOutcome) =>
    deps.operations?.finished({
      tenantId: what.tenantId,
      action: what.action,
      target: what.target,
      outcome,
      durationMs: deps.clock.nowMs() - startedMs,
      details: what.details ?? {},
    });
  const actor = deps.actor ?? LOCAL_ACTOR;
  const base = { tenantId: what.tenantId, actor, action: what.action, target: what.target, details: what.details ?? {} };
  const logFor = (choice: "tenant" | "node" | undefined) => (choice === "node" ? "" : what.tenantId);
  let result: T;
  try {
    result = await run();
  } catch (error) {
    if (isMvmError(error) && UNAUDITED_KINDS.has(error.kind)) throw error;
    const reason = error instanceof Error ? error.message : String(error);
    const outcome = isMvmError(error) && error.kind === "permission_denied" ? "denied" : "failure";
    const tenantId = logFor(what.failureLog);
    timed(outcome);
    await log.append({ ...base, tenantId, outcome, reason });
    if (isMvmError(error) && error.kind === "exhausted" && /quota/.test(error.message)) {
      await log.append({ ...base, tenantId, action: "quota_reject", outcome: "denied", reason, details: { ...base.details, refused: what.action } });
    }
    throw error;
  }
  timed("success");
  await log.append({ ...base, tenantId: logFor(what.successLog), outcome: "success", reason: "" });
  return result;
}
