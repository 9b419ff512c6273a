// The coordinator's fleet-wide operations (SPEC §10.1), shared by the CLI and `coordinator serve`: each is one
// fan-out of agent RPCs over the per-node sessions, returning one outcome per node.

import type { MessageInitShape } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { MvmError } from "../core/errors.js";
import type { Instance } from "../core/model.js";
import { instanceFromProto } from "../api/convert/instance.js";
import { instanceStatusFromProto } from "../api/convert/enums.js";
import { InstanceService, type InstanceFilterSchema } from "../../gen/mvm/v1/instance_service_pb.js";
import { NodeService } from "../../gen/mvm/v1/node_service_pb.js";
import { ReconcileService } from "../../gen/mvm/v1/reconcile_service_pb.js";
import type { ReconcilePlan } from "../../gen/mvm/v1/reconcile_pb.js";
import { desiredStateToProto, documentFor, type PushDocuments } from "./desired-documents.js";
import { fanOut, type FanOutOptions, type NodeOutcome } from "./fan-out.js";
import type { FleetNode } from "./fleet-file.js";
import { classifyRpcFailure, type NodeConnections } from "./node-connections.js";

export interface FleetCallContext {
  connections: NodeConnections;
  /** Concurrency, deadline, retries and the cancelling signal; the classifier is set here. */
  fanOut: Omit<FanOutOptions, "classify">;
  /** Node IDs learned so far, by node name (a document's node_id must be the node's own). */
  nodeIds?: Map<string, string>;
}

export type FleetOutcome<T> = NodeOutcome<FleetNode, T>;

function run<T>(ctx: FleetCallContext, nodes: readonly FleetNode[], call: (node: FleetNode, signal: AbortSignal) => Promise<T>): Promise<FleetOutcome<T>[]> {
  return fanOut(nodes, call, { ...ctx.fanOut, classify: classifyRpcFailure });
}

async function nodeIdOf(ctx: FleetCallContext, node: FleetNode, signal: AbortSignal): Promise<string> {
  const known = ctx.nodeIds?.get(node.name);
  if (known !== undefined) return known;
  const info = await createClient(NodeService, ctx.connections.transport(node)).getNodeInfo({}, { signal });
  const id = info.node?.nodeId ?? "";
  ctx.nodeIds?.set(node.name, id);
  return id;
}

export interface PushResult {
  nodeId: string;
  generation: number;
  desiredStateHash: string;
}

/** ApplyDesiredState on every node that has a document. */
export function pushDesiredState(ctx: FleetCallContext, nodes: readonly FleetNode[], documents: PushDocuments, requestId = ""): Promise<FleetOutcome<PushResult>[]> {
  const targets = nodes.filter((n) => documentFor(documents, n.name) !== undefined);
  return run(ctx, targets, async (node, signal) => {
    const doc = documentFor(documents, node.name)!;
    const nodeId = doc.fillNodeId ? await nodeIdOf(ctx, node, signal) : doc.desired.nodeId;
    const client = createClient(ReconcileService, ctx.connections.transport(node));
    const res = await client.applyDesiredState({ desiredState: desiredStateToProto(doc, nodeId), requestId }, { signal });
    return { nodeId, generation: Number(res.generation), desiredStateHash: res.desiredStateHash };
  });
}

/** PlanDesiredState on every node: for its document, or (without documents) for what it last applied. */
export function planDesiredState(ctx: FleetCallContext, nodes: readonly FleetNode[], documents: PushDocuments | null): Promise<FleetOutcome<ReconcilePlan | undefined>[]> {
  const targets = documents === null ? nodes : nodes.filter((n) => documentFor(documents, n.name) !== undefined);
  return run(ctx, targets, async (node, signal) => {
    const doc = documents === null ? undefined : documentFor(documents, node.name);
    const desiredState = doc === undefined ? undefined : desiredStateToProto(doc, doc.fillNodeId ? await nodeIdOf(ctx, node, signal) : doc.desired.nodeId);
    const res = await createClient(ReconcileService, ctx.connections.transport(node)).planDesiredState({ desiredState }, { signal });
    return res.plan;
  });
}

export interface NodeStatus {
  nodeId: string;
  hostname: string;
  agentVersion: string;
  vcpus: number;
  memMib: number;
  vcpusInUse: number;
  memMibInUse: number;
  /** Instances by status name (destroyed tombstones excluded by the agent). */
  instances: Record<string, number>;
  tenants: number;
}

/** GetNodeInfo and GetNodeStats on every node. */
export function fleetStatus(ctx: FleetCallContext, nodes: readonly FleetNode[]): Promise<FleetOutcome<NodeStatus>[]> {
  return run(ctx, nodes, async (node, signal) => {
    const client = createClient(NodeService, ctx.connections.transport(node));
    const [info, stats] = await Promise.all([client.getNodeInfo({}, { signal }), client.getNodeStats({}, { signal })]);
    const instances: Record<string, number> = {};
    for (const c of stats.stats?.instancesByStatus ?? []) {
      const name = instanceStatusFromProto(c.status);
      if (name !== undefined) instances[name] = c.count;
    }
    const n = info.node;
    if (n) ctx.nodeIds?.set(node.name, n.nodeId);
    return {
      nodeId: n?.nodeId ?? "",
      hostname: n?.hostname ?? "",
      agentVersion: n?.agentVersion ?? "",
      vcpus: n?.vcpus ?? 0,
      memMib: n?.memMib ?? 0,
      vcpusInUse: stats.stats?.vcpusInUse ?? 0,
      memMibInUse: stats.stats?.memMibInUse ?? 0,
      instances,
      tenants: stats.stats?.tenants.length ?? 0,
    };
  });
}

const LIST_PAGE_SIZE = 1000;

/** Every page of ListInstances on every node. */
export function listFleetInstances(ctx: FleetCallContext, nodes: readonly FleetNode[], filter: MessageInitShape<typeof InstanceFilterSchema>): Promise<FleetOutcome<Instance[]>[]> {
  return run(ctx, nodes, async (node, signal) => {
    const client = createClient(InstanceService, ctx.connections.transport(node));
    const out: Instance[] = [];
    let pageToken = "";
    do {
      const page = await client.listInstances({ filter, pageSize: LIST_PAGE_SIZE, pageToken }, { signal });
      out.push(...page.instances.map(instanceFromProto));
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    return out;
  });
}

/** Merges per-node lists into one, ordered by tenant, pool, instance, then node. */
export function mergeInstanceLists(outcomes: readonly FleetOutcome<Instance[]>[]): Array<{ node: string; instance: Instance }> {
  const rows = outcomes.flatMap((o) => (o.ok ? o.value.map((instance) => ({ node: o.node.name, instance })) : []));
  const key = (r: { node: string; instance: Instance }) => [r.instance.tenantId, r.instance.poolId, r.instance.instanceId, r.node];
  return rows.sort((a, b) => {
    const ka = key(a);
    const kb = key(b);
    for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return (ka[i] as string) < (kb[i] as string) ? -1 : 1;
    return 0;
  });
}

export interface InstanceKey {
  tenantId: string;
  poolId: string;
  instanceId: string;
}

export interface LocateResult {
  /** Nodes that have the instance. */
  found: FleetNode[];
  /** The search's per-node outcomes (true: the node has it). */
  outcomes: FleetOutcome<boolean>[];
}

/** Asks every node whether it holds the instance (GetInstance; NotFound means no). */
export async function locateInstance(ctx: FleetCallContext, nodes: readonly FleetNode[], ref: InstanceKey): Promise<LocateResult> {
  const outcomes = await run(ctx, nodes, async (node, signal) => {
    try {
      await createClient(InstanceService, ctx.connections.transport(node)).getInstance({ instance: ref }, { signal });
      return true;
    } catch (e) {
      if (classifyRpcFailure(e).kind === "not_found") return false;
      throw e;
    }
  });
  return { found: outcomes.filter((o) => o.ok && o.value).map((o) => o.node), outcomes };
}

/**
 * The node to wake `ref` on: the one named, else the only one that has it. Throws not_found when no node that
 * answered has it (saying how many did not answer), failed_precondition when several do.
 */
export async function chooseWakeNode(ctx: FleetCallContext, nodes: readonly FleetNode[], ref: InstanceKey): Promise<{ node: FleetNode; search: LocateResult | null }> {
  const path = `${ref.tenantId}/${ref.poolId}/${ref.instanceId}`;
  const search = await locateInstance(ctx, nodes, ref);
  if (search.found.length === 1) return { node: search.found[0] as FleetNode, search };
  if (search.found.length > 1) {
    throw new MvmError("failed_precondition", `instance ${path} is on several nodes (${search.found.map((n) => n.name).join(", ")}): name one with --on`);
  }
  const silent = search.outcomes.filter((o) => !o.ok);
  if (silent.length > 0) {
    throw new MvmError("unavailable", `instance ${path} not found on the ${nodes.length - silent.length} nodes that answered; ${silent.length} did not (${silent.map((o) => `${o.node.name}: ${o.ok ? "" : o.error.kind}`).join(", ")})`);
  }
  throw new MvmError("not_found", `instance ${path} not found on any of the ${nodes.length} nodes`);
}

/** WakeInstance on one node (with the fan-out's deadline and retries). */
export async function wakeOnNode(ctx: FleetCallContext, node: FleetNode, ref: InstanceKey, readyTimeoutMs = 0): Promise<FleetOutcome<Instance | null>> {
  const [outcome] = await run(ctx, [node], async (n, signal) => {
    const res = await createClient(InstanceService, ctx.connections.transport(n)).wakeInstance({ instance: ref, readyTimeoutMs }, { signal });
    return res.instance ? instanceFromProto(res.instance) : null;
  });
  return outcome as FleetOutcome<Instance | null>;
}
