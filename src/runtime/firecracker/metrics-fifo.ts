// Firecracker's metrics FIFO (SPEC §6.1): Firecracker writes one JSON object per flush (every 60 s, and on the
// FlushMetrics action). A FIFO nobody reads fills up and Firecracker drops metrics, so it is drained continuously.
// The reader opens it read-write, which never blocks and never sees end-of-file, so Firecracker can open its end at
// any time. Of every sample, the latency metrics (`latencies_us`) and the API start-up time are kept: they are
// Firecracker's own view of each operation, compared with mvm's to report mvm's overhead.

import { constants, openSync } from "node:fs";
import { Socket } from "node:net";

/** Flattened numeric metrics: `pause_vm` or, for aggregate metrics, `pause_vm.sum_us`. Microseconds. */
export type FirecrackerLatencies = Record<string, number>;

export interface FirecrackerMetricsSample {
  /** Firecracker's `utc_timestamp_ms` of the flush. */
  utcTimestampMs: number | null;
  latenciesUs: FirecrackerLatencies;
  /** `api_server.process_startup_time_us`: from exec to the API accepting requests. */
  processStartupTimeUs: number | null;
}

/** One metrics line; null when it is not a metrics object. Unknown sections are ignored. */
export function parseMetricsLine(line: string): FirecrackerMetricsSample | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    return null;
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) return null;
  const record = parsed as Record<string, unknown>;
  const latenciesUs: FirecrackerLatencies = {};
  const latencies = record.latencies_us;
  if (latencies !== null && typeof latencies === "object") {
    for (const [key, value] of Object.entries(latencies as Record<string, unknown>)) {
      if (typeof value === "number") latenciesUs[key] = value;
      else if (value !== null && typeof value === "object") {
        for (const [sub, inner] of Object.entries(value as Record<string, unknown>)) {
          if (typeof inner === "number") latenciesUs[`${key}.${sub}`] = inner;
        }
      }
    }
  }
  const api = record.api_server as Record<string, unknown> | undefined;
  const startup = api?.process_startup_time_us;
  return {
    utcTimestampMs: typeof record.utc_timestamp_ms === "number" ? record.utc_timestamp_ms : null,
    latenciesUs,
    processStartupTimeUs: typeof startup === "number" ? startup : null,
  };
}

export class MetricsDrain {
  /** The newest sample that carried any latency metric, merged over the earlier ones. */
  latest: FirecrackerMetricsSample | null = null;
  samples = 0;
  private partial = "";

  private constructor(private readonly socket: Socket) {
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => this.consume(chunk));
    // A read error ends the drain; metrics are then lost but the VM is unaffected.
    socket.on("error", () => undefined);
  }

  /** The socket owns the descriptor from here on and closes it when destroyed. */
  static open(fifoPath: string): MetricsDrain {
    const fd = openSync(fifoPath, constants.O_RDWR | constants.O_NONBLOCK);
    const socket = new Socket({ fd, readable: true, writable: false });
    // The drain must not keep a CLI process alive once its work is done.
    socket.unref();
    return new MetricsDrain(socket);
  }

  private consume(chunk: string): void {
    this.partial += chunk;
    const lines = this.partial.split("\n");
    this.partial = lines.pop() ?? "";
    // A line longer than this is not Firecracker's; drop it rather than grow without bound.
    if (this.partial.length > 1 << 20) this.partial = "";
    for (const line of lines) {
      const sample = parseMetricsLine(line.trim());
      if (sample === null) continue;
      this.samples += 1;
      this.latest = {
        utcTimestampMs: sample.utcTimestampMs,
        latenciesUs: { ...(this.latest?.latenciesUs ?? {}), ...sample.latenciesUs },
        processStartupTimeUs: sample.processStartupTimeUs ?? this.latest?.processStartupTimeUs ?? null,
      };
    }
  }

  close(): void {
    this.socket.destroy();
  }
}
