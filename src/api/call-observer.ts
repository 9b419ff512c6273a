// The outermost interceptor: gives each call its request id, maps whatever a handler throws to an RPC status
// (errors.ts), counts the call in the metrics (SPEC §8.4: by service, method and code; latency of unary calls only,
// since a stream lasts as long as its client wants), and writes one log line per call with the request id, the
// caller and the tenant/pool/instance it named. Unexpected errors are logged with their stack; the client only
// sees INTERNAL_ERROR_MESSAGE.

import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { ServerReflection as ServerReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { AgentService } from "../../gen/mvm/v1/agent_service_pb.js";
import { FleetService } from "../../gen/mvm/v1/fleet_service_pb.js";
import { InstanceService } from "../../gen/mvm/v1/instance_service_pb.js";
import { NodeService } from "../../gen/mvm/v1/node_service_pb.js";
import { PoolService } from "../../gen/mvm/v1/pool_service_pb.js";
import { ReconcileService } from "../../gen/mvm/v1/reconcile_service_pb.js";
import { TenantService } from "../../gen/mvm/v1/tenant_service_pb.js";
import type { Metrics } from "../platform/metrics.js";
import { CALLER_KEY, describeCaller, REQUEST_ID_HEADER, REQUEST_ID_KEY, requestIdFrom } from "./auth.js";
import { isUnexpected, toConnectError } from "./errors.js";

/**
 * RPCs that change nothing. A successful call of one of these is logged at debug rather than info: reads come at a
 * high rate (a coordinator's status polls, health checks, dashboards), and formatting a line for each was a sizeable
 * part of a read's cost (bench/rpc-latency.mjs). What changes state, and every refusal and failure, stays at info
 * and above, and the audit log keeps every mutation. A method missing here is logged at info: the safe default.
 */
export const SIDE_EFFECT_FREE_METHODS: ReadonlySet<DescMethod> = new Set<DescMethod>([
  AgentService.method.getVersion,
  AgentService.method.getCertificateStatus,
  AgentService.method.watchAudit,
  AgentService.method.tailAudit,
  AgentService.method.verifyAudit,
  FleetService.method.listNodes,
  FleetService.method.watchFleetInstances,
  InstanceService.method.getInstance,
  InstanceService.method.getInstanceStats,
  InstanceService.method.listInstances,
  InstanceService.method.streamInstanceLogs,
  InstanceService.method.watchInstances,
  NodeService.method.getNodeInfo,
  NodeService.method.getNodeStats,
  NodeService.method.getCapabilities,
  NodeService.method.getDiskUsage,
  PoolService.method.getPool,
  PoolService.method.listPools,
  PoolService.method.listBuilds,
  ReconcileService.method.getDesiredState,
  ReconcileService.method.planDesiredState,
  ReconcileService.method.watchReconcileReports,
  TenantService.method.getTenant,
  TenantService.method.listTenants,
  Health.method.check,
  Health.method.watch,
  ServerReflectionV1.method.serverReflectionInfo,
  ServerReflectionV1alpha.method.serverReflectionInfo,
]);

/** `NotFound` → `not_found`, as the metrics label the codes. */
export function codeLabel(code: Code | "ok"): string {
  if (code === "ok") return "ok";
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

/** tenant_id / pool_id / instance_id named by a request, at its top level or in a ref or filter field. */
export function resourceFieldsOf(message: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  const visit = (m: unknown): void => {
    if (m === null || typeof m !== "object") return;
    const r = m as Record<string, unknown>;
    if (typeof r.tenantId === "string" && r.tenantId !== "") out.tenant ??= r.tenantId;
    if (typeof r.poolId === "string" && r.poolId !== "") out.pool ??= r.poolId;
    if (typeof r.instanceId === "string" && r.instanceId !== "") out.instance ??= r.instanceId;
  };
  visit(message);
  if (message !== null && typeof message === "object") {
    const r = message as Record<string, unknown>;
    for (const key of ["instance", "pool", "filter", "tenant"]) visit(r[key]);
  }
  return out;
}

export interface CallObserverOptions {
  metrics: Metrics;
  logger: Logger;
}

export function createCallObserver(options: CallObserverOptions): Interceptor {
  const { metrics, logger } = options;
  return (next) => async (req) => {
    const started = performance.now();
    const service = req.service.typeName;
    const method = req.method.name;
    const requestId = requestIdFrom(req.header);
    req.contextValues.set(REQUEST_ID_KEY, requestId);
    let fields: Record<string, string> = req.stream ? {} : resourceFieldsOf(req.message);

    const finish = (error: unknown): ConnectError | null => {
      const seconds = (performance.now() - started) / 1000;
      const mapped = error === null ? null : toConnectError(error);
      // A stream its client abandoned ends without an error of ours; it is counted as canceled, not ok.
      const code = mapped !== null ? mapped.code : req.stream && req.signal.aborted ? Code.Canceled : "ok";
      const label = codeLabel(code);
      metrics.observeRpc(service, method, label, req.stream ? null : seconds);
      const read = mapped === null && code === "ok" && SIDE_EFFECT_FREE_METHODS.has(req.method);
      // Not even the line is built when it would be dropped.
      if (read && !logger.isLevelEnabled("debug")) return null;
      const caller = req.contextValues.get(CALLER_KEY);
      const line = {
        reqId: requestId,
        rpc: `${service}/${method}`,
        peer: caller === null ? undefined : describeCaller(caller),
        ...fields,
        code: label,
        durationMs: Math.round(seconds * 1000 * 100) / 100,
      };
      if (read) logger.debug(line, "rpc ok");
      else if (mapped === null) logger.info(line, code === "ok" ? "rpc ok" : "rpc canceled by the client");
      else if (isUnexpected(error)) logger.error({ ...line, err: error }, `rpc failed: ${mapped.rawMessage}`);
      else logger.info({ ...line, reason: mapped.rawMessage }, "rpc refused");
      mapped?.metadata.set(REQUEST_ID_HEADER, requestId);
      return mapped;
    };

    if (req.stream) {
      const input = req.message;
      req = {
        ...req,
        message: (async function* () {
          for await (const m of input) {
            if (Object.keys(fields).length === 0) fields = resourceFieldsOf(m);
            yield m;
          }
        })(),
      };
    }

    let res;
    try {
      res = await next(req);
    } catch (e) {
      throw finish(e) as ConnectError;
    }
    res.header.set(REQUEST_ID_HEADER, requestId);
    if (!res.stream) {
      finish(null);
      return res;
    }
    const output = res.message;
    return {
      ...res,
      message: (async function* () {
        let failure: unknown = null;
        try {
          yield* output;
        } catch (e) {
          failure = e;
        } finally {
          // A client that went away ends the generator early through `return`: that is not a failure of ours.
          const mapped = finish(failure);
          if (mapped !== null) throw mapped;
        }
      })(),
    };
  };
}
