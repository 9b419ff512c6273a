// The instance lifecycle of SPEC §3 as one table. Every lifecycle operation asks `planTransition` before it touches
// anything, so an illegal edge is refused before any side effect.

import { failedPrecondition } from "./errors.js";
import type { InstanceStatus } from "./model.js";

export const OPERATIONS = ["bind", "start", "warm", "resume", "sleep", "wake", "stop", "destroy"] as const;
export type Operation = (typeof OPERATIONS)[number];

export type TransitionPlan =
  | { kind: "transition"; from: InstanceStatus; to: InstanceStatus }
  | { kind: "noop"; status: InstanceStatus };

export interface Transition {
  from: InstanceStatus;
  op: Operation;
  to: InstanceStatus;
}

const NOT_DESTROYED: readonly InstanceStatus[] = ["created", "ready", "running", "warm", "sleeping", "stopped"];

/**
 * Every legal edge. `start` from `created` is allowed: the first start binds the instance to the pool's current
 * revision and boots it in one operation (SPEC §3: created → ready happens on "build done / first start"), so a
 * caller never has to issue `bind` itself.
 */
export const TRANSITIONS: ReadonlyArray<Transition> = Object.freeze([
  { from: "created", op: "bind", to: "ready" },
  { from: "created", op: "start", to: "running" },
  { from: "ready", op: "start", to: "running" },
  { from: "stopped", op: "start", to: "running" },
  { from: "running", op: "warm", to: "warm" },
  { from: "warm", op: "resume", to: "running" },
  { from: "running", op: "sleep", to: "sleeping" },
  { from: "warm", op: "sleep", to: "sleeping" },
  { from: "sleeping", op: "wake", to: "running" },
  { from: "running", op: "stop", to: "stopped" },
  { from: "warm", op: "stop", to: "stopped" },
  { from: "sleeping", op: "stop", to: "stopped" },
  ...NOT_DESTROYED.map((from) => ({ from, op: "destroy" as const, to: "destroyed" as const })),
] satisfies Transition[]);

/**
 * The state each operation leads to. An operation on an instance already in that state is a no-op (SPEC §3:
 * "starting a running instance returns it unchanged"), so a retried call succeeds without doing anything twice —
 * e.g. a second `wake` or `resume` that finds the instance running.
 */
export const OPERATION_TARGETS: Readonly<Record<Operation, InstanceStatus>> = Object.freeze({
  bind: "ready",
  start: "running",
  warm: "warm",
  resume: "running",
  sleep: "sleeping",
  wake: "running",
  stop: "stopped",
  destroy: "destroyed",
});

/** The operation whose edge leads from `from` to `to` (each pair has at most one), or null when none does. */
export function operationBetween(from: InstanceStatus, to: InstanceStatus): Operation | null {
  return TRANSITIONS.find((t) => t.from === from && t.to === to)?.op ?? null;
}

export function isTerminal(status: InstanceStatus): boolean {
  return status === "destroyed";
}

/** Operations that move an instance out of `status` (no-ops not included), in the order of OPERATIONS. */
export function allowedOperations(status: InstanceStatus): Operation[] {
  return OPERATIONS.filter((op) => TRANSITIONS.some((t) => t.from === status && t.op === op));
}

/**
 * What `op` does to an instance in `status`: a transition, a no-op, or a `failed_precondition` error that names the
 * current state and the operations it allows.
 */
export function planTransition(status: InstanceStatus, op: Operation): TransitionPlan {
  const edge = TRANSITIONS.find((t) => t.from === status && t.op === op);
  if (edge) return { kind: "transition", from: edge.from, to: edge.to };
  // Only `destroy` leads to destroyed, so a tombstone accepts a repeated destroy and nothing else.
  if (OPERATION_TARGETS[op] === status) {
    return { kind: "noop", status };
  }
  throw failedPrecondition(rejectionMessage(status, op));
}

function rejectionMessage(status: InstanceStatus, op: Operation): string {
  const allowed = allowedOperations(status);
  const allowedText = allowed.length > 0 ? `allowed operations: ${allowed.join(", ")}` : "no operation is allowed";
  const hint =
    op === "start" && status === "warm"
      ? ": use resume to run a warm instance"
      : op === "start" && status === "sleeping"
        ? ": use wake to run a sleeping instance"
        : "";
  return `cannot ${op} an instance in state ${status}${hint} (${allowedText})`;
}
