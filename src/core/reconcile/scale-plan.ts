// Scaling one pool to its desired running/warm/sleeping counts by the cheapest transitions (SPEC §9 steps 3-4).
//
// Every instance that is not destroyed is in one class: running, warm, sleeping, or cold (created, ready, stopped).
// Where a class has more than desired, its most idle instances are the surplus; where it has fewer, the deficit is
// filled from the cheapest source, in this order (fixed, so a plan is easy to predict and to explain):
//   running  ← warm surplus (resume), sleeping surplus (wake), cold (start), a new instance (create + start);
//   warm     ← running surplus (warm), sleeping surplus (wake + warm), cold (start + warm), new;
//   sleeping ← warm surplus (sleep), running surplus (sleep), cold (start + sleep), new.
// Surplus left over after that is stopped, most idle first. A class cannot have both a surplus and a deficit, so
// the sources never compete with the sinks of their own class.
//
// `critical` pools never give up running capacity to scale down (SPEC §2): their surplus is left as it is, and only
// running → warm (a pause, memory stays resident) may be used to fill a warm deficit. Stopped instances are kept,
// not destroyed: starting one is cheaper than creating one, and its data disk survives.

import type { DesiredCounts, Instance, InstanceStatus } from "../model.js";
import type { InstanceGoal, ReconcileStep, StepTarget } from "./steps.js";

export type ScaleInstance = Pick<Instance, "instanceId" | "status" | "idle">;

export interface ScaleInput {
  tenantId: string;
  poolId: string;
  /** Path of the pool in the desired-state document. */
  field: string;
  desired: DesiredCounts;
  critical: boolean;
  instances: readonly ScaleInstance[];
}

export interface ScalePlan {
  /** Steps that lower the number of running instances or keep it (warm, sleep, stop): taken first, freeing quota. */
  down: ReconcileStep[];
  /** Steps that raise it (resume, wake, start, create), with any warm/sleep that completes their chain. */
  up: ReconcileStep[];
}

type Active = "running" | "warm" | "sleeping";
type InstanceClass = Active | "cold";

function classOf(status: InstanceStatus): InstanceClass | null {
  if (status === "running" || status === "warm" || status === "sleeping") return status;
  if (status === "created" || status === "ready" || status === "stopped") return "cold";
  return null;
}

/** Most idle first; ties by ID, so the same state always gives the same plan. */
function mostIdleFirst(a: ScaleInstance, b: ScaleInstance): number {
  if (a.idle.idleS !== b.idle.idleS) return b.idle.idleS - a.idle.idleS;
  return a.instanceId < b.instanceId ? -1 : a.instanceId > b.instanceId ? 1 : 0;
}

/** Stopped and ready before created (their disks exist already), then by ID. */
function coldOrder(a: ScaleInstance, b: ScaleInstance): number {
  const rank = (s: InstanceStatus) => (s === "created" ? 1 : 0);
  if (rank(a.status) !== rank(b.status)) return rank(a.status) - rank(b.status);
  return a.instanceId < b.instanceId ? -1 : a.instanceId > b.instanceId ? 1 : 0;
}

export function planPoolScale(input: ScaleInput): ScalePlan {
  const { desired, critical } = input;
  const byClass: Record<InstanceClass, ScaleInstance[]> = { running: [], warm: [], sleeping: [], cold: [] };
  for (const instance of input.instances) {
    const c = classOf(instance.status);
    if (c !== null) byClass[c].push(instance);
  }
  const have = { running: byClass.running.length, warm: byClass.warm.length, sleeping: byClass.sleeping.length };
  const surplus: Record<Active, ScaleInstance[]> = { running: [], warm: [], sleeping: [] };
  const deficit: Record<Active, number> = { running: 0, warm: 0, sleeping: 0 };
  for (const c of ["running", "warm", "sleeping"] as const) {
    const extra = have[c] - desired[c];
    if (extra > 0) surplus[c] = [...byClass[c]].sort(mostIdleFirst).slice(0, extra);
    else deficit[c] = -extra;
  }
  const cold = [...byClass.cold].sort(coldOrder);
  const plan: ScalePlan = { down: [], up: [] };
  const poolTarget: StepTarget = { tenantId: input.tenantId, poolId: input.poolId };
  const at = (i: ScaleInstance): StepTarget => ({ ...poolTarget, instanceId: i.instanceId });
  const wants = (c: Active) => `pool wants ${desired[c]} ${c}, has ${have[c]}`;
  const step = (kind: Exclude<ReconcileStep["kind"], "create_tenant" | "update_tenant" | "create_pool" | "update_pool" | "create_instance" | "set_condition">, target: StepTarget, reason: string): ReconcileStep => ({
    kind,
    target,
    reason,
    field: input.field,
  });
  const create = (goal: InstanceGoal, reason: string): ReconcileStep => ({ kind: "create_instance", target: poolTarget, reason, field: input.field, goal });

  // running
  for (let n = 0; n < deficit.running; n++) {
    const why = wants("running");
    const warm = surplus.warm.shift();
    if (warm) { plan.up.push(step("resume_instance", at(warm), `${why}; cheapest: warm → running`)); continue; }
    const sleeping = surplus.sleeping.shift();
    if (sleeping) { plan.up.push(step("wake_instance", at(sleeping), `${why}; cheapest: sleeping → running`)); continue; }
    const stopped = cold.shift();
    if (stopped) { plan.up.push(step("start_instance", at(stopped), `${why}; cheapest: ${stopped.status} → running`)); continue; }
    plan.up.push(create("running", `${why}; no warm, sleeping or stopped instance to reuse: create → running`));
  }
  // warm
  for (let n = 0; n < deficit.warm; n++) {
    const why = wants("warm");
    const running = surplus.running.shift();
    if (running) { plan.down.push(step("warm_instance", at(running), `${why}; cheapest: running → warm (most idle)`)); continue; }
    const sleeping = surplus.sleeping.shift();
    if (sleeping) {
      plan.up.push(step("wake_instance", at(sleeping), `${why}; cheapest: sleeping → running → warm`));
      plan.up.push(step("warm_instance", at(sleeping), `${why}; completes sleeping → running → warm`));
      continue;
    }
    const stopped = cold.shift();
    if (stopped) {
      plan.up.push(step("start_instance", at(stopped), `${why}; cheapest: ${stopped.status} → running → warm`));
      plan.up.push(step("warm_instance", at(stopped), `${why}; completes ${stopped.status} → running → warm`));
      continue;
    }
    plan.up.push(create("warm", `${why}; nothing to reuse: create → running → warm`));
  }
  // sleeping
  for (let n = 0; n < deficit.sleeping; n++) {
    const why = wants("sleeping");
    if (!critical) {
      const warm = surplus.warm.shift();
      if (warm) { plan.down.push(step("sleep_instance", at(warm), `${why}; cheapest: warm → sleeping (most idle)`)); continue; }
      const running = surplus.running.shift();
      if (running) { plan.down.push(step("sleep_instance", at(running), `${why}; cheapest: running → sleeping (most idle)`)); continue; }
    }
    const stopped = cold.shift();
    if (stopped) {
      plan.up.push(step("start_instance", at(stopped), `${why}; cheapest: ${stopped.status} → running → sleeping`));
      plan.up.push(step("sleep_instance", at(stopped), `${why}; completes ${stopped.status} → running → sleeping`));
      continue;
    }
    plan.up.push(create("sleeping", `${why}; nothing to reuse: create → running → sleeping`));
  }
  // What is still surplus is stopped, most idle first; a critical pool keeps it.
  if (!critical) {
    for (const c of ["running", "warm", "sleeping"] as const) {
      for (const instance of surplus[c]) {
        plan.down.push(step("stop_instance", at(instance), `${wants(c)}; surplus, most idle first (idle ${Math.floor(instance.idle.idleS)}s)`));
      }
    }
  }
  return plan;
}
