// ReconcileService (SPEC §9): validate → convert → delegate to the reconcile use case. The desired state is
// validated in full with core's parser (every violation, with its path in the request) and checked against this
// node's ID before anything is stored; passes run on the agent's one ReconcileController.

import { toJson, type JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { invalid } from "../../core/errors.js";
import { parseDesiredState, type DesiredState } from "../../core/desired-state.js";
import type { ReconcileReport } from "../../core/reconcile/steps.js";
import { ReconcileController } from "../../core/use-cases/reconcile.js";
import { DesiredStateSchema, type DesiredState as ProtoDesiredState } from "../../../gen/mvm/v1/desired_state_pb.js";
import { ApplyDesiredStateRequestSchema, ReconcileService, TriggerReconcileRequestSchema } from "../../../gen/mvm/v1/reconcile_service_pb.js";
import type { ApiDeps } from "../api-deps.js";
import { desiredStateDigest, desiredStateToProto, planToProto, reportToProto } from "../convert/desired-state.js";
import { isoToTimestamp } from "../convert/timestamps.js";
import { remapViolations } from "../errors.js";
import { callInfo } from "../policy.js";
import { untilShutdown } from "../streams.js";
import type { ServiceKit } from "./service-kit.js";

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

/** The agent's controller when it passes one (so the API and the periodic loop share passes), else one of our own. */
export function reconcilerFor(deps: ApiDeps): ReconcileController {
  if (deps.reconciler) return deps.reconciler;
  const own = ownControllers.get(deps) ?? new ReconcileController({ ...deps.runtime, digestDesiredState: desiredStateDigest });
  ownControllers.set(deps, own);
  return own;
}
const ownControllers = new WeakMap<ApiDeps, ReconcileController>();

/** A report stream of a controller: each finished pass, from subscription on. */
async function* reportsOf(controller: ReconcileController, includeLast: boolean): AsyncGenerator<ReconcileReport, void, undefined> {
  const queue: ReconcileReport[] = [];
  let wake: (() => void) | null = null;
  const unsubscribe = controller.onReport((r) => {
    queue.push(r);
    wake?.();
  });
  try {
    if (includeLast && controller.lastReport) yield controller.lastReport;
    for (;;) {
      while (queue.length > 0) yield queue.shift() as ReconcileReport;
      await new Promise<void>((resolve) => (wake = resolve));
      wake = null;
    }
  } finally {
    unsubscribe();
  }
}

export function reconcileService(kit: ServiceKit): ServiceImpl<typeof ReconcileService> {
  const nodeId = async () => (await kit.deps.runtime.store.node()).nodeId;
  const controller = () => reconcilerFor(kit.deps);
  return {
    async applyDesiredState(req, context) {
      const call = callInfo(context);
      return kit.once(call, ApplyDesiredStateRequestSchema, req, req.requestId, async () => {
        const document = validateDesiredState(req.desiredState, await nodeId());
        const { applied } = await controller().apply(document);
        const pass = controller().reconcile("apply");
        if (!req.wait) {
          pass.catch((e: unknown) => kit.deps.logger.error({ err: e }, "reconcile pass failed"));
          return { generation: BigInt(applied.generation), desiredStateHash: applied.hash };
        }
        return { generation: BigInt(applied.generation), desiredStateHash: applied.hash, report: reportToProto(await pass) };
      });
    },

    async getDesiredState() {
      const applied = await controller().applied();
      if (!applied) throw new ConnectError("no desired state was ever applied to this node", Code.NotFound);
      const last = controller().lastReport;
      return {
        desiredState: desiredStateToProto(applied.document),
        generation: BigInt(applied.generation),
        desiredStateHash: applied.hash,
        appliedAt: isoToTimestamp(applied.appliedAt),
        ...(last ? { lastReport: reportToProto(last) } : {}),
      };
    },

    async planDesiredState(req) {
      const document = req.desiredState === undefined ? undefined : validateDesiredState(req.desiredState, await nodeId());
      return { plan: planToProto(await controller().plan(document)) };
    },

    async triggerReconcile(req, context) {
      const call = callInfo(context);
      return kit.once(call, TriggerReconcileRequestSchema, req, req.requestId, async () => {
        if (!(await controller().applied())) {
          throw new ConnectError("no desired state was ever applied to this node: nothing to reconcile against", Code.FailedPrecondition);
        }
        const pass = controller().reconcile("manual");
        const reconcileId = controller().currentPassId ?? "";
        if (!req.wait) {
          pass.catch((e: unknown) => kit.deps.logger.error({ err: e }, "reconcile pass failed"));
          return { reconcileId };
        }
        const report = await pass;
        return { reconcileId: report.reconcileId, report: reportToProto(report) };
      });
    },

    async *watchReconcileReports(req, context) {
      for await (const report of untilShutdown(reportsOf(controller(), req.includeLast), kit.deps.shutdownSignal, context.signal)) {
        yield { report: reportToProto(report) };
      }
    },
  };
}
