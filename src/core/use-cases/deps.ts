import type { AuditActor, AuditLog, OperationObserver } from "../observability-ports.js";
import type { Clock, Ids, KeyGenerator, Store } from "../ports.js";

/** What the record use cases need from the world. Composition roots build it from real adapters; tests from fakes. */
export interface RecordDeps {
  store: Store;
  clock: Clock;
  ids: Ids;
  keys: KeyGenerator;
  /** Where single-node tenants get their subnets from (SPEC §6.3). */
  networkPool: { cidr: string; prefixLen: number };
  /** Where actions are audited; absent only in unit tests of other concerns. */
  audit?: AuditLog;
  /** Who is acting: set per request by the API edge, `local:<user>` by the CLI. */
  actor?: AuditActor;
  /** Told how long each audited operation took; absent where nobody measures. */
  operations?: OperationObserver;
}

export function timestamp(clock: Clock): string {
  return new Date(clock.nowMs()).toISOString();
}
