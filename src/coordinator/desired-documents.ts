// What `coordinator push` and `plan` send to each node: either one desired-state document for every selected node
// (its node_id is set to each node's own ID), or a fleet document `{ nodes: { <name>: <document> } }` with one
// document per node (a missing node_id is filled in the same way; a given one must match the node, which the agent
// checks). Every document is validated in full before any node is called, so bad input changes nothing anywhere.

import { create, toJson } from "@bufbuild/protobuf";
import { readFile } from "node:fs/promises";
import { parse as parseYaml } from "yaml";
import { invalid, notFound, MvmError, type FieldViolation } from "../core/errors.js";
import { parseDesiredState, type DesiredState } from "../core/desired-state.js";
import type { WorkerPool } from "../core/model.js";
import { poolSpecToProto } from "../api/convert/pool.js";
import { quotaToProto } from "../api/convert/tenant.js";
import { DesiredPoolSchema, DesiredStateSchema, DesiredTenantSchema, type DesiredState as ProtoDesiredState } from "../../gen/mvm/v1/desired_state_pb.js";
import { TenantNetworkSchema } from "../../gen/mvm/v1/tenant_pb.js";

/** Stands in for the node's ID while a template is checked; parseDesiredState needs a well-formed one. */
const PLACEHOLDER_NODE_ID = "node-id-filled-per-node";

/** A checked document for one node; `nodeId` is filled in once the node's ID is known. */
export interface NodeDocument {
  /** The document with every default filled in (node_id as given, or the placeholder). */
  desired: DesiredState;
  /** Whether node_id is to be set to the node's own ID. */
  fillNodeId: boolean;
}

export type PushDocuments =
  | { kind: "template"; document: NodeDocument }
  | { kind: "per-node"; documents: Map<string, NodeDocument> };

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function checkDocument(raw: unknown, prefix: string, template: boolean, violations: FieldViolation[]): NodeDocument | null {
  const given = isObject(raw) ? raw.node_id : undefined;
  const fillNodeId = template || given === undefined || given === "";
  const input = isObject(raw) && fillNodeId ? { ...raw, node_id: PLACEHOLDER_NODE_ID } : raw;
  try {
    return { desired: parseDesiredState(input), fillNodeId };
  } catch (e) {
    if (!(e instanceof MvmError) || e.kind !== "invalid") throw e;
    violations.push(...e.violations.map((v) => ({ field: prefix === "" ? v.field : `${prefix}.${v.field}`, rule: v.rule })));
    return null;
  }
}

/** Checks a decoded push document; `nodeNames` are the fleet's nodes (a fleet document may name only those). */
export function parsePushDocuments(input: unknown, nodeNames: readonly string[]): PushDocuments {
  const violations: FieldViolation[] = [];
  if (isObject(input) && "nodes" in input) {
    const extra = Object.keys(input).filter((k) => k !== "nodes");
    if (extra.length > 0) violations.push({ field: extra[0] as string, rule: "is not allowed beside nodes in a fleet document (nodes: { <node name>: <desired state> })" });
    if (!isObject(input.nodes) || Object.keys(input.nodes).length === 0) throw invalid([...violations, { field: "nodes", rule: "must map node names to desired-state documents" }]);
    const known = new Set(nodeNames);
    const documents = new Map<string, NodeDocument>();
    for (const [name, raw] of Object.entries(input.nodes)) {
      if (!known.has(name)) {
        violations.push({ field: `nodes.${name}`, rule: "must name a node of the fleet file" });
        continue;
      }
      const doc = checkDocument(raw, `nodes.${name}`, false, violations);
      if (doc) documents.set(name, doc);
    }
    if (violations.length > 0) throw invalid(violations);
    return { kind: "per-node", documents };
  }
  const document = checkDocument(input, "", true, violations);
  if (violations.length > 0 || document === null) throw invalid(violations);
  return { kind: "template", document };
}

export async function readPushDocuments(path: string, nodeNames: readonly string[]): Promise<PushDocuments> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") throw notFound(`desired-state file ${path}`);
    throw e;
  }
  let decoded: unknown;
  try {
    decoded = parseYaml(text);
  } catch (e) {
    throw invalid([{ field: `desired-state file ${path}`, rule: `must be valid YAML or JSON: ${(e as Error).message.split("\n")[0]}` }]);
  }
  return parsePushDocuments(decoded, nodeNames);
}

/** The document meant for `nodeName`, if any (a fleet document may leave nodes out). */
export function documentFor(documents: PushDocuments, nodeName: string): NodeDocument | undefined {
  return documents.kind === "template" ? documents.document : documents.documents.get(nodeName);
}

/** The contract's form of a checked document, with node_id set to `nodeId` when it is to be filled. */
export function desiredStateToProto(doc: NodeDocument, nodeId: string): ProtoDesiredState {
  const d = doc.desired;
  return create(DesiredStateSchema, {
    schemaVersion: d.schemaVersion,
    nodeId: doc.fillNodeId ? nodeId : d.nodeId,
    pruneUnknownTenants: d.pruneUnknownTenants,
    pruneUnknownPools: d.pruneUnknownPools,
    tenants: d.tenants.map((t) =>
      create(DesiredTenantSchema, {
        tenantId: t.tenantId,
        ...(t.network ? { network: create(TenantNetworkSchema, { netId: t.network.netId, ipv4Subnet: t.network.ipv4Subnet }) } : {}),
        quotas: quotaToProto(t.quotas),
        labels: { ...t.labels },
        secretsHash: t.secretsHash,
        pools: t.pools.map((p) =>
          create(DesiredPoolSchema, {
            poolId: p.poolId,
            // poolSpecToProto reads only the spec fields, which a desired pool has in full.
            spec: poolSpecToProto({ ...p, tenantId: t.tenantId } as unknown as WorkerPool),
          }),
        ),
      }),
    ),
  });
}

/**
 * A contract document in the form the desired-state parser reads (snake_case JSON, pool spec fields beside
 * pool_id), so documents that arrive over FleetService are checked by the same rules as files.
 */
export function desiredStateInputFromProto(doc: ProtoDesiredState): Record<string, unknown> {
  const json = toJson(DesiredStateSchema, doc, { useProtoFieldName: true }) as Record<string, unknown>;
  const tenants = Array.isArray(json.tenants) ? (json.tenants as Array<Record<string, unknown>>) : [];
  return {
    ...json,
    tenants: tenants.map((t) => ({
      ...t,
      pools: (Array.isArray(t.pools) ? (t.pools as Array<Record<string, unknown>>) : []).map(({ spec, ...rest }) => ({ ...rest, ...(isObject(spec) ? spec : {}) })),
    })),
  };
}
