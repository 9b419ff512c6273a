// The hot counter and histogram must scrape exactly as prom-client's own Counter and Histogram given the same updates:
// the same exposition text (both formats) and the same JSON.

import { Counter, Histogram, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { HotCounter, HotHistogram } from "../../../src/platform/hot-metrics.js";

const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

function pair() {
  const reference = new Registry();
  const hot = new Registry();
  return {
    reference,
    hot,
    refCounter: new Counter({ name: "t_requests_total", help: "Requests, by service and code", labelNames: ["service", "code"] as const, registers: [reference] }),
    hotCounter: new HotCounter("t_requests_total", "Requests, by service and code", ["service", "code"] as const, [hot]),
    refHistogram: new Histogram({ name: "t_duration_seconds", help: "Latency, seconds", labelNames: ["service", "method"] as const, buckets: BUCKETS, registers: [reference] }),
    hotHistogram: new HotHistogram("t_duration_seconds", "Latency, seconds", ["service", "method"] as const, BUCKETS, [hot]),
  };
}

async function expectSameScrape(reference: Registry, hot: Registry): Promise<void> {
  expect(await hot.metrics()).toBe(await reference.metrics());
  expect(await hot.getMetricsAsJSON()).toEqual(await reference.getMetricsAsJSON());
  reference.setContentType(Registry.OPENMETRICS_CONTENT_TYPE as never);
  hot.setContentType(Registry.OPENMETRICS_CONTENT_TYPE as never);
  expect(await hot.metrics()).toBe(await reference.metrics());
  reference.setContentType(Registry.PROMETHEUS_CONTENT_TYPE as never);
  hot.setContentType(Registry.PROMETHEUS_CONTENT_TYPE as never);
}

describe("hot metrics", () => {
  it("scrape as prom-client's Counter and Histogram after the same random updates", async () => {
    const m = pair();
    let seed = 7;
    const next = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const services = ["mvm.v1.InstanceService", "mvm.v1.PoolService", 'odd "quoted"\\name\n'];
    const values = [0, 0.001, 0.0009, 0.0025, 0.03, 29.9, 30, 31, 1e6, 0.004];
    for (let i = 0; i < 2000; i++) {
      const service = services[Math.floor(next() * services.length)]!;
      const code = next() < 0.8 ? "ok" : "not_found";
      m.refCounter.inc({ service, code });
      m.hotCounter.inc({ service, code });
      const seconds = next() < 0.5 ? values[Math.floor(next() * values.length)]! : next() * 3;
      m.refHistogram.observe({ service, method: "Get" }, seconds);
      m.hotHistogram.observe({ service, method: "Get" }, seconds);
    }
    m.refCounter.inc({ service: services[0]!, code: "ok" }, 2.5);
    m.hotCounter.inc({ service: services[0]!, code: "ok" }, 2.5);
    const text = await m.hot.metrics();
    expect(text).toContain('t_duration_seconds_bucket{le="0.001",service="mvm.v1.InstanceService",method="Get"}');
    await expectSameScrape(m.reference, m.hot);
  });

  it("scrape as prom-client's when nothing was recorded, and after a reset", async () => {
    const m = pair();
    await expectSameScrape(m.reference, m.hot);
    m.refHistogram.observe({ service: "a", method: "b" }, 0.2);
    m.hotHistogram.observe({ service: "a", method: "b" }, 0.2);
    m.refCounter.inc({ service: "a", code: "ok" });
    m.hotCounter.inc({ service: "a", code: "ok" });
    m.reference.resetMetrics();
    m.hot.resetMetrics();
    await expectSameScrape(m.reference, m.hot);
  });

  it("refuses what prom-client refuses: a label it was not given, a negative increment, a value that is not a number", () => {
    const m = pair();
    expect(() => m.hotCounter.inc({ service: "a", code: "ok", extra: "x" } as never)).toThrow(/extra/);
    expect(() => m.hotCounter.inc({ service: "a", code: "ok" }, -1)).toThrow(/decrease/);
    expect(() => m.hotHistogram.observe({ service: "a", method: "b" }, Number.NaN)).toThrow(/not a valid number/);
    expect(() => m.hotHistogram.observe({ service: "a", method: undefined } as never, 1)).toThrow(/method/);
  });
});
