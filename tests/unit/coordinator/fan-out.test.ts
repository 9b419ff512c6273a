import { describe, expect, it } from "vitest";
import { fanOut } from "../../../src/coordinator/fan-out.js";
import { fleetVerdict, FLEET_EXIT_CODES } from "../../../src/coordinator/fleet-verdict.js";
import type { NodeFailure } from "../../../src/coordinator/node-failure.js";
import { backoffDelayMs, DEFAULT_RETRY_POLICY } from "../../../src/coordinator/retry-policy.js";

class Unavailable extends Error {}
const classify = (e: unknown): NodeFailure => (e instanceof Unavailable ? { kind: "unavailable", message: e.message } : { kind: "not_found", message: String((e as Error).message) });
const fastRetry = { maxAttempts: 3, initialDelayMs: 5, maxDelayMs: 20, multiplier: 2, jitter: 0 };
const delay = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      reject(new Error("aborted"));
    });
  });

describe("fanOut", () => {
  it("never has more than `concurrency` calls in flight and returns outcomes in node order", async () => {
    let inFlight = 0;
    let peak = 0;
    const nodes = Array.from({ length: 40 }, (_, i) => i);
    const outcomes = await fanOut(
      nodes,
      async (n) => {
        inFlight++;
        peak = Math.max(peak, inFlight);
        await delay(2 + (n % 5));
        inFlight--;
        return n * 10;
      },
      { concurrency: 7 },
    );
    expect(peak).toBe(7);
    expect(outcomes.map((o) => (o.ok ? o.value : -1))).toEqual(nodes.map((n) => n * 10));
  });

  it("retries unavailable with backoff until it succeeds, and never retries another failure", async () => {
    const calls = new Map<string, number>();
    const outcomes = await fanOut(
      ["flaky", "missing"],
      async (n, _signal, attempt) => {
        calls.set(n, attempt);
        if (n === "flaky" && attempt < 3) throw new Unavailable("connection refused");
        if (n === "missing") throw new Error("no such instance");
        return "done";
      },
      { classify, retry: fastRetry },
    );
    expect(outcomes[0]).toMatchObject({ ok: true, value: "done", attempts: 3 });
    expect(outcomes[1]).toMatchObject({ ok: false, attempts: 1, error: { kind: "not_found" } });
    expect(calls.get("missing")).toBe(1);
  });

  it("gives up after maxAttempts, reporting the last failure", async () => {
    const [o] = await fanOut(["down"], async () => Promise.reject(new Unavailable("refused")), { classify, retry: fastRetry });
    expect(o).toMatchObject({ ok: false, attempts: 3, error: { kind: "unavailable", message: "refused" } });
  });

  it("reports a node slower than the deadline as a timeout while the others succeed, and aborts its call", async () => {
    let slowSignal: AbortSignal | undefined;
    const started = Date.now();
    const outcomes = await fanOut(
      ["a", "slow", "b"],
      async (n, signal) => {
        if (n !== "slow") return n;
        slowSignal = signal;
        await new Promise(() => undefined); // never answers, and ignores the signal
        return n;
      },
      { deadlineMs: 100 },
    );
    expect(Date.now() - started).toBeLessThan(1000);
    expect(outcomes.map((o) => (o.ok ? "ok" : o.error.kind))).toEqual(["ok", "timeout", "ok"]);
    expect(slowSignal?.aborted).toBe(true);
    expect(fleetVerdict(outcomes)).toBe("partial");
  });

  it("cancellation aborts every call in flight and reports the rest as cancelled", async () => {
    const cancel = new AbortController();
    const signals: AbortSignal[] = [];
    const running = fanOut(
      Array.from({ length: 10 }, (_, i) => i),
      async (_n, signal) => {
        signals.push(signal);
        await delay(60_000, signal);
        return 1;
      },
      { concurrency: 4, deadlineMs: 60_000, signal: cancel.signal },
    );
    await delay(20);
    cancel.abort();
    const outcomes = await running;
    expect(signals).toHaveLength(4);
    expect(signals.every((s) => s.aborted)).toBe(true);
    expect(outcomes.every((o) => !o.ok && o.error.kind === "cancelled")).toBe(true);
    expect(outcomes.filter((o) => o.attempts === 0)).toHaveLength(6);
    expect(fleetVerdict(outcomes)).toBe("failed");
  });
});

describe("verdict and backoff", () => {
  it("maps all-ok, partial and all-failed to distinct exit codes", () => {
    expect(FLEET_EXIT_CODES[fleetVerdict([{ ok: true }, { ok: true }])]).toBe(0);
    expect(FLEET_EXIT_CODES[fleetVerdict([{ ok: true }, { ok: false }])]).toBe(10);
    expect(FLEET_EXIT_CODES[fleetVerdict([{ ok: false }, { ok: false }])]).toBe(11);
    expect(fleetVerdict([])).toBe("ok");
  });

  it("grows exponentially, stays under the cap, and jitter only shortens", () => {
    const p = { ...DEFAULT_RETRY_POLICY, initialDelayMs: 100, maxDelayMs: 1000, multiplier: 2, jitter: 0.5 };
    expect([1, 2, 3, 4, 5].map((a) => backoffDelayMs(a, p, () => 0))).toEqual([100, 200, 400, 800, 1000]);
    for (let a = 1; a < 10; a++) {
      const d = backoffDelayMs(a, p, Math.random);
      expect(d).toBeLessThanOrEqual(Math.min(1000, 100 * 2 ** (a - 1)));
      expect(d).toBeGreaterThanOrEqual(Math.min(1000, 100 * 2 ** (a - 1)) / 2);
    }
  });
});
