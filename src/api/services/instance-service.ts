// InstanceService on the instance and lifecycle use cases, plus the live watch (WatchHub) and log streaming.

import { dirname, join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { alreadyExists, invalid, isMvmError, type FieldViolation } from "../../core/errors.js";
import { idViolations, instanceIdViolations } from "../../core/ids.js";
import type { Instance, InstanceStatus } from "../../core/model.js";
import { planTransition, type Operation } from "../../core/state-machine.js";
import { createInstance, getInstance, listInstances, type InstanceKey } from "../../core/use-cases/instances.js";
import {
  destroyInstance,
  execInInstance,
  instanceLogPath,
  instanceStats,
  refreshInstanceHealth,
  startInstance,
  stopInstance,
} from "../../core/use-cases/lifecycle.js";
import { instanceSnapshot, resumeInstance, sleepInstance, wakeInstance, warmInstance } from "../../core/use-cases/sleep-wake.js";
import type { WatchEvent } from "../../core/watch-hub.js";
import { WATCH_OVERFLOW_MESSAGE } from "../../core/watch-hub.js";
import { Compression, type InstanceRef } from "../../../gen/mvm/v1/common_pb.js";
import {
  CreateInstanceRequestSchema,
  DestroyInstanceRequestSchema,
  ExecInstanceRequestSchema,
  InstanceService,
  LogSource,
  ResumeInstanceRequestSchema,
  SleepInstanceRequestSchema,
  StartInstanceRequestSchema,
  StopInstanceRequestSchema,
  WakeInstanceRequestSchema,
  WarmInstanceRequestSchema,
  WatchInstancesResponseSchema,
  type InstanceFilter as ProtoInstanceFilter,
  type InstanceLogLine,
  type WatchInstancesResponse,
} from "../../../gen/mvm/v1/instance_service_pb.js";
import { InstanceStatus as ProtoInstanceStatus } from "../../../gen/mvm/v1/instance_pb.js";
import type { ApiRuntime } from "../api-deps.js";
import { compressionFromProto, instanceStatusFromProto } from "../convert/enums.js";
import { instanceRefOf, instanceToProto } from "../convert/instance.js";
import { snapshotMetaToProto } from "../convert/snapshot.js";
import { instanceStateError, remapViolations } from "../errors.js";
import { lastLines, LogFollower } from "../log-tail.js";
import { filterKeyOf, paginate } from "../paging.js";
import { callInfo, type CallInfo } from "../policy.js";
import { untilShutdown } from "../streams.js";
import { hasLabels } from "./tenant-service.js";
import { type ServiceKit } from "./service-kit.js";

export const DEFAULT_HEARTBEAT_MS = 15_000;
const HEARTBEAT_RANGE = { min: 1_000, max: 300_000 };
const MAX_BOOT_TIMEOUT_MS = 600_000;
const MAX_STOP_TIMEOUT_MS = 600_000;
const MAX_SLEEP_PREP_TIMEOUT_MS = 300_000;
const MAX_WAKE_READY_TIMEOUT_MS = 600_000;
const DEFAULT_EXEC_TIMEOUT_MS = 60_000;
const MAX_EXEC_TIMEOUT_MS = 3_600_000;
const MAX_EXEC_STDIN_BYTES = 1024 * 1024;
const MAX_EXEC_OUTPUT_BYTES = 4 * 1024 * 1024;
const ENV_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]*$/;
const DEFAULT_TAIL_LINES = 100;
const MAX_TAIL_LINES = 10_000;
const LOG_POLL_MS = 250;
const LOG_LINES_PER_MESSAGE = 500;

/** The instance a ref names, every ID checked (`instance.tenant_id`, ...). */
export function instanceKeyOf(ref: InstanceRef | undefined, field = "instance"): InstanceKey {
  if (ref === undefined) throw invalid([{ field, rule: "is required (tenant_id, pool_id and instance_id)" }]);
  const violations = [
    ...idViolations(ref.tenantId, `${field}.tenant_id`),
    ...idViolations(ref.poolId, `${field}.pool_id`),
    ...instanceIdViolations(ref.instanceId, `${field}.instance_id`),
  ];
  if (violations.length > 0) throw invalid(violations);
  return { tenantId: ref.tenantId, poolId: ref.poolId, instanceId: ref.instanceId };
}

function targetOf(key: InstanceKey): string {
  return `${key.tenantId}/${key.poolId}/${key.instanceId}`;
}

function timeoutOverride(value: number, max: number, field: string): number | undefined {
  if (value > max) throw invalid([{ field, rule: `must be at most ${max} (0 means the node default)` }]);
  return value === 0 ? undefined : value;
}

/**
 * Runs a lifecycle operation; a refused state transition comes back with the InstanceStateDetail the contract
 * promises (current state, allowed operations), read from the record as it is now.
 */
async function withStateDetail<T>(runtime: ApiRuntime, key: InstanceKey, op: Operation, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (e) {
    if (!isMvmError(e) || e.kind !== "failed_precondition") throw e;
    const current = await runtime.store.getInstance(key.tenantId, key.poolId, key.instanceId).catch(() => null);
    if (current === null) throw e;
    try {
      planTransition(current.status, op);
    } catch {
      throw instanceStateError(e.message, key, current.status, op);
    }
    throw e;
  }
}

/** The statuses a filter asks for; empty means "every status but destroyed" for lists. UNSPECIFIED matches none. */
function statusSet(statuses: readonly ProtoInstanceStatus[], includeDestroyed: boolean): Set<InstanceStatus> | null {
  if (statuses.length === 0) return null;
  const set = new Set<InstanceStatus>();
  for (const s of statuses) {
    const status = instanceStatusFromProto(s);
    if (status !== undefined) set.add(status);
  }
  if (includeDestroyed) set.add("destroyed");
  return set;
}

interface EffectiveFilter {
  tenantId: string | undefined;
  poolId: string | undefined;
  statuses: readonly ProtoInstanceStatus[];
  labels: Readonly<Record<string, string>>;
}

async function effectiveFilter(kit: ServiceKit, call: CallInfo, filter: ProtoInstanceFilter | undefined): Promise<EffectiveFilter> {
  const tenantId = await kit.policy.scopeTenant(call, filter?.tenantId ?? "", "filter.tenant_id");
  const violations: FieldViolation[] = [];
  const poolId = filter?.poolId ?? "";
  if (poolId !== "") {
    if ((filter?.tenantId ?? "") === "") violations.push({ field: "filter.pool_id", rule: "requires filter.tenant_id" });
    violations.push(...idViolations(poolId, "filter.pool_id"));
  }
  if (tenantId !== undefined) violations.push(...idViolations(tenantId, "filter.tenant_id"));
  if (violations.length > 0) throw invalid(violations);
  return { tenantId, poolId: poolId === "" ? undefined : poolId, statuses: filter?.statuses ?? [], labels: filter?.labels ?? {} };
}

function watchEventToProto(e: WatchEvent): WatchInstancesResponse {
  const base = { revision: BigInt(e.revision), resumeToken: e.resumeToken };
  switch (e.event.kind) {
    case "upsert":
      return create(WatchInstancesResponseSchema, { ...base, event: { case: "upsert", value: instanceToProto(e.event.instance) } });
    case "deleted":
      return create(WatchInstancesResponseSchema, {
        ...base,
        event: { case: "deleted", value: { instance: instanceRefOf(e.event.instance), lastKnown: instanceToProto(e.event.instance) } },
      });
    case "initial_state_complete":
      return create(WatchInstancesResponseSchema, { ...base, event: { case: "initialStateComplete", value: { instanceCount: e.event.instanceCount } } });
    case "heartbeat":
      return create(WatchInstancesResponseSchema, { ...base, event: { case: "heartbeat", value: { at: timestampNow() } } });
    case "snapshot_reset":
      return create(WatchInstancesResponseSchema, { ...base, event: { case: "snapshotReset", value: { reason: e.event.reason } } });
  }
}

/** Cuts `bytes` at the output limit. */
function capped(text: string): { bytes: Uint8Array; cut: boolean } {
  const bytes = Buffer.from(text, "utf8");
  return bytes.length > MAX_EXEC_OUTPUT_BYTES ? { bytes: bytes.subarray(0, MAX_EXEC_OUTPUT_BYTES), cut: true } : { bytes, cut: false };
}

export function instanceService(kit: ServiceKit): ServiceImpl<typeof InstanceService> {
  return {
    async createInstance(req, context) {
      const call = callInfo(context);
      const pool = req.pool;
      if (pool === undefined) throw invalid([{ field: "pool", rule: "is required (tenant_id and pool_id)" }]);
      const violations = [
        ...idViolations(pool.tenantId, "pool.tenant_id"),
        ...idViolations(pool.poolId, "pool.pool_id"),
        ...(req.instanceId === "" ? [] : instanceIdViolations(req.instanceId, "instance_id")),
      ];
      if (violations.length > 0) throw invalid(violations);
      const key = { tenantId: pool.tenantId, poolId: pool.poolId };
      await kit.policy.requireTenant(call, key.tenantId, `${key.tenantId}/${key.poolId}`);
      return kit.once(call, CreateInstanceRequestSchema, req, req.requestId, async () => {
        let runtime = kit.runtimeFor(call);
        if (req.instanceId !== "") {
          // Instance IDs are unique on the node; the use case draws IDs from `ids`, so a chosen ID is handed to it there.
          for (const t of await runtime.store.listTenants()) {
            for (const p of await runtime.store.listPools(t.tenantId)) {
              if ((await runtime.store.getInstance(t.tenantId, p.poolId, req.instanceId)) !== null) throw alreadyExists(`instance ${req.instanceId}`);
            }
          }
          const hex = req.instanceId.slice(2);
          runtime = kit.runtimeFor(call, { ids: { randomHex: () => hex } });
        }
        let instance = await withFieldPaths((f) => (f === "tenant_id" || f === "pool_id" ? `pool.${f}` : f), () => createInstance(runtime, key));
        if (req.start) {
          const started = { ...key, instanceId: instance.instanceId };
          instance = await withStateDetail(runtime, started, "start", () => startInstance(runtime, started));
        }
        return { instance: instanceToProto(instance) };
      });
    },

    async getInstance(req, context) {
      const call = callInfo(context);
      const key = instanceKeyOf(req.instance);
      await kit.policy.requireTenant(call, key.tenantId, targetOf(key));
      const runtime = kit.runtimeFor(call);
      const instance = await getInstance(runtime, key);
      const snapshot = instance.status === "sleeping" ? await instanceSnapshot(runtime, key).catch(() => null) : null;
      return { instance: instanceToProto(instance), ...(snapshot ? { snapshot: snapshotMetaToProto(snapshot) } : {}) };
    },

    async getInstanceStats(req, context) {
      const call = callInfo(context);
      const key = instanceKeyOf(req.instance);
      await kit.policy.requireTenant(call, key.tenantId, targetOf(key));
      const runtime = kit.runtimeFor(call);
      await getInstance(runtime, key);
      await refreshInstanceHealth(runtime, key);
      const stats = await instanceStats(runtime, key);
      const counter = (value: number | undefined) => (value === undefined ? undefined : BigInt(Math.max(0, Math.round(value))));
      return {
        instance: instanceToProto(stats.instance),
        cpuUsageUs: counter(stats.cgroup?.cpuUsageUs),
        memoryBytes: counter(stats.cgroup?.memoryBytes),
        memoryLimitBytes: counter(stats.cgroupLimits?.memoryBytes),
        tapRxBytes: counter(stats.tap?.rxBytes),
        tapTxBytes: counter(stats.tap?.txBytes),
      };
    },

    async listInstances(req, context) {
      const call = callInfo(context);
      const filter = await effectiveFilter(kit, call, req.filter);
      const runtime = kit.runtimeFor(call);
      const statuses = statusSet(filter.statuses, false);
      const tenantLabels = new Map((await runtime.store.listTenants()).map((t) => [t.tenantId, t.labels] as const));
      const keyOf = (i: Instance) => `${i.tenantId}\u0000${i.poolId}\u0000${i.instanceId}`;
      const matching = (await listInstances(runtime, { tenantId: filter.tenantId, poolId: filter.poolId }))
        .filter((i) => (statuses === null ? i.status !== "destroyed" : statuses.has(i.status)))
        .filter((i) => hasLabels(tenantLabels.get(i.tenantId) ?? {}, filter.labels))
        .sort((a, b) => (keyOf(a) < keyOf(b) ? -1 : 1));
      const page = paginate(matching, keyOf, req, filterKeyOf(filter));
      return { instances: page.items.map(instanceToProto), nextPageToken: page.nextPageToken };
    },

    async startInstance(req, context) {
      const call = callInfo(context);
      const key = instanceKeyOf(req.instance);
      const bootTimeoutMs = timeoutOverride(req.bootTimeoutMs, MAX_BOOT_TIMEOUT_MS, "boot_timeout_ms");
      await kit.policy.requireTenant(call, key.tenantId, targetOf(key));
      return kit.once(call, StartInstanceRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call, bootTimeoutMs === undefined ? {} : { bootTimeoutMs });
        const instance = await withStateDetail(runtime, key, "start", () => withInstancePaths(() => startInstance(runtime, key)));
        return { instance: instanceToProto(instance) };
      });
    },

    async stopInstance(req, context) {
      const call = callInfo(context);
      const key = instanceKeyOf(req.instance);
      const stopTimeoutMs = timeoutOverride(req.timeoutMs, MAX_STOP_TIMEOUT_MS, "timeout_ms");
      await kit.policy.requireTenant(call, key.tenantId, targetOf(key));
      return kit.once(call, StopInstanceRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call, stopTimeoutMs === undefined ? {} : { stopTimeoutMs });
        const instance = await withStateDetail(runtime, key, "stop", () => withInstancePaths(() => stopInstance(runtime, key)));
        return { instance: instanceToProto(instance) };
      });
    },

    async warmInstance(req, context) {
      const call = callInfo(context);
      const key = instanceKeyOf(req.instance);
      await kit.policy.requireTenant(call, key.tenantId, targetOf(key));
      return kit.once(call, WarmInstanceRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call);
        const instance = await withStateDetail(runtime, key, "warm", () => withInstancePaths(() => warmInstance(runtime, key)));
        return { instance: instanceToProto(instance) };
      });
    },

    async resumeInstance(req, context) {
      const call = callInfo(context);
      const key = instanceKeyOf(req.instance);
      await kit.policy.requireTenant(call, key.tenantId, targetOf(key));
      return kit.once(call, ResumeInstanceRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call);
        const instance = await withStateDetail(runtime, key, "resume", () => withInstancePaths(() => resumeInstance(runtime, key)));
        return { instance: instanceToProto(instance) };
      });
    },

    async sleepInstance(req, context) {
      const call = callInfo(context);
      const key = instanceKeyOf(req.instance);
      const prepTimeoutMs = timeoutOverride(req.prepTimeoutMs, MAX_SLEEP_PREP_TIMEOUT_MS, "prep_timeout_ms");
      const violations: FieldViolation[] = [];
      const compression = req.compression === Compression.UNSPECIFIED ? undefined : compressionFromProto(req.compression, "compression", violations);
      if (violations.length > 0) throw invalid(violations);
      await kit.policy.requireTenant(call, key.tenantId, targetOf(key));
      return kit.once(call, SleepInstanceRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call);
        const instance = await withStateDetail(runtime, key, "sleep", () =>
          withInstancePaths(() =>
            sleepInstance(runtime, key, { ...(prepTimeoutMs === undefined ? {} : { prepTimeoutMs }), ...(compression === undefined ? {} : { compression }) }),
          ),
        );
        const snapshot = await instanceSnapshot(runtime, key).catch(() => null);
        return { instance: instanceToProto(instance), ...(snapshot ? { snapshot: snapshotMetaToProto(snapshot) } : {}) };
      });
    },

    async wakeInstance(req, context) {
      const call = callInfo(context);
      const key = instanceKeyOf(req.instance);
      const readyTimeoutMs = timeoutOverride(req.readyTimeoutMs, MAX_WAKE_READY_TIMEOUT_MS, "ready_timeout_ms");
      await kit.policy.requireTenant(call, key.tenantId, targetOf(key));
      return kit.once(call, WakeInstanceRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call);
        const instance = await withStateDetail(runtime, key, "wake", () =>
          withInstancePaths(() => wakeInstance(runtime, key, readyTimeoutMs === undefined ? {} : { readyTimeoutMs })),
        );
        return { instance: instanceToProto(instance) };
      });
    },

    async destroyInstance(req, context) {
      const call = callInfo(context);
      const key = instanceKeyOf(req.instance);
      const stopTimeoutMs = timeoutOverride(req.timeoutMs, MAX_STOP_TIMEOUT_MS, "timeout_ms");
      await kit.policy.requireTenant(call, key.tenantId, targetOf(key));
      return kit.once(call, DestroyInstanceRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call, stopTimeoutMs === undefined ? {} : { stopTimeoutMs });
        const tombstone = await withStateDetail(runtime, key, "destroy", () =>
          withInstancePaths(() => destroyInstance(runtime, key, { keepVolumes: req.keepVolumes })),
        );
        return { instance: instanceToProto(tombstone) };
      });
    },

    async execInstance(req, context) {
      const call = callInfo(context);
      const key = instanceKeyOf(req.instance);
      const violations: FieldViolation[] = [];
      if (req.argv.length === 0) violations.push({ field: "argv", rule: "must name a program to run (at least one element)" });
      if (req.stdin.length > MAX_EXEC_STDIN_BYTES) violations.push({ field: "stdin", rule: `must be at most ${MAX_EXEC_STDIN_BYTES} bytes` });
      for (const name of Object.keys(req.env)) {
        if (!ENV_NAME_PATTERN.test(name)) violations.push({ field: `env["${name}"]`, rule: "name must match [A-Za-z_][A-Za-z0-9_]*" });
      }
      if (req.timeoutMs > MAX_EXEC_TIMEOUT_MS) violations.push({ field: "timeout_ms", rule: `must be at most ${MAX_EXEC_TIMEOUT_MS} (0 means 60000)` });
      if (violations.length > 0) throw invalid(violations);
      await kit.policy.requireTenant(call, key.tenantId, targetOf(key));
      return kit.once(call, ExecInstanceRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call);
        const env = Object.entries(req.env).map(([k, v]) => `${k}=${v}`);
        // The guest channel runs argv without a shell; `env` adds the variables the same way.
        const argv = env.length > 0 ? ["env", ...env, ...req.argv] : [...req.argv];
        const timeoutMs = req.timeoutMs === 0 ? DEFAULT_EXEC_TIMEOUT_MS : req.timeoutMs;
        const input = req.stdin.length > 0 ? Buffer.from(req.stdin).toString("utf8") : undefined;
        try {
          const result = await withInstancePaths(() => execInInstance(runtime, key, argv, { timeoutMs, input }));
          const stdout = capped(result.stdout);
          const stderr = capped(result.stderr);
          return { exitCode: result.exitCode, stdout: stdout.bytes, stderr: stderr.bytes, timedOut: false, truncated: stdout.cut || stderr.cut };
        } catch (e) {
          // The SSH guest channel reports a timeout as an error; the contract reports it as a result.
          if (!isMvmError(e) && e instanceof Error && /timed out/.test(e.message)) {
            return { exitCode: -1, stdout: new Uint8Array(), stderr: Buffer.from(e.message), timedOut: true, truncated: false };
          }
          throw e;
        }
      });
    },

    async *streamInstanceLogs(req, context) {
      const call = callInfo(context);
      const key = instanceKeyOf(req.instance);
      if (req.tailLines > MAX_TAIL_LINES) throw invalid([{ field: "tail_lines", rule: `must be at most ${MAX_TAIL_LINES} (0 means 100)` }]);
      await kit.policy.requireTenant(call, key.tenantId, targetOf(key));
      const runtime = kit.runtimeFor(call);
      const instance = await getInstance(runtime, key);
      const consolePath = await instanceLogPath(runtime, key);
      const sources: Array<{ source: LogSource; path: string }> = [];
      if (req.source !== LogSource.VMM) sources.push({ source: LogSource.CONSOLE, path: consolePath });
      if (req.source !== LogSource.CONSOLE) {
        // Each adapter keeps its VMM's own output beside the console log, named after the hypervisor.
        const hypervisor = instance.vmm?.hypervisor ?? "qemu";
        sources.push({ source: LogSource.VMM, path: join(dirname(consolePath), `${hypervisor}.log`) });
      }
      const tail = req.tailLines === 0 ? DEFAULT_TAIL_LINES : req.tailLines;
      const followers: Array<{ source: LogSource; follower: LogFollower }> = [];
      const batch = function* (lines: InstanceLogLine[]) {
        for (let i = 0; i < lines.length; i += LOG_LINES_PER_MESSAGE) yield { lines: lines.slice(i, i + LOG_LINES_PER_MESSAGE) };
      };
      for (const { source, path } of sources) {
        const { lines, offset } = await lastLines(path, tail);
        followers.push({ source, follower: new LogFollower(path, offset) });
        yield* batch(lines.map((text) => ({ source, text, at: timestampNow() }) as InstanceLogLine));
      }
      if (!req.follow) return;
      const { shutdownSignal } = kit.deps;
      const polling = async function* () {
        for (;;) {
          const lines: InstanceLogLine[] = [];
          for (const { source, follower } of followers) {
            for (const text of await follower.poll()) lines.push({ source, text, at: timestampNow() } as InstanceLogLine);
          }
          yield* batch(lines);
          await new Promise((resolve) => setTimeout(resolve, LOG_POLL_MS));
        }
      };
      yield* untilShutdown(polling(), shutdownSignal, context.signal);
    },

    async *watchInstances(req, context) {
      const call = callInfo(context);
      const filter = await effectiveFilter(kit, call, req.filter);
      const interval = req.heartbeatIntervalMs === 0 ? (kit.deps.defaultHeartbeatMs ?? DEFAULT_HEARTBEAT_MS) : req.heartbeatIntervalMs;
      if (req.heartbeatIntervalMs !== 0 && (interval < HEARTBEAT_RANGE.min || interval > HEARTBEAT_RANGE.max)) {
        throw invalid([{ field: "heartbeat_interval_ms", rule: `must be ${HEARTBEAT_RANGE.min}-${HEARTBEAT_RANGE.max} (0 means 15000)` }]);
      }
      const statuses = statusSet(filter.statuses, true);
      // Tenant labels are resolved once, at subscription: the hub's filter must depend on the record alone.
      let tenants: Set<string> | null = null;
      if (Object.keys(filter.labels).length > 0) {
        const all = await kit.runtimeFor(call).store.listTenants();
        tenants = new Set(all.filter((t) => hasLabels(t.labels, filter.labels)).map((t) => t.tenantId));
      }
      const matches = (i: Instance) =>
        (filter.tenantId === undefined || i.tenantId === filter.tenantId) &&
        (filter.poolId === undefined || i.poolId === filter.poolId) &&
        (statuses === null || statuses.has(i.status)) &&
        (tenants === null || tenants.has(i.tenantId));
      const watcher = kit.deps.watchHub.watch({ filter: matches, filterKey: filterKeyOf(filter), resumeToken: req.resumeToken, signal: context.signal });
      const { metrics } = kit.deps;
      metrics.watchers.inc({ stream: "instances" });
      let lastSent = Date.now();
      const timer = setInterval(() => {
        if (Date.now() - lastSent >= interval * 0.9) watcher.heartbeat();
      }, Math.max(250, Math.floor(interval / 4)));
      timer.unref();
      try {
        for await (const event of untilShutdown(watcher, kit.deps.shutdownSignal, context.signal)) {
          lastSent = Date.now();
          yield watchEventToProto(event);
        }
      } catch (e) {
        if (isMvmError(e) && e.kind === "exhausted" && e.message === WATCH_OVERFLOW_MESSAGE) {
          metrics.watchersCutOff.inc({ stream: "instances" });
          throw new ConnectError(WATCH_OVERFLOW_MESSAGE, Code.ResourceExhausted);
        }
        throw e;
      } finally {
        clearInterval(timer);
        watcher.close();
        metrics.watchers.dec({ stream: "instances" });
      }
    },
  };
}

/** Core names the key fields bare; the request nests them in `instance`. */
async function withInstancePaths<T>(work: () => Promise<T>): Promise<T> {
  return withFieldPaths((f) => (f === "tenant_id" || f === "pool_id" || f === "instance_id" ? `instance.${f}` : f), work);
}

async function withFieldPaths<T>(rename: (field: string) => string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (e) {
    throw remapViolations(e, rename);
  }
}
