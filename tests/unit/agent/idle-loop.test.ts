import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { startIdleLoop, type IdleLoop, type IdleLoopLogger } from "../../../src/agent/idle-loop.js";
import { createMetrics, type Metrics } from "../../../src/platform/metrics.js";
import { idleNode, recordingRunners, type IdleNode } from "../core/idle-fixture.js";

let node: IdleNode;
let metrics: Metrics;
let loop: IdleLoop | null = null;
const logged: Array<{ level: string; fields: object; message: string }> = [];
const logger: IdleLoopLogger = {
  info: (fields, message) => void logged.push({ level: "info", fields, message }),
  warn: (fields, message) => void logged.push({ level: "warn", fields, message }),
};

function samples(text: string, name: string): string[] {
  return text.split("\n").filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
}

beforeEach(async () => {
  node = await idleNode();
  metrics = createMetrics({ processMetrics: false });
  logged.length = 0;
});

afterEach(async () => {
  await loop?.stop();
  loop = null;
});

describe("idle loop", () => {
  it("samples, acts on the policy, and counts and logs each action in the metrics", async () => {
    await node.pool("acme", "web", { sleepPolicy: { warmAfterIdleS: 20, sleepAfterIdleS: 40 } });
    const i = await node.running("acme", "web");
    const runners = recordingRunners();
    loop = startIdleLoop(node.deps, { intervalMs: 3_600_000, logger, metrics, runners });
    for (let s = 0; s <= 1; s++) {
      const { policy } = await loop.tick();
      expect(policy.actions).toEqual([]);
      node.advance(10_000);
    }
    const warmed = await loop.tick(); // 20 s idle
    expect(warmed.policy.actions.map((a) => [a.kind, a.result])).toEqual([["warm", "success"]]);
    expect((await node.get(i)).status).toBe("warm");
    node.advance(10_000);
    expect((await loop.tick()).policy.actions).toEqual([]);
    let text = await metrics.render();
    expect(samples(text, "mvm_instance_idle_seconds")).toEqual([`mvm_instance_idle_seconds{tenant="acme",pool="web",instance="${i.instanceId}"} 30`]);
    node.advance(10_000);
    const slept = await loop.tick(); // 40 s idle
    expect(slept.policy.actions.map((a) => [a.kind, a.result])).toEqual([["sleep", "success"]]);
    text = await metrics.render();
    expect(samples(text, "mvm_idle_actions_total").sort()).toEqual([
      'mvm_idle_actions_total{tenant="acme",pool="web",action="sleep",result="success"} 1',
      'mvm_idle_actions_total{tenant="acme",pool="web",action="warm",result="success"} 1',
    ]);
    expect(samples(text, "mvm_host_memory_pressure")).toEqual(["mvm_host_memory_pressure 0"]);
    expect(logged.filter((l) => l.message.startsWith("idle policy")).map((l) => l.message)).toEqual(["idle policy: warm success", "idle policy: sleep success"]);

    // Asleep, it is no longer sampled: its idle gauge goes.
    await loop.tick();
    expect(samples(await metrics.render(), "mvm_instance_idle_seconds")).toEqual([]);
  });

  it("asks a guest that did not answer its wake hook again, and counts and logs the answer", async () => {
    await node.pool("acme", "web");
    const i = await node.running("acme", "web");
    const ready = { type: "Ready", status: "false", reason: "WakeHookFailed", message: "restored, no answer", lastTransitionAt: i.updatedAt } as const;
    await node.deps.store.putInstance({ ...i, healthy: false, conditions: [...i.conditions.filter((c) => c.type !== "Ready"), ready] });
    loop = startIdleLoop(node.deps, { intervalMs: 3_600_000, logger, metrics, runners: recordingRunners() });
    const { wakeHookRetries } = await loop.tick();
    expect(wakeHookRetries).toEqual([{ tenantId: "acme", poolId: "web", instanceId: i.instanceId, result: "answered", error: "" }]);
    const after = await node.get(i);
    expect(after.healthy).toBe(true);
    expect(after.conditions.find((c) => c.type === "Ready")).toMatchObject({ status: "true", reason: "Woken" });
    expect(samples(await metrics.render(), "mvm_wake_hook_retries_total")).toEqual(['mvm_wake_hook_retries_total{tenant="acme",pool="web",result="answered"} 1']);
    expect(logged.find((l) => l.message.startsWith("wake hook"))).toMatchObject({ level: "info", fields: { instance: i.instanceId } });
    // Answered, it is not asked again.
    expect((await loop.tick()).wakeHookRetries).toEqual([]);
  });

  it("counts failures and pressure, and logs them as warnings", async () => {
    await node.pool("acme", "web");
    const i = await node.running("acme", "web");
    const hostMemory = { read: async () => ({ totalBytes: 100, availableBytes: 1, stallPct10s: null }) };
    loop = startIdleLoop(node.deps, { intervalMs: 3_600_000, logger, metrics, runners: recordingRunners(new Set([i.instanceId])), hostMemory });
    const { policy } = await loop.tick();
    expect(policy.actions).toEqual([expect.objectContaining({ kind: "sleep", result: "failure" })]);
    const text = await metrics.render();
    expect(samples(text, "mvm_idle_actions_total")).toEqual(['mvm_idle_actions_total{tenant="acme",pool="web",action="sleep",result="failure"} 1']);
    expect(samples(text, "mvm_host_memory_pressure")).toEqual(["mvm_host_memory_pressure 1"]);
    expect(logged.find((l) => l.level === "warn")).toMatchObject({ message: "idle policy: sleep failed", fields: { instance: i.instanceId } });
  });

  it("ticks on its interval, never two at once, and stop waits for the tick in progress", async () => {
    await node.pool("acme", "web");
    await node.running("acme", "web");
    let listings = 0;
    let inFlight = 0;
    let overlapped = false;
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const store = node.deps.store;
    const listTenants = store.listTenants.bind(store);
    store.listTenants = async () => {
      listings++;
      return listTenants();
    };
    const runners = recordingRunners();
    loop = startIdleLoop(node.deps, { intervalMs: 5, logger, metrics, runners });
    // Every tick is slowed down until the gate opens, to see whether another starts beside it.
    const slowSample = store.listPools.bind(store);
    store.listPools = async (t) => {
      inFlight++;
      if (inFlight > 1) overlapped = true;
      await gate;
      inFlight--;
      return slowSample(t);
    };
    await new Promise((r) => setTimeout(r, 60));
    expect(listings).toBeGreaterThanOrEqual(1);
    expect(overlapped).toBe(false);
    const stopping = loop.stop();
    let stopped = false;
    void stopping.then(() => (stopped = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(stopped).toBe(false);
    release();
    await stopping;
    const after = listings;
    await new Promise((r) => setTimeout(r, 40));
    expect(listings).toBe(after);
  });
});
