import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { accumulateIdle, evaluateIdlePolicy } from "../../../src/core/idle-policy.js";
import type { IdlePoolView } from "../../../src/core/idle-policy.js";
import { DEFAULT_SLEEP_POLICY, INSTANCE_STATUSES } from "../../../src/core/model.js";
import type { IdleMetrics, InstanceStatus, SleepPolicy } from "../../../src/core/model.js";

const policy: SleepPolicy = { ...DEFAULT_SLEEP_POLICY }; // warm 300 s, sleep 900 s, cpu < 5 %, net < 1024 B
const T0 = Date.parse("2025-01-01T00:00:00.000Z");

function metrics(idleS: number, lastSampleAtMs: number | null = T0): IdleMetrics {
  return { idleS, cpuPct: 0, netBytes: 0, lastSampleAt: lastSampleAtMs === null ? null : new Date(lastSampleAtMs).toISOString() };
}

describe("accumulateIdle", () => {
  it("adds the elapsed time while CPU and network stay below the thresholds", () => {
    const next = accumulateIdle(metrics(10), { cpuPct: 4.9, netBytes: 1023, atMs: T0 + 15_000 }, policy);
    expect(next).toEqual({ idleS: 25, cpuPct: 4.9, netBytes: 1023, lastSampleAt: new Date(T0 + 15_000).toISOString() });
  });

  it("resets to 0 on busy CPU or busy network (thresholds are strict)", () => {
    expect(accumulateIdle(metrics(500), { cpuPct: 5, netBytes: 0, atMs: T0 + 1000 }, policy).idleS).toBe(0);
    expect(accumulateIdle(metrics(500), { cpuPct: 0, netBytes: 1024, atMs: T0 + 1000 }, policy).idleS).toBe(0);
  });

  it("adds nothing on the first sample or when the clock steps back", () => {
    expect(accumulateIdle(metrics(0, null), { cpuPct: 0, netBytes: 0, atMs: T0 }, policy).idleS).toBe(0);
    expect(accumulateIdle(metrics(40), { cpuPct: 0, netBytes: 0, atMs: T0 - 5000 }, policy).idleS).toBe(40);
  });

  it("keeps sub-second intervals", () => {
    let m = metrics(0);
    for (let i = 1; i <= 4; i++) m = accumulateIdle(m, { cpuPct: 0, netBytes: 0, atMs: T0 + i * 250 }, policy);
    expect(m.idleS).toBe(1);
  });

  const sample = fc.record({ cpuPct: fc.double({ min: 0, max: 100, noNaN: true }), netBytes: fc.nat(100_000), stepMs: fc.nat(120_000) });

  it("property: idle_s is 0 after a busy sample, else the previous value plus the elapsed seconds", () => {
    fc.assert(
      fc.property(fc.array(sample, { minLength: 1, maxLength: 40 }), (samples) => {
        let m = metrics(0, null);
        let at = T0;
        for (const s of samples) {
          at += s.stepMs;
          const before = m;
          m = accumulateIdle(m, { cpuPct: s.cpuPct, netBytes: s.netBytes, atMs: at }, policy);
          const busy = s.cpuPct >= policy.cpuIdlePct || s.netBytes >= policy.netIdleBytes;
          const elapsed = before.lastSampleAt === null ? 0 : s.stepMs / 1000;
          expect(m.idleS).toBeCloseTo(busy ? 0 : before.idleS + elapsed, 6);
          expect(m.lastSampleAt).toBe(new Date(at).toISOString());
        }
      }),
    );
  });
});

function view(
  poolId: string,
  instances: Array<[string, InstanceStatus, number]>,
  extra: Partial<IdlePoolView> = {},
): IdlePoolView {
  return {
    poolId,
    pinned: false,
    critical: false,
    sleepPolicy: policy,
    instances: instances.map(([instanceId, status, idleS]) => ({ instanceId, status, idle: metrics(idleS) })),
    ...extra,
  };
}

describe("evaluateIdlePolicy", () => {
  it("warms running instances past warm_after_idle_s and sleeps warm ones past sleep_after_idle_s", () => {
    const actions = evaluateIdlePolicy(
      [
        view("web", [
          ["i-00000001", "running", 299],
          ["i-00000002", "running", 300],
          ["i-00000003", "warm", 899],
          ["i-00000004", "warm", 900],
          ["i-00000005", "sleeping", 5000],
          ["i-00000006", "stopped", 5000],
        ]),
      ],
      false,
    );
    expect(actions.map((a) => [a.kind, a.instanceId])).toEqual([
      ["sleep", "i-00000004"],
      ["warm", "i-00000002"],
    ]);
    expect(actions[0]?.reason).toBe("idle 900s >= sleep_after_idle_s 900");
    expect(actions[1]?.reason).toBe("idle 300s >= warm_after_idle_s 300");
  });

  it("sleeps a running instance already past sleep_after_idle_s directly", () => {
    const actions = evaluateIdlePolicy([view("web", [["i-00000001", "running", 1000]])], false);
    expect(actions.map((a) => a.kind)).toEqual(["sleep"]);
  });

  it("uses each pool's own policy", () => {
    const short = { ...policy, warmAfterIdleS: 10, sleepAfterIdleS: 20 };
    const actions = evaluateIdlePolicy(
      [view("a", [["i-0000000a", "running", 15]], { sleepPolicy: short }), view("b", [["i-0000000b", "running", 15]])],
      false,
    );
    expect(actions.map((a) => a.instanceId)).toEqual(["i-0000000a"]);
  });

  it("skips pinned and critical pools, even under memory pressure", () => {
    const pools = [
      view("pinned", [["i-00000001", "running", 10_000]], { pinned: true }),
      view("critical", [["i-00000002", "warm", 10_000]], { critical: true }),
    ];
    expect(evaluateIdlePolicy(pools, false)).toEqual([]);
    expect(evaluateIdlePolicy(pools, true)).toEqual([]);
  });

  it("under memory pressure sleeps the coldest instance below its thresholds", () => {
    const pools = [view("web", [["i-00000001", "running", 10], ["i-00000002", "running", 120], ["i-00000003", "warm", 60]])];
    const actions = evaluateIdlePolicy(pools, true);
    expect(actions).toHaveLength(1);
    expect(actions[0]).toMatchObject({ kind: "sleep", instanceId: "i-00000002" });
    expect(actions[0]?.reason).toMatch(/memory pressure/);
  });

  it("under memory pressure turns the coldest instance's warm into a sleep, and skips those already sleeping", () => {
    const pools = [
      view("web", [
        ["i-00000001", "warm", 1000], // past sleep threshold already
        ["i-00000002", "running", 400], // would be warmed
        ["i-00000003", "running", 50],
      ]),
    ];
    const actions = evaluateIdlePolicy(pools, true);
    expect(actions.map((a) => [a.kind, a.instanceId])).toEqual([
      ["sleep", "i-00000001"],
      ["sleep", "i-00000002"],
    ]);
  });

  it("pressureSleeps sets how many extra sleeps one evaluation makes", () => {
    const pools = [view("web", [["i-00000001", "running", 1], ["i-00000002", "running", 2], ["i-00000003", "running", 3]])];
    expect(evaluateIdlePolicy(pools, true, { pressureSleeps: 2 }).map((a) => a.instanceId)).toEqual(["i-00000003", "i-00000002"]);
    expect(evaluateIdlePolicy(pools, true, { pressureSleeps: 0 })).toEqual([]);
  });

  const instanceArb = fc.record({
    n: fc.integer({ min: 0, max: 0xffffff }),
    status: fc.constantFrom(...INSTANCE_STATUSES),
    idleS: fc.integer({ min: 0, max: 2000 }),
  });
  const poolArb = fc.record({
    pinned: fc.boolean(),
    critical: fc.boolean(),
    warmAfterIdleS: fc.integer({ min: 1, max: 1000 }),
    extraSleepS: fc.integer({ min: 0, max: 1000 }),
    instances: fc.array(instanceArb, { maxLength: 8 }),
  });
  const poolsArb = fc.array(poolArb, { maxLength: 5 }).map((pools) => {
    let seq = 0;
    return pools.map(
      (p, i): IdlePoolView => ({
        poolId: `p${i}`,
        pinned: p.pinned,
        critical: p.critical,
        sleepPolicy: { ...policy, warmAfterIdleS: p.warmAfterIdleS, sleepAfterIdleS: p.warmAfterIdleS + p.extraSleepS },
        instances: p.instances.map((inst) => ({
          instanceId: `i-${(seq++).toString(16).padStart(8, "0")}`,
          status: inst.status,
          idle: metrics(inst.idleS),
        })),
      }),
    );
  });

  it("property: never acts on pinned/critical pools or non-running/warm instances; ordered coldest first", () => {
    fc.assert(
      fc.property(poolsArb, fc.boolean(), (pools, pressure) => {
        const actions = evaluateIdlePolicy(pools, pressure);
        const owner = new Map(pools.flatMap((p) => p.instances.map((i) => [i.instanceId, { pool: p, inst: i }] as const)));
        const ids = actions.map((a) => a.instanceId);
        expect(new Set(ids).size).toBe(ids.length);
        for (const a of actions) {
          const { pool, inst } = owner.get(a.instanceId)!;
          expect(pool.pinned || pool.critical).toBe(false);
          expect(["running", "warm"]).toContain(inst.status);
          if (a.kind === "warm") expect(inst.status).toBe("running");
        }
        const idles = actions.map((a) => owner.get(a.instanceId)!.inst.idle.idleS);
        for (let i = 1; i < idles.length; i++) expect(idles[i - 1]!).toBeGreaterThanOrEqual(idles[i]!);
      }),
    );
  });

  it("property: without memory pressure, acts exactly on instances past their thresholds", () => {
    fc.assert(
      fc.property(poolsArb, (pools) => {
        const actions = new Map(evaluateIdlePolicy(pools, false).map((a) => [a.instanceId, a.kind]));
        for (const pool of pools) {
          const { warmAfterIdleS, sleepAfterIdleS } = pool.sleepPolicy;
          for (const inst of pool.instances) {
            const eligible = !pool.pinned && !pool.critical;
            const idle = inst.idle.idleS;
            let expected: string | undefined;
            if (eligible && (inst.status === "running" || inst.status === "warm") && idle >= sleepAfterIdleS) expected = "sleep";
            else if (eligible && inst.status === "running" && idle >= warmAfterIdleS) expected = "warm";
            expect(actions.get(inst.instanceId)).toBe(expected);
          }
        }
      }),
    );
  });

  it("property: memory pressure adds at most one sleep beyond the threshold actions, on the coldest remaining instance", () => {
    fc.assert(
      fc.property(poolsArb, (pools) => {
        const calm = evaluateIdlePolicy(pools, false);
        const pressed = evaluateIdlePolicy(pools, true);
        const calmSleeps = new Set(calm.filter((a) => a.kind === "sleep").map((a) => a.instanceId));
        const extra = pressed.filter((a) => a.kind === "sleep" && !calmSleeps.has(a.instanceId));
        const eligible = pools
          .filter((p) => !p.pinned && !p.critical)
          .flatMap((p) => p.instances)
          .filter((i) => (i.status === "running" || i.status === "warm") && !calmSleeps.has(i.instanceId));
        expect(extra).toHaveLength(eligible.length > 0 ? 1 : 0);
        if (extra.length === 1) {
          const coldest = Math.max(...eligible.map((i) => i.idle.idleS));
          const chosen = eligible.find((i) => i.instanceId === extra[0]!.instanceId)!;
          expect(chosen.idle.idleS).toBe(coldest);
        }
        const expectedIds = new Set([...calm.map((a) => a.instanceId), ...extra.map((a) => a.instanceId)]);
        expect(new Set(pressed.map((a) => a.instanceId))).toEqual(expectedIds);
      }),
    );
  });
});
