import { beforeEach, describe, expect, it } from "vitest";
import type { HostMemory, HostMemoryReading } from "../../../src/core/host-ports.js";
import type { Instance } from "../../../src/core/model.js";
import { IdleSampler, isMemoryPressure, runIdlePolicy, sampleIdle } from "../../../src/core/use-cases/idle.js";
import { idleNode, keyOf, recordingRunners, type IdleNode } from "./idle-fixture.js";

const GiB = 1024 ** 3;
let node: IdleNode;

beforeEach(async () => {
  node = await idleNode();
});

function memory(reading: Partial<HostMemoryReading>): HostMemory {
  return { read: async () => ({ totalBytes: 16 * GiB, availableBytes: 8 * GiB, stallPct10s: 0, ...reading }) };
}

const LOW_MEMORY = memory({ availableBytes: 1 * GiB });

/** Stores idle seconds in the record, as a one-shot run (no sampler) reads them. */
async function idleFor(i: Instance, idleS: number): Promise<void> {
  const current = await node.get(i);
  await node.deps.store.putInstance({ ...current, idle: { ...current.idle, idleS, lastSampleAt: new Date(node.now()).toISOString() } });
}

describe("isMemoryPressure", () => {
  const base: HostMemoryReading = { totalBytes: 100, availableBytes: 50, stallPct10s: 0 };
  it("is pressure below 10 % available or at 10 % stalled time, by default", () => {
    expect(isMemoryPressure(base)).toBe(false);
    expect(isMemoryPressure({ ...base, availableBytes: 10 })).toBe(false);
    expect(isMemoryPressure({ ...base, availableBytes: 9 })).toBe(true);
    expect(isMemoryPressure({ ...base, stallPct10s: 9.99 })).toBe(false);
    expect(isMemoryPressure({ ...base, stallPct10s: 10 })).toBe(true);
    expect(isMemoryPressure({ ...base, stallPct10s: null })).toBe(false);
    expect(isMemoryPressure({ ...base, availableBytes: 30 }, { minAvailablePct: 40, maxStallPct: 100 })).toBe(true);
  });
});

describe("runIdlePolicy", () => {
  it("warms past warm_after_idle_s and sleeps past sleep_after_idle_s, as the idle policy in the audit log", async () => {
    await node.pool("acme", "web");
    const fresh = await node.running("acme", "web");
    const idle = await node.running("acme", "web");
    const idler = await node.running("acme", "web");
    const warmIdle = await node.running("acme", "web");
    await idleFor(fresh, 29);
    await idleFor(idle, 30);
    await idleFor(idler, 90);
    await node.deps.store.putInstance({ ...(await node.get(warmIdle)), status: "warm" });
    await idleFor(warmIdle, 95);
    const runners = recordingRunners();
    node.audit.length = 0;

    const report = await runIdlePolicy(node.deps, { runners });

    expect(report.memoryPressure).toBe(false);
    expect(report.actions.map((a) => [a.kind, a.instanceId, a.result])).toEqual([
      ["sleep", warmIdle.instanceId, "success"],
      ["sleep", idler.instanceId, "success"],
      ["warm", idle.instanceId, "success"],
    ]);
    expect(report.actions[2]).toMatchObject({ tenantId: "acme", poolId: "web", reason: "idle 30s >= warm_after_idle_s 30", error: "" });
    expect((await node.get(fresh)).status).toBe("running");
    expect((await node.get(idle)).status).toBe("warm");
    expect((await node.get(idler)).status).toBe("sleeping");
    expect(node.audit.map((e) => [e.action, e.target.split("/")[2], e.actor, e.outcome])).toEqual([
      ["instance_sleep", warmIdle.instanceId, { kind: "system", id: "system:idle-policy" }, "success"],
      ["instance_sleep", idler.instanceId, { kind: "system", id: "system:idle-policy" }, "success"],
      ["instance_warm", idle.instanceId, { kind: "system", id: "system:idle-policy" }, "success"],
    ]);
    // The caller's own actor is left as it was.
    expect(node.deps.actor).toBeUndefined();
  });

  it("leaves pinned and critical pools alone, even under memory pressure", async () => {
    await node.pool("acme", "pinned", { pinned: true });
    await node.pool("acme", "critical", { critical: true });
    const p = await node.running("acme", "pinned");
    const c = await node.running("acme", "critical");
    await idleFor(p, 10_000);
    await idleFor(c, 10_000);
    const runners = recordingRunners();
    const report = await runIdlePolicy(node.deps, { runners, hostMemory: LOW_MEMORY, pressureSleeps: 5 });
    expect(report.memoryPressure).toBe(true);
    expect(report.actions).toEqual([]);
    expect(runners.calls).toEqual([]);
    expect((await node.get(p)).status).toBe("running");
    expect((await node.get(c)).status).toBe("running");
  });

  it("under memory pressure sleeps the coldest instance of the whole node first, one per run by default", async () => {
    await node.pool("acme", "web");
    await node.pool("beta", "api");
    const warm = await node.running("acme", "web");
    const cold = await node.running("beta", "api");
    const colder = await node.running("acme", "web");
    await idleFor(warm, 5);
    await idleFor(cold, 20);
    await idleFor(colder, 25);
    const runners = recordingRunners();

    const noPressure = await runIdlePolicy(node.deps, { runners, hostMemory: memory({}) });
    expect(noPressure.actions).toEqual([]);

    const first = await runIdlePolicy(node.deps, { runners, hostMemory: LOW_MEMORY });
    expect(first.memoryPressure).toBe(true);
    expect(first.actions.map((a) => [a.kind, a.instanceId])).toEqual([["sleep", colder.instanceId]]);
    expect(first.actions[0]!.reason).toMatch(/host memory pressure/);
    const second = await runIdlePolicy(node.deps, { runners, hostMemory: memory({ stallPct10s: 40 }) });
    expect(second.actions.map((a) => a.instanceId)).toEqual([cold.instanceId]);
    const two = await runIdlePolicy(node.deps, { runners, hostMemory: LOW_MEMORY, pressureSleeps: 2 });
    expect(two.actions.map((a) => a.instanceId)).toEqual([warm.instanceId]);
  });

  it("carries on after an action fails, and reports each outcome", async () => {
    await node.pool("acme", "web");
    const failing = await node.running("acme", "web");
    const other = await node.running("acme", "web");
    await idleFor(failing, 100);
    await idleFor(other, 40);
    const runners = recordingRunners(new Set([failing.instanceId]));
    node.audit.length = 0;
    const report = await runIdlePolicy(node.deps, { runners });
    expect(report.actions).toEqual([
      expect.objectContaining({ kind: "sleep", instanceId: failing.instanceId, result: "failure", error: `sleep of ${failing.instanceId} failed on purpose` }),
      expect.objectContaining({ kind: "warm", instanceId: other.instanceId, result: "success", error: "" }),
    ]);
    expect((await node.get(failing)).status).toBe("running");
    expect((await node.get(other)).status).toBe("warm");
    expect(node.audit.map((e) => [e.action, e.outcome, e.actor.id])).toEqual([
      ["instance_sleep", "failure", "system:idle-policy"],
      ["instance_warm", "success", "system:idle-policy"],
    ]);
  });

  it("takes memory it cannot read as no pressure and says why", async () => {
    await node.pool("acme", "web");
    const i = await node.running("acme", "web");
    await idleFor(i, 1);
    const report = await runIdlePolicy(node.deps, { runners: recordingRunners(), hostMemory: { read: async () => Promise.reject(new Error("no /proc")) } });
    expect(report).toEqual({ memoryPressure: false, pressureError: "no /proc", actions: [] });
  });

  it("skips an instance whose status changed after the evaluation", async () => {
    await node.pool("acme", "web");
    const i = await node.running("acme", "web");
    await idleFor(i, 40);
    // A user stops it while the policy evaluates: the store answers the re-read with the new status.
    const store = node.deps.store;
    const getInstance = store.getInstance.bind(store);
    store.getInstance = async (t, p, id) => {
      const current = await getInstance(t, p, id);
      return current && { ...current, status: "stopped" };
    };
    const runners = recordingRunners();
    const report = await runIdlePolicy(node.deps, { runners });
    expect(report.actions).toEqual([expect.objectContaining({ kind: "warm", result: "skipped", error: "instance is stopped now, was running" })]);
    expect(runners.calls).toEqual([]);
  });

  it("with a sampler, judges by the sampled idle time and ignores idle time in records it has not sampled", async () => {
    await node.pool("acme", "web");
    const sampledIdle = await node.running("acme", "web");
    const busy = await node.running("acme", "web");
    const sampler = new IdleSampler();
    await sampleIdle(node.deps, sampler);
    for (let s = 0; s < 3; s++) {
      node.advance(10_000);
      node.use(busy, 5e6);
      await sampleIdle(node.deps, sampler);
    }
    const late = await node.running("acme", "web");
    await idleFor(late, 5_000); // a stale record, from before this sampler
    await idleFor(busy, 5_000);
    const runners = recordingRunners();
    const report = await runIdlePolicy(node.deps, { runners, sampler });
    expect(report.actions.map((a) => [a.kind, a.instanceId])).toEqual([["warm", sampledIdle.instanceId]]);

    // A resume by a user after the policy's warm starts idle time from 0, even between two samples.
    expect(sampler.idleOf(sampledIdle)!.idleS).toBe(30);
    await node.deps.store.putInstance({ ...(await node.get(sampledIdle)), status: "running" });
    node.advance(10_000);
    await sampleIdle(node.deps, sampler);
    expect(sampler.idleOf(keyOf(sampledIdle))!.idleS).toBe(0);
  });
});
