import { describe, expect, it } from "vitest";
import type { InstanceStatus } from "../../../../src/core/model.js";
import { planPoolScale, type ScaleInstance } from "../../../../src/core/reconcile/scale-plan.js";

const at = (id: string, status: InstanceStatus, idleS = 0): ScaleInstance => ({ instanceId: id, status, idle: { idleS, cpuPct: 0, netBytes: 0, lastSampleAt: null } });
const scale = (desired: { running: number; warm: number; sleeping: number }, instances: ScaleInstance[], critical = false) =>
  planPoolScale({ tenantId: "t", poolId: "p", field: "f", desired, critical, instances });
const summary = (steps: ReturnType<typeof scale>["up"]) => steps.map((s) => `${s.kind}:${s.target.instanceId ?? (s.kind === "create_instance" ? s.goal : "")}`);

describe("planPoolScale", () => {
  it("fills running from warm, then sleeping, then stopped, then new instances", () => {
    const plan = scale({ running: 5, warm: 0, sleeping: 0 }, [at("i-4", "stopped"), at("i-3", "sleeping"), at("i-2", "warm"), at("i-1", "created")]);
    expect(summary(plan.up)).toEqual(["resume_instance:i-2", "wake_instance:i-3", "start_instance:i-4", "start_instance:i-1", "create_instance:running"]);
    expect(plan.down).toEqual([]);
  });

  it("warms and sleeps surplus running instances, most idle first, and stops what is left", () => {
    const plan = scale({ running: 1, warm: 1, sleeping: 1 }, [at("i-1", "running", 10), at("i-2", "running", 500), at("i-3", "running", 90), at("i-4", "running", 0)]);
    expect(summary(plan.down)).toEqual(["warm_instance:i-2", "sleep_instance:i-3", "stop_instance:i-1"]);
    expect(plan.up).toEqual([]);
  });

  it("never sleeps or stops in a critical pool; it may pause a running instance to fill warm", () => {
    const plan = scale({ running: 0, warm: 1, sleeping: 1 }, [at("i-1", "running", 10), at("i-2", "running", 500), at("i-3", "running")], true);
    expect(summary(plan.down)).toEqual(["warm_instance:i-2"]);
    expect(summary(plan.up)).toEqual(["create_instance:sleeping"]);
  });

  it("takes nothing when the counts are met, whatever else there is", () => {
    const plan = scale({ running: 1, warm: 1, sleeping: 0 }, [at("i-1", "running"), at("i-2", "warm"), at("i-3", "stopped"), at("i-4", "created")]);
    expect(plan).toEqual({ up: [], down: [] });
  });

  it("explains each step with the counts and the transition", () => {
    const plan = scale({ running: 2, warm: 0, sleeping: 0 }, [at("i-1", "running"), at("i-2", "stopped")]);
    expect(plan.up[0]!.reason).toBe("pool wants 2 running, has 1; cheapest: stopped → running");
  });
});
