// How the idle policy and reconcile share an instance. The desired state puts each instance in a class (running,
// warm, sleeping); the idle policy may then warm an idle running instance or put an idle one to sleep. Such an
// instance keeps a mark (condition `Idled`, reason naming the class it left) and reconcile keeps counting it in that
// class, so the next pass does not resume what the policy has just parked (which would undo it every interval).
// The mark ends when anything else moves the instance: a start, resume, wake or stop, or a reconcile step on it.

import type { Condition, Instance, InstanceStatus } from "./model.js";

export const IDLED_CONDITION = "Idled";

export type IdledFrom = "running" | "warm";

const REASON_OF: Readonly<Record<IdledFrom, string>> = { running: "FromRunning", warm: "FromWarm" };

/** The class an idled instance was parked from; null when it carries no mark. */
export function idledFrom(instance: Pick<Instance, "conditions">): IdledFrom | null {
  const mark = instance.conditions.find((c) => c.type === IDLED_CONDITION && c.status === "true");
  if (mark === undefined) return null;
  if (mark.reason === REASON_OF.running) return "running";
  if (mark.reason === REASON_OF.warm) return "warm";
  return null;
}

/** The class an instance leaves when the idle policy parks it: an earlier mark's (running → warm → sleeping stays running). */
export function parkedFrom(before: Pick<Instance, "conditions" | "status">): IdledFrom {
  return idledFrom(before) ?? (before.status === "warm" ? "warm" : "running");
}

/** `conditions` with the mark set. */
export function markIdled(conditions: readonly Condition[], from: IdledFrom, message: string, at: string): Condition[] {
  return [...withoutIdleMark(conditions), { type: IDLED_CONDITION, status: "true", reason: REASON_OF[from], message, lastTransitionAt: at }];
}

export function withoutIdleMark(conditions: readonly Condition[]): Condition[] {
  return conditions.filter((c) => c.type !== IDLED_CONDITION);
}

/** An instance as reconcile counts it: an idled one in the class it was parked from. */
export function asDesiredClass(instance: Instance): Instance {
  const from = idledFrom(instance);
  const parked: readonly InstanceStatus[] = ["warm", "sleeping"];
  if (from === null || !parked.includes(instance.status) || from === instance.status) return instance;
  return { ...instance, status: from };
}
