// What an instance holds on the host besides its records, by status: a TAP and cgroups from start to stop, kept
// while it sleeps so that its wake finds them; a VMM only while running or warm.

import type { TapPlan } from "./data-plane-ports.js";
import type { Instance, InstanceStatus } from "./model.js";

const HOLDS_RESERVATIONS: ReadonlySet<InstanceStatus> = new Set(["running", "warm", "sleeping"]);
const HOLDS_VMM: ReadonlySet<InstanceStatus> = new Set(["running", "warm"]);

/** Whether the instance's TAP and cgroups must exist. */
export function holdsReservations(instance: Pick<Instance, "status">): boolean {
  return HOLDS_RESERVATIONS.has(instance.status);
}

/** Whether a VMM of the instance runs (paused or not). */
export function holdsVmm(instance: Pick<Instance, "status">): boolean {
  return HOLDS_VMM.has(instance.status);
}

/** The TAPs that must exist for these instances. */
export function reservedTaps(instances: readonly Instance[]): TapPlan[] {
  return instances.filter(holdsReservations).map((i) => ({ name: i.net.tapName, mac: i.net.mac, guestIp: i.net.guestIp }));
}
