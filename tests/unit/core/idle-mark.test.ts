import { describe, expect, it } from "vitest";
import { asDesiredClass, idledFrom, markIdled, parkedFrom, withoutIdleMark } from "../../../src/core/idle-mark.js";
import type { Condition, Instance } from "../../../src/core/model.js";

const ready: Condition = { type: "Ready", status: "false", reason: "Paused", message: "", lastTransitionAt: "2026-01-01T00:00:00.000Z" };
const instance = (status: Instance["status"], conditions: Condition[] = [ready]) => ({ status, conditions }) as unknown as Instance;

describe("the idle mark", () => {
  it("remembers the class an instance was parked from, across warm → sleeping, and keeps other conditions", () => {
    const warmed = instance("warm", markIdled([ready], parkedFrom(instance("running")), "idle 400 s", "t1"));
    expect(idledFrom(warmed)).toBe("running");
    expect(warmed.conditions.find((c) => c.type === "Ready")).toEqual(ready);
    const slept = instance("sleeping", markIdled(warmed.conditions, parkedFrom(warmed), "idle 1000 s", "t2"));
    expect(idledFrom(slept)).toBe("running");
    expect(slept.conditions.filter((c) => c.type === "Idled")).toHaveLength(1);
    // A warm-class instance (warm because the desired state says so) that the policy puts to sleep stays warm-class.
    expect(idledFrom(instance("sleeping", markIdled([], parkedFrom(instance("warm")), "", "t3")))).toBe("warm");
  });

  it("makes reconcile count a parked instance in its old class, and nothing else", () => {
    const parked = instance("sleeping", markIdled([ready], "running", "", "t"));
    expect(asDesiredClass(parked).status).toBe("running");
    expect(asDesiredClass(instance("sleeping")).status).toBe("sleeping");
    // A stopped instance keeps no class of its own, whatever a stale mark says.
    expect(asDesiredClass(instance("stopped", parked.conditions)).status).toBe("stopped");
    expect(idledFrom({ conditions: withoutIdleMark(parked.conditions) })).toBeNull();
  });
});
