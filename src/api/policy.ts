// Per-resource authorization (SPEC §8.2): admin, coordinator and local callers may act on every tenant; a tenant
// identity only on its own. Handlers ask before they read or change anything, so a refused call has no effect and
// does not reveal whether the other tenant's object exists. Every refusal is audited (`permission_deny`, node log).

import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import type { AuditLog } from "../core/observability-ports.js";
import { actorOf, auditDenial, callerOf, describeCaller, REQUEST_ID_KEY, type Caller } from "./auth.js";

/** The caller of one RPC and what identifies the call in the audit log. */
export interface CallInfo {
  caller: Caller;
  /** `mvm.v1.InstanceService/StartInstance`. */
  rpc: string;
  requestId: string;
}

export function callInfo(context: HandlerContext): CallInfo {
  return {
    caller: callerOf(context.values),
    rpc: `${context.service.typeName}/${context.method.name}`,
    requestId: context.values.get(REQUEST_ID_KEY),
  };
}

export function isOperator(caller: Caller): boolean {
  return caller.kind !== "tenant" && caller.kind !== "node";
}

export class AccessPolicy {
  constructor(
    private readonly audit: AuditLog,
    private readonly onDenied: (event: { rpc: string; caller: string; reason: string; requestId: string }) => void = () => undefined,
  ) {}

  /** Audits and throws PermissionDenied. */
  async deny(call: CallInfo, target: string, reason: string): Promise<never> {
    await auditDenial(this.audit, actorOf(call.caller), { rpc: call.rpc, target, reason, requestId: call.requestId });
    this.onDenied({ rpc: call.rpc, caller: describeCaller(call.caller), reason, requestId: call.requestId });
    throw new ConnectError(reason, Code.PermissionDenied);
  }

  /** The caller may act on `tenantId` (and everything in it); `target` names the object for the audit entry. */
  async requireTenant(call: CallInfo, tenantId: string, target: string = tenantId): Promise<void> {
    const { caller } = call;
    if (isOperator(caller)) return;
    if (caller.kind === "tenant" && caller.tenantId === tenantId) return;
    await this.deny(call, target, `${describeCaller(caller)} may not act on tenant ${JSON.stringify(tenantId)}`);
  }

  /** Only admin, coordinator and local callers; `what` says what was refused. */
  async requireOperator(call: CallInfo, target: string, what: string): Promise<void> {
    if (isOperator(call.caller)) return;
    await this.deny(call, target, `${describeCaller(call.caller)} may not ${what}`);
  }

  /**
   * The tenant a list or watch is restricted to. An operator gets what it asked for (undefined: every tenant); a
   * tenant caller gets its own tenant, and naming another one is refused (`field` names the filter for the message).
   */
  async scopeTenant(call: CallInfo, requested: string, field: string): Promise<string | undefined> {
    const { caller } = call;
    if (isOperator(caller)) return requested === "" ? undefined : requested;
    if (caller.kind === "tenant" && (requested === "" || requested === caller.tenantId)) return caller.tenantId;
    return this.deny(call, requested, `${describeCaller(caller)} may not use ${field} ${JSON.stringify(requested)}: it sees only its own tenant`);
  }
}
