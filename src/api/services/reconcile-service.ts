// ReconcileService. The desired state is validated in full with core's parser (every violation, with its path in
// the request), and checked against this node's ID; the reconcile passes themselves have no use case yet
// (issue 7), so nothing is applied, planned or triggered, and each RPC says so.

import { toJson, type JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { invalid } from "../../core/errors.js";
import { parseDesiredState, type DesiredState } from "../../core/desired-state.js";
import { DesiredStateSchema, type DesiredState as ProtoDesiredState } from "../../../gen/mvm/v1/desired_state_pb.js";
import { ApplyDesiredStateRequestSchema, ReconcileService, TriggerReconcileRequestSchema } from "../../../gen/mvm/v1/reconcile_service_pb.js";
import { remapViolations } from "../errors.js";
import { callInfo } from "../policy.js";
import { notAvailable, type ServiceKit } from "./service-kit.js";

const RECONCILE_MISSING = "the reconcile passes of issue 7 (planner and executor) are not implemented";

/** Core's document keeps a pool's spec fields beside its pool_id; the contract nests them in `spec`. */
function flattenPools(json: JsonObject): JsonObject {
  const tenants = Array.isArray(json.tenants) ? json.tenants : [];
  return {
    ...json,
    tenants: tenants.map((t) => {
      const tenant = t as JsonObject;
      const pools = Array.isArray(tenant.pools) ? tenant.pools : [];
      return {
        ...tenant,
        pools: pools.map((p) => {
          const { spec, ...rest } = p as JsonObject;
          return { ...rest, ...(spec !== null && typeof spec === "object" && !Array.isArray(spec) ? spec : {}) };
        }),
      };
    }),
  };
}

/** `tenants[0].pools[1].resources.vcpus` → `desired_state.tenants[0].pools[1].spec.resources.vcpus`. */
export function desiredStateField(field: string): string {
  const nested = field.replace(/(pools\[\d+\])\.(?!pool_id\b)/g, "$1.spec.");
  return nested === "" ? "desired_state" : `desired_state.${nested}`;
}

/** Validates a document as ApplyDesiredState would, against `nodeId`. */
export function validateDesiredState(doc: ProtoDesiredState | undefined, nodeId: string): DesiredState {
  if (doc === undefined) throw invalid([{ field: "desired_state", rule: "is required" }]);
  const json = flattenPools(toJson(DesiredStateSchema, doc, { useProtoFieldName: true }) as JsonObject);
  let parsed: DesiredState;
  try {
    parsed = parseDesiredState(json);
  } catch (e) {
    throw remapViolations(e, desiredStateField);
  }
  if (parsed.nodeId !== nodeId) {
    throw invalid([{ field: "desired_state.node_id", rule: `must be this node's ID ${nodeId} (got ${parsed.nodeId}): the document is for another node` }]);
  }
  return parsed;
}

export function reconcileService(kit: ServiceKit): ServiceImpl<typeof ReconcileService> {
  const nodeId = async () => (await kit.deps.runtime.store.node()).nodeId;
  return {
    async applyDesiredState(req, context) {
      const call = callInfo(context);
      return kit.once(call, ApplyDesiredStateRequestSchema, req, req.requestId, async () => {
        validateDesiredState(req.desiredState, await nodeId());
        throw notAvailable("ApplyDesiredState (the document is valid; nothing was applied)", RECONCILE_MISSING);
      });
    },

    async getDesiredState() {
      // Since ApplyDesiredState cannot store a document yet, none was ever applied.
      throw new ConnectError("no desired state was ever applied to this node", Code.NotFound);
    },

    async planDesiredState(req) {
      if (req.desiredState !== undefined) validateDesiredState(req.desiredState, await nodeId());
      throw notAvailable("PlanDesiredState", RECONCILE_MISSING);
    },

    async triggerReconcile(req, context) {
      const call = callInfo(context);
      return kit.once(call, TriggerReconcileRequestSchema, req, req.requestId, async () => {
        throw new ConnectError("no desired state was ever applied to this node: nothing to reconcile against", Code.FailedPrecondition);
      });
    },

    async *watchReconcileReports() {
      throw notAvailable("WatchReconcileReports", RECONCILE_MISSING);
    },
  };
}
