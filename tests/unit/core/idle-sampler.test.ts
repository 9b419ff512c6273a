import { beforeEach, describe, expect, it } from "vitest";
import { IdleSampler, sampleIdle } from "../../../src/core/use-cases/idle.js";
import type { Instance } from "../../../src/core/model.js";
import { idleNode, keyOf, type IdleNode } from "./idle-fixture.js";

const S = 1000;
let node: IdleNode;
let sampler: IdleSampler;

beforeEach(async () => {
  node = await idleNode();
  sampler = new IdleSampler(30 * S);
});

/** Advances the clock by `seconds`, during which `busy` instances use the given CPU share (percent of one vCPU). */
async function tick(seconds: number, usage: Array<[Instance, number, number?]> = []) {
  node.advance(seconds * S);
  for (const [i, pct, net] of usage) node.use(i, (pct / 100) * seconds * 1e6, net ?? 0);
  return sampleIdle(node.deps, sampler);
}

describe("sampleIdle", () => {
  it("starts with a baseline, then turns counter deltas into CPU percent of the pool's vCPUs and bytes per interval", async () => {
    await node.pool("acme", "web", { vcpus: 2 });
    const i = await node.running("acme", "web");
    node.use(i, 5e6, 9000); // usage from before the first sample counts for nothing
    const first = await sampleIdle(node.deps, sampler);
    expect(first).toEqual({ sampled: 1, written: 1, errors: [] });
    expect(sampler.idleOf(i)).toMatchObject({ idleS: 0, lastSampleAt: new Date(node.now()).toISOString() });

    // 10 s on 2 vCPUs = 20 s of CPU; 0.6 s used = 3 %.
    await tick(10, [[i, 6, 700]]);
    expect(sampler.idleOf(i)).toMatchObject({ idleS: 10, netBytes: 700 });
    expect(sampler.idleOf(i)!.cpuPct).toBeCloseTo(3, 6);
    await tick(10, [[i, 2, 0]]);
    expect(sampler.idleOf(i)).toMatchObject({ idleS: 20, netBytes: 0 });
    expect(sampler.idleOf(i)!.cpuPct).toBeCloseTo(1, 6);
  });

  it("resets idle time when CPU or network reaches the pool's thresholds", async () => {
    await node.pool("acme", "web");
    const i = await node.running("acme", "web");
    await sampleIdle(node.deps, sampler);
    await tick(10);
    await tick(10);
    expect(sampler.idleOf(i)!.idleS).toBe(20);
    await tick(10, [[i, 5]]); // cpu_idle_pct is 5: 5 % is not below it
    expect(sampler.idleOf(i)).toMatchObject({ idleS: 0, cpuPct: 5 });
    await tick(10);
    await tick(10, [[i, 0, 1024]]); // net_idle_bytes is 1024
    expect(sampler.idleOf(i)).toMatchObject({ idleS: 0, netBytes: 1024 });
    await tick(10, [[i, 0, 1023]]);
    expect(sampler.idleOf(i)!.idleS).toBe(10);
  });

  it("writes the record on the first sample, when activity resets idle time, and otherwise once per persist interval", async () => {
    await node.pool("acme", "web");
    const i = await node.running("acme", "web");
    node.writes.length = 0;
    await sampleIdle(node.deps, sampler); // first sample of the record
    expect(node.writes).toHaveLength(1);
    await tick(10);
    await tick(10);
    expect(node.writes).toHaveLength(1);
    expect((await node.get(i)).idle.idleS).toBe(0);
    const third = await tick(10); // 30 s since the stored sample
    expect(third.written).toBe(1);
    expect((await node.get(i)).idle).toMatchObject({ idleS: 30, lastSampleAt: new Date(node.now()).toISOString() });
    await tick(10, [[i, 90]]);
    expect(node.writes).toHaveLength(3);
    expect((await node.get(i)).idle).toMatchObject({ idleS: 0, cpuPct: 90 });
    await tick(10, [[i, 90]]); // busy and stored as busy: nothing new to say
    expect(node.writes).toHaveLength(3);
    // The write changes the idle metrics only.
    const stored = await node.get(i);
    expect({ ...stored, idle: i.idle }).toEqual(i);
  });

  it("starts from 0 again for a new VMM and after a resume, and keeps counting while warm", async () => {
    await node.pool("acme", "web");
    const i = await node.running("acme", "web");
    await sampleIdle(node.deps, sampler);
    await tick(10);
    await tick(10);
    expect(sampler.idleOf(i)!.idleS).toBe(20);

    await node.deps.store.putInstance({ ...(await node.get(i)), status: "warm" });
    await tick(10);
    expect(sampler.idleOf(i)!.idleS).toBe(30);
    await node.deps.store.putInstance({ ...(await node.get(i)), status: "running" });
    await tick(10);
    expect(sampler.idleOf(i)!.idleS).toBe(0);
    await tick(10);
    expect(sampler.idleOf(i)!.idleS).toBe(10);

    await node.stop(i);
    await tick(10);
    expect(sampler.tracked()).toEqual([]);
    const { startInstance } = await import("../../../src/core/use-cases/lifecycle.js");
    const restarted = await startInstance(node.deps, keyOf(i));
    expect(restarted.vmm!.pid).not.toBe(i.vmm!.pid);
    await tick(10);
    expect(sampler.idleOf(i)!.idleS).toBe(0);
    await tick(10);
    expect(sampler.idleOf(i)!.idleS).toBe(10);
  });

  it("forgets nothing and adds nothing when the clock steps back", async () => {
    await node.pool("acme", "web");
    const i = await node.running("acme", "web");
    await sampleIdle(node.deps, sampler);
    await tick(10);
    node.advance(-5 * S);
    await sampleIdle(node.deps, sampler);
    expect(sampler.idleOf(i)!.idleS).toBe(10);
    await tick(10);
    expect(sampler.idleOf(i)!.idleS).toBe(20);
  });

  it("samples only running and warm instances, and goes on past one whose counters fail", async () => {
    await node.pool("acme", "web");
    await node.pool("beta", "api");
    const broken = await node.running("acme", "web");
    const fine = await node.running("beta", "api");
    const stopped = await node.running("beta", "api");
    await node.stop(stopped);
    node.failingCounters.add(broken.instanceId);
    await sampleIdle(node.deps, sampler);
    const report = await tick(10);
    expect(report.sampled).toBe(1);
    expect(report.errors).toEqual([{ instance: `acme/web/${broken.instanceId}`, error: `cgroup of ${broken.instanceId} unreadable` }]);
    expect(sampler.idleOf(fine)!.idleS).toBe(10);
    expect(sampler.idleOf(stopped)).toBeUndefined();
    expect(sampler.tracked().map((t) => t.key.instanceId)).toEqual([fine.instanceId]);
  });

  it("never writes idle metrics into a record that moved on meanwhile", async () => {
    await node.pool("acme", "web");
    const i = await node.running("acme", "web");
    // The instance stops between the listing the sampler reads and the write under the tenant lock.
    const store = node.deps.store;
    const getInstance = store.getInstance.bind(store);
    store.getInstance = async (t, p, id) => {
      const current = await getInstance(t, p, id);
      return current && { ...current, status: "stopped", vmm: null };
    };
    node.writes.length = 0;
    const report = await sampleIdle(node.deps, sampler);
    expect(report).toMatchObject({ sampled: 1, written: 0 });
    expect(node.writes).toEqual([]);
    expect((await getInstance("acme", "web", i.instanceId))!.idle.lastSampleAt).toBeNull();
  });
});
