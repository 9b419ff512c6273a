// The mvm.v1 services on one Connect router, with the interceptors every call goes through: the call observer
// (request id, error mapping, metrics, log line) outermost, then authentication and the per-method rule.

import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { AgentService } from "../../gen/mvm/v1/agent_service_pb.js";
import { InstanceService } from "../../gen/mvm/v1/instance_service_pb.js";
import { NodeService } from "../../gen/mvm/v1/node_service_pb.js";
import { PoolService } from "../../gen/mvm/v1/pool_service_pb.js";
import { ReconcileService } from "../../gen/mvm/v1/reconcile_service_pb.js";
import { TenantService } from "../../gen/mvm/v1/tenant_service_pb.js";
import type { ApiDeps } from "./api-deps.js";
import { createAuthInterceptor, type AuthOptions } from "./auth.js";
import { createCallObserver } from "./call-observer.js";
import type { RegisteredService } from "./grpc-unary-lane.js";
import { IdempotencyCache } from "./idempotency.js";
import { agentService } from "./services/agent-service.js";
import { instanceService } from "./services/instance-service.js";
import { nodeService } from "./services/node-service.js";
import { poolService } from "./services/pool-service.js";
import { reconcileService } from "./services/reconcile-service.js";
import { ServiceKit } from "./services/service-kit.js";
import { tenantService } from "./services/tenant-service.js";

/** The services of the mvm.v1 contract, as Connect service descriptors. */
export const MVM_SERVICES = [AgentService, NodeService, TenantService, PoolService, InstanceService, ReconcileService] as const;

export interface ApiRoutesOptions {
  /** Trust domain of accepted client certificates. */
  trustDomain: string;
  /** See AuthOptions.resolvePeer; default: the server adapter's PEER_KEY. */
  resolvePeer?: AuthOptions["resolvePeer"];
  /** Shared across routers (the TLS listener and the local socket) so a retry on either is recognised. */
  idempotency?: IdempotencyCache;
}

/** The interceptors every call of the API passes through, outermost first. */
export function apiInterceptors(deps: ApiDeps, options: ApiRoutesOptions): Interceptor[] {
  return [
    createCallObserver({ metrics: deps.metrics, logger: deps.logger }),
    createAuthInterceptor({
      trustDomain: options.trustDomain,
      audit: deps.runtime.audit,
      resolvePeer: options.resolvePeer,
      onDenied: (e) => deps.logger.warn(e, "call refused"),
    }),
  ];
}

/** The implementations of every service of the contract, sharing one kit (idempotency cache, deps). */
export function apiServices(deps: ApiDeps, options: Pick<ApiRoutesOptions, "idempotency"> = {}): RegisteredService[] {
  const kit = new ServiceKit(deps, options.idempotency);
  return [
    { service: AgentService, impl: agentService(kit) },
    { service: NodeService, impl: nodeService(kit) },
    { service: TenantService, impl: tenantService(kit) },
    { service: PoolService, impl: poolService(kit) },
    { service: InstanceService, impl: instanceService(kit) },
    { service: ReconcileService, impl: reconcileService(kit) },
  ];
}

/** Registers `services` (default: every service of the contract) on `router`. */
export function registerApiServices(
  router: ConnectRouter,
  deps: ApiDeps,
  options: Pick<ApiRoutesOptions, "idempotency"> = {},
  services: readonly RegisteredService[] = apiServices(deps, options),
): void {
  for (const { service, impl } of services) router.service(service, impl as never);
}
