// A counter and a histogram for metrics updated on every RPC, registered in a prom-client Registry beside its own.
//
// prom-client validates and hashes the label object and allocates closures on every update: for the per-RPC
// counter and histogram that is several microseconds of each call (bench/rpc-latency.mjs). These keep each label
// set's series in a Map under a key joined from the label values, and give the registry the same structures
// prom-client's own Counter and Histogram give, so a scrape reads exactly as it did
// (tests/unit/metrics/hot-metrics.test.ts compares the exposition text).

import type { Metric, Registry } from "prom-client";

type Labels<L extends string> = Record<L, string | number>;

/** Label values joined in `names` order; NUL cannot occur in a label value the registry prints unescaped. */
function seriesKey<L extends string>(names: readonly L[], labels: Labels<L>): string {
  let key = "";
  for (let i = 0; i < names.length; i++) key += `${labels[names[i]!]}\u0000`;
  return key;
}

/** The label set a series keeps: only the declared names, checked once, when the series is created. */
function seriesLabels<L extends string>(metric: string, names: readonly L[], labels: Labels<L>): Labels<L> {
  const kept = {} as Labels<L>;
  for (const name of Object.keys(labels)) {
    if (!(names as readonly string[]).includes(name)) throw new Error(`Added label "${name}" is not included in initial labelset: ${JSON.stringify(names)} (${metric})`);
  }
  for (const name of names) {
    const value = labels[name];
    if (typeof value !== "string" && typeof value !== "number") throw new TypeError(`${metric}: label ${name} must be a string or a number`);
    kept[name] = value;
  }
  return kept;
}

interface CounterSeries<L extends string> {
  value: number;
  labels: Labels<L>;
}

export class HotCounter<L extends string> {
  readonly type = "counter";
  readonly aggregator = "sum";
  private readonly series = new Map<string, CounterSeries<L>>();

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly labelNames: readonly L[],
    registers: readonly Registry[] = [],
  ) {
    for (const registry of registers) registry.registerMetric(this as unknown as Metric);
  }

  inc(labels: Labels<L>, value = 1): void {
    if (!Number.isFinite(value) || value < 0) throw new Error(`It is not possible to decrease a counter (${this.name}: ${value})`);
    const key = seriesKey(this.labelNames, labels);
    let series = this.series.get(key);
    if (series === undefined) {
      series = { value: 0, labels: seriesLabels(this.name, this.labelNames, labels) };
      this.series.set(key, series);
    }
    series.value += value;
  }

  async get(): Promise<{ help: string; name: string; type: "counter"; values: Array<{ value: number; labels: Labels<L> }>; aggregator: "sum" }> {
    return {
      help: this.help,
      name: this.name,
      type: this.type,
      values: [...this.series.values()].map((s) => ({ value: s.value, labels: { ...s.labels } })),
      aggregator: this.aggregator,
    };
  }

  reset(): void {
    this.series.clear();
  }
}

interface HistogramSeries<L extends string> {
  labels: Labels<L>;
  /** Observations per bucket (not cumulative), by upper bound index. */
  buckets: Float64Array;
  sum: number;
  count: number;
}

interface HistogramValue {
  labels: Record<string, string | number>;
  sharedLabels: Record<string, string | number>;
  value: number;
  metricName: string;
  exemplar: null | undefined;
}

export class HotHistogram<L extends string> {
  readonly type = "histogram";
  readonly aggregator = "sum";
  private readonly series = new Map<string, HistogramSeries<L>>();
  private readonly upperBounds: readonly number[];

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly labelNames: readonly L[],
    buckets: readonly number[],
    registers: readonly Registry[] = [],
  ) {
    this.upperBounds = [...buckets].sort((a, b) => a - b);
    for (const registry of registers) registry.registerMetric(this as unknown as Metric);
  }

  observe(labels: Labels<L>, value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${value}`);
    const key = seriesKey(this.labelNames, labels);
    let series = this.series.get(key);
    if (series === undefined) {
      series = { labels: seriesLabels(this.name, this.labelNames, labels), buckets: new Float64Array(this.upperBounds.length), sum: 0, count: 0 };
      this.series.set(key, series);
    }
    const bounds = this.upperBounds;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= bounds[i]!) {
        series.buckets[i]!++;
        break;
      }
    }
    series.sum += value;
    series.count += 1;
  }

  /** What the registry prints: per series, the cumulative buckets, +Inf, the sum and the count, as prom-client's. */
  async getForPromString(): Promise<{ name: string; help: string; type: "histogram"; values: HistogramValue[]; aggregator: "sum" }> {
    const values: HistogramValue[] = [];
    for (const series of this.series.values()) {
      let cumulative = 0;
      for (let i = 0; i < this.upperBounds.length; i++) {
        cumulative += series.buckets[i]!;
        values.push({ labels: { le: this.upperBounds[i]! }, sharedLabels: series.labels, value: cumulative, metricName: `${this.name}_bucket`, exemplar: null });
      }
      values.push({ labels: { le: "+Inf" }, sharedLabels: series.labels, value: series.count, metricName: `${this.name}_bucket`, exemplar: null });
      values.push({ labels: {}, sharedLabels: series.labels, value: series.sum, metricName: `${this.name}_sum`, exemplar: undefined });
      values.push({ labels: {}, sharedLabels: series.labels, value: series.count, metricName: `${this.name}_count`, exemplar: undefined });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  /** The JSON form (registry.getMetricsAsJSON): each value's labels with the series' labels merged in. */
  async get(): Promise<{ name: string; help: string; type: "histogram"; values: Array<Omit<HistogramValue, "sharedLabels">>; aggregator: "sum" }> {
    const data = await this.getForPromString();
    return {
      ...data,
      values: data.values.map(({ sharedLabels, labels, ...rest }) => ({ ...rest, labels: { ...labels, ...sharedLabels } })),
    };
  }

  reset(): void {
    this.series.clear();
  }
}
