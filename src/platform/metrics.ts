// The Prometheus metrics of SPEC §8.4 on a registry of their own (never prom-client's global one, so that tests and
// several agents in one process do not collide). Every metric here has a caller that updates it; a metric without
// one is worse than none, because a flat zero looks like health.
//
// Units: durations in seconds (Prometheus convention), sizes in bytes. Bucket choices, upper bounds in seconds:
// - rpc: 1 ms … 30 s. Unary calls on a host are mostly sub-10 ms; lifecycle calls that boot or snapshot a VM reach
//   seconds. Streaming calls (WatchInstances, logs, builds) must not be observed here: their duration is the
//   client's choice, not a latency.
// - boot: 50 ms … 2 min. Firecracker boots in ~100-200 ms; QEMU under TCG (no KVM) takes tens of seconds.
// - wake: 10 ms … 30 s. A snapshot restore is tens of ms when memory is loaded lazily, seconds for large compressed
//   snapshots.
// - sleep: 50 ms … 2 min. Dominated by writing guest memory (GiBs) to disk, plus compression.
// - reconcile: 10 ms … 5 min. A pass that changes nothing is fast; one that builds images or boots many instances
//   is long.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { HotCounter, HotHistogram } from "./hot-metrics.js";

export const RPC_DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
export const BOOT_DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120];
export const WAKE_DURATION_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30];
export const SLEEP_DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120];
export const RECONCILE_DURATION_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/** What `setInstanceCounts` needs of an instance record (structural, so platform does not depend on core). */
export interface CountedInstance {
  tenantId: string;
  poolId: string;
  status: string;
}

/** What `setInstanceIdle` needs of an instance's idle metrics (structural, so platform does not depend on core). */
export interface IdleSecondsOf {
  tenantId: string;
  poolId: string;
  instanceId: string;
  idleS: number;
}

export interface MetricsOptions {
  /** Also collect prom-client's process metrics (CPU, memory, event loop lag, GC, handles). Default true. */
  processMetrics?: boolean;
  /** Prefix of every mvm metric name. Default "mvm_". Process metrics keep their standard names. */
  prefix?: string;
}

export interface Metrics {
  readonly registry: Registry;
  /** RPCs handled, by gRPC service (`mvm.v1.InstanceService`), method and status code name (`ok`, `not_found`, …). */
  readonly rpcRequests: HotCounter<"service" | "method" | "code">;
  readonly rpcDuration: HotHistogram<"service" | "method">;
  /** Instance records by tenant, pool and status; maintained by `setInstanceCounts`. */
  readonly instances: Gauge<"tenant" | "pool" | "status">;
  /** State machine transitions taken (from status, to status, operation). */
  readonly transitions: Counter<"from" | "to" | "operation">;
  readonly bootDuration: Histogram<"hypervisor">;
  readonly wakeDuration: Histogram<"hypervisor">;
  /** Where a wake's time went: `prepare` (checks, snapshot hash, network, cgroup, disks), `restore`, `guest`. */
  readonly wakePhaseDuration: Histogram<"hypervisor" | "phase">;
  readonly sleepDuration: Histogram<"hypervisor">;
  /** Reconcile passes by result: `success` (every item converged), `partial` (some items failed), `failure`. */
  readonly reconcileRuns: Counter<"result">;
  readonly reconcileDuration: Histogram<string>;
  /** Items a reconcile pass failed on, by error kind (`exhausted`, `unavailable`, …). */
  readonly reconcileErrors: Counter<"kind">;
  /** Operations refused by a quota, by tenant and limit name (`max_running`, …). */
  readonly quotaRejections: Counter<"tenant" | "limit">;
  /** Bytes of snapshots on disk per tenant; maintained by `setSnapshotBytes`. */
  readonly snapshotBytes: Gauge<"tenant">;
  /** Audit entries written, by action and outcome. */
  readonly auditEntries: Counter<"action" | "outcome">;
  /** Open watch streams, by stream (`instances`, `audit`). */
  readonly watchers: Gauge<"stream">;
  /** Watchers cut off because their buffer overflowed (each one lost its queued events and must resume). */
  readonly watchersCutOff: Counter<"stream">;
  /** Warm and sleep actions of the idle policy, by tenant, pool, action and result (`success`, `failure`, `skipped`). */
  readonly idleActions: Counter<"tenant" | "pool" | "action" | "result">;
  /** Later tries of a wake hook the guest had not answered, by tenant, pool and result (`answered`, `unanswered`). */
  readonly wakeHookRetries: Counter<"tenant" | "pool" | "result">;
  /** Idle seconds of each running or warm instance as the idle sampler last saw it; maintained by `setInstanceIdle`. */
  readonly instanceIdleSeconds: Gauge<"tenant" | "pool" | "instance">;
  /** 1 while the idle policy judges the host under memory pressure, else 0. */
  readonly hostMemoryPressure: Gauge<string>;

  /** Counts an RPC; a unary one (`seconds` not null) also goes into the latency histogram. */
  observeRpc(service: string, method: string, code: string, seconds: number | null): void;
  recordTransition(from: string, to: string, operation: string): void;
  /** Replaces every instance count (label sets of pools or tenants that are gone disappear). */
  setInstanceCounts(instances: Iterable<CountedInstance>): void;
  /** Replaces every tenant's snapshot byte count. */
  setSnapshotBytes(bytesByTenant: Readonly<Record<string, number>> | ReadonlyMap<string, number>): void;
  /** Replaces every instance's idle seconds (instances no longer sampled disappear). */
  setInstanceIdle(instances: Iterable<IdleSecondsOf>): void;
  /** The exposition text for a scrape. */
  render(): Promise<string>;
  /** The Content-Type header for `render()`'s output. */
  readonly contentType: string;
}

export function createMetrics(options: MetricsOptions = {}): Metrics {
  const registry = new Registry();
  const p = options.prefix ?? "mvm_";
  const registers = [registry];
  if (options.processMetrics ?? true) collectDefaultMetrics({ register: registry });

  // Updated on every call: the lighter implementations (hot-metrics.ts), printed exactly as prom-client's.
  const rpcRequests = new HotCounter(`${p}rpc_requests_total`, "RPCs handled, by service, method and status code", ["service", "method", "code"] as const, registers);
  const rpcDuration = new HotHistogram(`${p}rpc_duration_seconds`, "Latency of unary RPCs, seconds", ["service", "method"] as const, RPC_DURATION_BUCKETS, registers);
  const instances = new Gauge({
    name: `${p}instances`,
    help: "Instance records by tenant, pool and status",
    labelNames: ["tenant", "pool", "status"] as const,
    registers,
  });
  const transitions = new Counter({
    name: `${p}instance_transitions_total`,
    help: "Instance state transitions, by from status, to status and operation",
    labelNames: ["from", "to", "operation"] as const,
    registers,
  });
  const bootDuration = new Histogram({
    name: `${p}boot_duration_seconds`,
    help: "Cold boot time from VMM start to the guest answering, seconds",
    labelNames: ["hypervisor"] as const,
    buckets: BOOT_DURATION_BUCKETS,
    registers,
  });
  const wakeDuration = new Histogram({
    name: `${p}wake_duration_seconds`,
    help: "Wake time from restore start to the guest answering, seconds",
    labelNames: ["hypervisor"] as const,
    buckets: WAKE_DURATION_BUCKETS,
    registers,
  });
  const wakePhaseDuration = new Histogram({
    name: `${p}wake_phase_duration_seconds`,
    help: "Phases of a successful wake: prepare (checks, snapshot hash, network, cgroup, disks), restore (VMM start to guest running), guest (wake hook until answered), seconds",
    labelNames: ["hypervisor", "phase"] as const,
    buckets: WAKE_DURATION_BUCKETS,
    registers,
  });
  const sleepDuration = new Histogram({
    name: `${p}sleep_duration_seconds`,
    help: "Sleep time from the guest's sleep-prep hook to the VMM exiting, seconds",
    labelNames: ["hypervisor"] as const,
    buckets: SLEEP_DURATION_BUCKETS,
    registers,
  });
  const reconcileRuns = new Counter({
    name: `${p}reconcile_runs_total`,
    help: "Reconcile passes, by result (success, partial, failure)",
    labelNames: ["result"] as const,
    registers,
  });
  const reconcileDuration = new Histogram({
    name: `${p}reconcile_duration_seconds`,
    help: "Duration of reconcile passes, seconds",
    buckets: RECONCILE_DURATION_BUCKETS,
    registers,
  });
  const reconcileErrors = new Counter({
    name: `${p}reconcile_errors_total`,
    help: "Items a reconcile pass failed on, by error kind",
    labelNames: ["kind"] as const,
    registers,
  });
  const quotaRejections = new Counter({
    name: `${p}quota_rejections_total`,
    help: "Operations refused by a tenant quota, by tenant and limit",
    labelNames: ["tenant", "limit"] as const,
    registers,
  });
  const snapshotBytes = new Gauge({
    name: `${p}snapshot_bytes`,
    help: "Bytes of instance snapshots on disk, by tenant",
    labelNames: ["tenant"] as const,
    registers,
  });
  const auditEntries = new Counter({
    name: `${p}audit_entries_total`,
    help: "Audit log entries written, by action and outcome",
    labelNames: ["action", "outcome"] as const,
    registers,
  });
  const watchers = new Gauge({
    name: `${p}watchers`,
    help: "Open watch streams, by stream (instances, audit)",
    labelNames: ["stream"] as const,
    registers,
  });
  const watchersCutOff = new Counter({
    name: `${p}watchers_cut_off_total`,
    help: "Watch streams cut off because the consumer fell behind and the buffer overflowed",
    labelNames: ["stream"] as const,
    registers,
  });

  const idleActions = new Counter({
    name: `${p}idle_actions_total`,
    help: "Warm and sleep actions of the idle policy, by tenant, pool, action and result",
    labelNames: ["tenant", "pool", "action", "result"] as const,
    registers,
  });
  const wakeHookRetries = new Counter({
    name: `${p}wake_hook_retries_total`,
    help: "Later tries of a wake hook the restored guest had not answered, by tenant, pool and result",
    labelNames: ["tenant", "pool", "result"] as const,
    registers,
  });
  const instanceIdleSeconds = new Gauge({
    name: `${p}instance_idle_seconds`,
    help: "Idle time of each running or warm instance at the last idle sample, seconds",
    labelNames: ["tenant", "pool", "instance"] as const,
    registers,
  });
  const hostMemoryPressure = new Gauge({
    name: `${p}host_memory_pressure`,
    help: "1 while the idle policy judges the host under memory pressure, else 0",
    registers,
  });

  return {
    registry,
    rpcRequests,
    rpcDuration,
    instances,
    transitions,
    bootDuration,
    wakeDuration,
    wakePhaseDuration,
    sleepDuration,
    reconcileRuns,
    reconcileDuration,
    reconcileErrors,
    quotaRejections,
    snapshotBytes,
    auditEntries,
    watchers,
    watchersCutOff,
    idleActions,
    wakeHookRetries,
    instanceIdleSeconds,
    hostMemoryPressure,
    observeRpc(service, method, code, seconds) {
      rpcRequests.inc({ service, method, code });
      if (seconds !== null) rpcDuration.observe({ service, method }, seconds);
    },
    recordTransition(from, to, operation) {
      transitions.inc({ from, to, operation });
    },
    setInstanceCounts(list) {
      const counts = new Map<string, { tenant: string; pool: string; status: string; n: number }>();
      for (const i of list) {
        const k = JSON.stringify([i.tenantId, i.poolId, i.status]);
        const c = counts.get(k);
        if (c === undefined) counts.set(k, { tenant: i.tenantId, pool: i.poolId, status: i.status, n: 1 });
        else c.n++;
      }
      // Reset and set in one synchronous step, so a concurrent scrape never sees the gauge half rebuilt.
      instances.reset();
      for (const c of counts.values()) instances.set({ tenant: c.tenant, pool: c.pool, status: c.status }, c.n);
    },
    setSnapshotBytes(bytesByTenant) {
      const entries = bytesByTenant instanceof Map ? [...bytesByTenant] : Object.entries(bytesByTenant);
      snapshotBytes.reset();
      for (const [tenant, bytes] of entries) snapshotBytes.set({ tenant }, bytes);
    },
    setInstanceIdle(list) {
      const rows = [...list];
      instanceIdleSeconds.reset();
      for (const r of rows) instanceIdleSeconds.set({ tenant: r.tenantId, pool: r.poolId, instance: r.instanceId }, r.idleS);
    },
    render: () => registry.metrics(),
    contentType: registry.contentType,
  };
}
