import type { Clock, Ids, KeyGenerator, Store } from "../ports.js";

/** What the record use cases need from the world. Composition roots build it from real adapters; tests from fakes. */
export interface RecordDeps {
  store: Store;
  clock: Clock;
  ids: Ids;
  keys: KeyGenerator;
  /** Where single-node tenants get their subnets from (SPEC §6.3). */
  networkPool: { cidr: string; prefixLen: number };
}

export function timestamp(clock: Clock): string {
  return new Date(clock.nowMs()).toISOString();
}
