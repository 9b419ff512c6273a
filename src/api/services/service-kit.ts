// What every service implementation shares: the access policy, the request_id cache, and the use cases'
// dependencies for one call (the runtime seen through the caller's identity).

import { toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { AuditLog } from "../../core/observability-ports.js";
import type { ApiDeps, ApiRuntime } from "../api-deps.js";
import { actorOf } from "../auth.js";
import { fingerprintOf, IdempotencyCache } from "../idempotency.js";
import { AccessPolicy, type CallInfo } from "../policy.js";

/**
 * `runtime` with some properties replaced, without copying it: a class instance keeps its methods and its own
 * state, since every other property is read from (and bound to) the original.
 */
export function overlay<T extends object>(runtime: T, overrides: Partial<T>): T {
  return new Proxy(runtime, {
    get(target, property) {
      if (Object.hasOwn(overrides, property)) return (overrides as Record<PropertyKey, unknown>)[property];
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

export class ServiceKit {
  readonly policy: AccessPolicy;
  readonly idempotency: IdempotencyCache;

  constructor(
    readonly deps: ApiDeps,
    idempotency: IdempotencyCache = new IdempotencyCache(),
  ) {
    this.policy = new AccessPolicy(deps.runtime.audit, (e) => deps.logger.warn(e, "permission denied"));
    this.idempotency = idempotency;
  }

  /**
   * The use cases' dependencies for one call: the caller is the audit actor, and each audit entry the call writes
   * names its request id. `overrides` adjusts per-call settings (timeouts).
   */
  runtimeFor(call: CallInfo, overrides: Partial<ApiRuntime> = {}): ApiRuntime {
    const base = this.deps.runtime;
    const audit: AuditLog = {
      append: (record) => base.audit.append({ ...record, details: { ...record.details, request_id: call.requestId } }),
    };
    return overlay(base, { ...overrides, actor: actorOf(call.caller), audit });
  }

  /**
   * Runs a mutating call at most once per request_id (see idempotency.ts). A given request_id also becomes the
   * call's request id, so the audit entries of the call name the id the client chose.
   */
  once<D extends DescMessage, T>(call: CallInfo, schema: D, request: MessageShape<D>, requestId: string, work: () => Promise<T>): Promise<T> {
    if (requestId !== "") call.requestId = requestId;
    const fingerprint = requestId === "" ? "" : fingerprintOf(toBinary(schema, request));
    return this.idempotency.run(`${call.caller.id}\u0000${call.rpc}`, requestId, fingerprint, work);
  }
}
