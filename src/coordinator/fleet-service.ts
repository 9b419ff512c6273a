// FleetService handlers (proto/mvm/v1/fleet_service.proto): thin, like the agent's: check the caller, convert, call
// the fleet operations or the merged view, convert back. Who may do what is decided here per RPC, since the
// coordinator has no audit log of its own: admin and coordinator identities everything, tenants only their tenant,
// nodes nothing.

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextKey, type ServiceImpl } from "@connectrpc/connect";
import type { Instance } from "../core/model.js";
import { instanceRefOf, instanceToProto } from "../api/convert/instance.js";
import { isoToTimestamp } from "../api/convert/timestamps.js";
import type { Identity } from "../platform/pki/identity.js";
import { HeartbeatSchema, InitialStateCompleteSchema, InstanceDeletedSchema, SnapshotResetSchema } from "../../gen/mvm/v1/instance_service_pb.js";
import {
  FleetNodeSchema,
  FleetService,
  NodeCallResultSchema,
  NodeHealth as ProtoNodeHealth,
  WatchFleetInstancesResponseSchema,
  type FleetNode as ProtoFleetNode,
  type WatchFleetInstancesResponse,
} from "../../gen/mvm/v1/fleet_service_pb.js";
import { desiredStateInputFromProto, parsePushDocuments } from "./desired-documents.js";
import type { FanOutOptions } from "./fan-out.js";
import { FLEET_OVERFLOW_MESSAGE, SubscriberOverflow, type FleetEventLog, type FleetStreamEvent } from "./fleet-event-log.js";
import type { FleetNode } from "./fleet-file.js";
import { chooseWakeNode, pushDesiredState, wakeOnNode, type FleetCallContext } from "./fleet-operations.js";
import type { NodeConnections } from "./node-connections.js";
import type { FleetWatchMerger, NodeHealth, NodeWatchStatus } from "./watch-merge.js";

/** Set by the server for every call: the verified client's identity, null when it carries none of ours. */
export const FLEET_CALLER_KEY = createContextKey<Identity | null>(null, { description: "mvm fleet caller" });

export interface FleetServiceDeps {
  nodes: readonly FleetNode[];
  connections: NodeConnections;
  merger: FleetWatchMerger;
  events: FleetEventLog;
  /** Concurrency, retries and the default per-node deadline of pushes and wake searches. */
  fanOut: Omit<FanOutOptions, "classify" | "signal">;
  nodeIds: Map<string, string>;
  /** Aborts every open call when the service stops. */
  shutdownSignal: AbortSignal;
}

const HEARTBEAT_RANGE = { min: 1_000, max: 300_000, default: 15_000 };
const MAX_NODE_TIMEOUT_MS = 600_000;

const HEALTH_TO_PROTO: Record<NodeHealth, ProtoNodeHealth> = {
  connecting: ProtoNodeHealth.CONNECTING,
  up: ProtoNodeHealth.UP,
  down: ProtoNodeHealth.DOWN,
};

function callerOf(values: { get<T>(key: ReturnType<typeof createContextKey<T>>): T }): Identity {
  const caller = values.get(FLEET_CALLER_KEY);
  if (caller === null) throw new ConnectError("client certificate carries no mvm identity of this trust domain", Code.Unauthenticated);
  if (caller.kind === "node") throw new ConnectError("node identities may not call the coordinator", Code.PermissionDenied);
  return caller;
}

/** The tenant a tenant caller is confined to; undefined for operators. */
function tenantScope(caller: Identity, requested: string, field: string): string | undefined {
  if (caller.kind !== "tenant") return requested === "" ? undefined : requested;
  if (requested !== "" && requested !== caller.tenantId) {
    throw new ConnectError(`tenant/${caller.tenantId} may not use ${field} ${JSON.stringify(requested)}: it sees only its own tenant`, Code.PermissionDenied);
  }
  return caller.tenantId;
}

function requireOperator(caller: Identity, what: string): void {
  if (caller.kind === "tenant") throw new ConnectError(`tenant/${caller.tenantId} may not ${what}`, Code.PermissionDenied);
}

function fleetNodeToProto(node: FleetNode | undefined, status: NodeWatchStatus, instanceCount: number, showAddress: boolean): ProtoFleetNode {
  return create(FleetNodeSchema, {
    name: status.node,
    address: showAddress ? (node?.address ?? "") : "",
    labels: { ...(node?.labels ?? {}) },
    health: HEALTH_TO_PROTO[status.health],
    reason: status.reason,
    instanceCount,
  });
}

export function fleetService(deps: FleetServiceDeps): ServiceImpl<typeof FleetService> {
  const byName = new Map(deps.nodes.map((n) => [n.name, n]));

  function nodeStatusProto(name: string, health: NodeHealth, reason: string, showAddress: boolean): ProtoFleetNode {
    return fleetNodeToProto(byName.get(name), { node: name, health, reason, resumeToken: "", instanceCount: 0, disconnects: 0 }, 0, showAddress);
  }

  function streamEventToProto(e: FleetStreamEvent, showAddress: boolean): WatchFleetInstancesResponse {
    const base = { revision: BigInt(e.revision), resumeToken: e.resumeToken };
    const b = e.body;
    switch (b.kind) {
      case "upsert":
        return create(WatchFleetInstancesResponseSchema, { ...base, node: b.node, event: { case: "upsert", value: instanceToProto(b.instance) } });
      case "deleted":
        return create(WatchFleetInstancesResponseSchema, {
          ...base,
          node: b.node,
          event: { case: "deleted", value: create(InstanceDeletedSchema, { instance: instanceRefOf(b.instance), lastKnown: instanceToProto(b.instance) }) },
        });
      case "node_status":
        return create(WatchFleetInstancesResponseSchema, { ...base, node: b.node, event: { case: "nodeStatus", value: { node: nodeStatusProto(b.node, b.health, b.reason, showAddress) } } });
      case "initial_state_complete":
        return create(WatchFleetInstancesResponseSchema, { ...base, event: { case: "initialStateComplete", value: create(InitialStateCompleteSchema, { instanceCount: b.instanceCount }) } });
      case "heartbeat":
        return create(WatchFleetInstancesResponseSchema, { ...base, event: { case: "heartbeat", value: create(HeartbeatSchema, { at: isoToTimestamp(new Date().toISOString()) }) } });
      case "snapshot_reset":
        return create(WatchFleetInstancesResponseSchema, { ...base, event: { case: "snapshotReset", value: create(SnapshotResetSchema, { reason: b.reason }) } });
    }
  }

  function callContext(signal: AbortSignal, deadlineMs?: number): FleetCallContext {
    return { connections: deps.connections, nodeIds: deps.nodeIds, fanOut: { ...deps.fanOut, ...(deadlineMs ? { deadlineMs } : {}), signal: AbortSignal.any([signal, deps.shutdownSignal]) } };
  }

  return {
    async listNodes(_req, context) {
      const caller = callerOf(context.values);
      const tenant = tenantScope(caller, "", "tenant_id");
      const view = deps.merger.instances();
      const nodes = deps.merger.status().map((s) => {
        const count = view.filter((v) => v.node === s.node && (tenant === undefined || v.instance.tenantId === tenant)).length;
        return fleetNodeToProto(byName.get(s.node), s, count, caller.kind !== "tenant");
      });
      return { nodes };
    },

    async *watchFleetInstances(req, context) {
      const caller = callerOf(context.values);
      const tenant = tenantScope(caller, req.tenantId, "tenant_id");
      const interval = req.heartbeatIntervalMs === 0 ? HEARTBEAT_RANGE.default : req.heartbeatIntervalMs;
      if (interval < HEARTBEAT_RANGE.min || interval > HEARTBEAT_RANGE.max) {
        throw new ConnectError(`heartbeat_interval_ms: must be ${HEARTBEAT_RANGE.min}-${HEARTBEAT_RANGE.max} (0 means 15000)`, Code.InvalidArgument);
      }
      const stop = AbortSignal.any([context.signal, deps.shutdownSignal]);
      const subscription = deps.events.subscribe({
        resumeToken: req.resumeToken,
        instanceFilter: tenant === undefined ? undefined : (i: Instance) => i.tenantId === tenant,
        signal: stop,
      });
      let lastSent = Date.now();
      let latest: FleetStreamEvent | null = null;
      let heartbeatDue: (() => void) | null = null;
      const timer = setInterval(() => {
        if (Date.now() - lastSent >= interval * 0.9) heartbeatDue?.();
      }, Math.max(250, Math.floor(interval / 4)));
      const showAddress = caller.kind !== "tenant";
      try {
        let pending: Promise<IteratorResult<FleetStreamEvent, undefined>> | null = null;
        for (;;) {
          // The next event raced against this stream's heartbeat interval; an unanswered next() is kept for later.
          pending ??= subscription.next();
          const result = await Promise.race([pending, new Promise<"heartbeat">((resolve) => (heartbeatDue = () => resolve("heartbeat")))]);
          heartbeatDue = null;
          lastSent = Date.now();
          if (result === "heartbeat") {
            yield streamEventToProto({ revision: latest?.revision ?? 0, resumeToken: latest?.resumeToken ?? "", body: { kind: "heartbeat" } }, showAddress);
            continue;
          }
          pending = null;
          if (result.done) break;
          if (result.value.resumeToken !== "") latest = result.value;
          yield streamEventToProto(result.value, showAddress);
        }
        if (deps.shutdownSignal.aborted) throw new ConnectError("the coordinator is shutting down; reconnect and resume", Code.Unavailable);
      } catch (e) {
        if (e instanceof SubscriberOverflow) throw new ConnectError(FLEET_OVERFLOW_MESSAGE, Code.ResourceExhausted);
        throw e;
      } finally {
        clearInterval(timer);
        await subscription.return?.();
      }
    },

    async pushDesiredState(req, context) {
      const caller = callerOf(context.values);
      requireOperator(caller, "push desired state");
      if (req.nodeTimeoutMs > MAX_NODE_TIMEOUT_MS) throw new ConnectError(`node_timeout_ms: must be at most ${MAX_NODE_TIMEOUT_MS}`, Code.InvalidArgument);
      const input: Record<string, unknown> = {};
      for (const [name, doc] of Object.entries(req.documents)) input[name] = desiredStateInputFromProto(doc);
      let documents;
      try {
        documents = parsePushDocuments({ nodes: input }, deps.nodes.map((n) => n.name));
      } catch (e) {
        throw new ConnectError(e instanceof Error ? e.message : String(e), Code.InvalidArgument);
      }
      const outcomes = await pushDesiredState(callContext(context.signal, req.nodeTimeoutMs), deps.nodes, documents, req.requestId);
      return {
        results: outcomes.map((o) =>
          create(NodeCallResultSchema, {
            node: o.node.name,
            ok: o.ok,
            errorKind: o.ok ? "" : o.error.kind,
            message: o.ok ? "" : o.error.message,
            attempts: o.attempts,
            elapsedMs: o.elapsedMs,
            generation: o.ok ? BigInt(o.value.generation) : 0n,
          }),
        ),
        finishedAt: isoToTimestamp(new Date().toISOString()),
      };
    },

    async wakeFleetInstance(req, context) {
      const caller = callerOf(context.values);
      const ref = req.instance;
      if (!ref || ref.tenantId === "" || ref.poolId === "" || ref.instanceId === "") throw new ConnectError("instance: is required (tenant_id, pool_id and instance_id)", Code.InvalidArgument);
      tenantScope(caller, ref.tenantId, "instance.tenant_id");
      const ctx = callContext(context.signal);
      let node: FleetNode;
      if (req.node !== "") {
        const named = byName.get(req.node);
        if (!named) throw new ConnectError(`node: must name a node of the fleet (got ${JSON.stringify(req.node)})`, Code.InvalidArgument);
        node = named;
      } else {
        try {
          node = (await chooseWakeNode(ctx, deps.nodes, ref)).node;
        } catch (e) {
          const kind = (e as { kind?: string }).kind;
          const code = kind === "not_found" ? Code.NotFound : kind === "unavailable" ? Code.Unavailable : kind === "failed_precondition" ? Code.FailedPrecondition : Code.Internal;
          throw new ConnectError(e instanceof Error ? e.message : String(e), code);
        }
      }
      const outcome = await wakeOnNode(ctx, node, ref, req.readyTimeoutMs);
      if (!outcome.ok) {
        const code: Record<string, Code> = {
          not_found: Code.NotFound,
          failed_precondition: Code.FailedPrecondition,
          invalid: Code.InvalidArgument,
          permission_denied: Code.PermissionDenied,
          exhausted: Code.ResourceExhausted,
          unimplemented: Code.Unimplemented,
          timeout: Code.DeadlineExceeded,
          cancelled: Code.Canceled,
          unavailable: Code.Unavailable,
        };
        throw new ConnectError(`node ${node.name}: ${outcome.error.message}`, code[outcome.error.kind] ?? Code.Internal);
      }
      return { node: node.name, ...(outcome.value ? { instance: instanceToProto(outcome.value) } : {}) };
    },
  };
}
