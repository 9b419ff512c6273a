// Who is calling (SPEC §8.2), decided once per call by one interceptor:
// - over mTLS, the SPIFFE URI SAN of the verified client certificate (`spiffe://<td>/admin`, `/coordinator`,
//   `/node/<id>`, `/tenant/<id>`); a certificate without exactly one such identity is refused;
// - over the agent's Unix socket, `local`: the socket is 0600 and owned by the agent's user, so only that user (root
//   in production) can connect, and it is treated as admin.
// The same interceptor applies the coarse per-method rule (METHOD_ACCESS); which tenant a call may touch is checked
// per resource by the handlers through policy.ts. Every refusal of a known identity is audited as `permission_deny`.

import { randomUUID } from "node:crypto";
import type { X509Certificate } from "node:crypto";
import type { PeerCertificate } from "node:tls";
import { Code, ConnectError, createContextKey, type ContextValues, type Interceptor } from "@connectrpc/connect";
import type { AuditActor, AuditLog } from "../core/observability-ports.js";
import { formatIdentityArg, identityFromPeerCertificate, spiffeId, type Identity } from "../platform/pki/identity.js";

/** The authenticated caller of one RPC. `id` is what the audit log records as the actor. */
export type Caller =
  | { kind: "admin" | "coordinator"; id: string }
  | { kind: "tenant"; tenantId: string; id: string }
  | { kind: "node"; nodeId: string; id: string }
  | { kind: "local"; id: string };

/** What the transport knows about the peer, set by the server adapter for each request. */
export type PeerInfo =
  | { transport: "mtls"; certificate: PeerCertificate | X509Certificate | null }
  | { transport: "local"; uid: number | null };

/** Set by the adapter's `contextValues`; null when the transport told us nothing (never trusted as anyone). */
export const PEER_KEY = createContextKey<PeerInfo | null>(null, { description: "mvm peer" });
/** Set by the auth interceptor before any handler runs. */
export const CALLER_KEY = createContextKey<Caller | null>(null, { description: "mvm caller" });
/** The caller's `x-request-id` when valid, else one generated for the call; in every log line of the call. */
export const REQUEST_ID_KEY = createContextKey<string>("", { description: "mvm request id" });

export const REQUEST_ID_HEADER = "x-request-id";
const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

/** How much of the API a method opens, before any per-resource check. */
export type MethodAccess =
  /** Any authenticated caller, node identities included. */
  | "any"
  /** Admin, coordinator and local callers; tenants only within their own tenant (checked per resource). */
  | "tenant"
  /** Admin, coordinator and local callers. */
  | "operator"
  /** Admin and local callers only. */
  | "admin";

/**
 * The access class of every method, by `<service type name>/<method name>`. A method missing from the table is
 * `operator`: an RPC added to the contract is closed to tenants until someone decides otherwise.
 */
export const METHOD_ACCESS: Readonly<Record<string, MethodAccess>> = {
  "mvm.v1.AgentService/GetVersion": "any",
  "mvm.v1.AgentService/GetCertificateStatus": "operator",
  "mvm.v1.AgentService/RotateCertificate": "admin",
  "mvm.v1.AgentService/WatchAudit": "tenant",
  "mvm.v1.AgentService/TailAudit": "tenant",
  "mvm.v1.AgentService/VerifyAudit": "tenant",
  "mvm.v1.NodeService/GetNodeStats": "tenant",
  "mvm.v1.TenantService/GetTenant": "tenant",
  "mvm.v1.TenantService/ListTenants": "tenant",
  "mvm.v1.PoolService/CreatePool": "tenant",
  "mvm.v1.PoolService/GetPool": "tenant",
  "mvm.v1.PoolService/ListPools": "tenant",
  "mvm.v1.PoolService/UpdatePool": "tenant",
  "mvm.v1.PoolService/DeletePool": "tenant",
  "mvm.v1.PoolService/ScalePool": "tenant",
  "mvm.v1.PoolService/BuildPool": "tenant",
  "mvm.v1.PoolService/ListBuilds": "tenant",
  "mvm.v1.PoolService/RollbackPool": "tenant",
  "mvm.v1.InstanceService/CreateInstance": "tenant",
  "mvm.v1.InstanceService/GetInstance": "tenant",
  "mvm.v1.InstanceService/GetInstanceStats": "tenant",
  "mvm.v1.InstanceService/ListInstances": "tenant",
  "mvm.v1.InstanceService/StartInstance": "tenant",
  "mvm.v1.InstanceService/StopInstance": "tenant",
  "mvm.v1.InstanceService/WarmInstance": "tenant",
  "mvm.v1.InstanceService/ResumeInstance": "tenant",
  "mvm.v1.InstanceService/SleepInstance": "tenant",
  "mvm.v1.InstanceService/WakeInstance": "tenant",
  "mvm.v1.InstanceService/DestroyInstance": "tenant",
  "mvm.v1.InstanceService/ExecInstance": "tenant",
  "mvm.v1.InstanceService/StreamInstanceLogs": "tenant",
  "mvm.v1.InstanceService/WatchInstances": "tenant",
  "grpc.health.v1.Health/Check": "any",
  "grpc.health.v1.Health/Watch": "any",
  "grpc.health.v1.Health/List": "any",
  "grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "any",
  "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "any",
};

export function methodAccess(rpc: string): MethodAccess {
  return METHOD_ACCESS[rpc] ?? "operator";
}

function callerAllowed(caller: Caller, access: MethodAccess): boolean {
  switch (caller.kind) {
    case "local":
    case "admin":
      return true;
    case "coordinator":
      return access !== "admin";
    case "tenant":
      return access === "tenant" || access === "any";
    case "node":
      return access === "any";
  }
}

export function callerFromIdentity(identity: Identity, trustDomain: string): Caller {
  const id = spiffeId(trustDomain, identity);
  switch (identity.kind) {
    case "admin":
    case "coordinator":
      return { kind: identity.kind, id };
    case "tenant":
      return { kind: "tenant", tenantId: identity.tenantId, id };
    case "node":
      return { kind: "node", nodeId: identity.nodeId, id };
  }
}

export function actorOf(caller: Caller): AuditActor {
  return { kind: caller.kind, id: caller.id };
}

/** `admin`, `tenant/acme`, `local:uid=0`: how a caller reads in logs and messages. */
export function describeCaller(caller: Caller): string {
  switch (caller.kind) {
    case "local":
      return caller.id;
    case "admin":
    case "coordinator":
      return formatIdentityArg({ kind: caller.kind });
    case "tenant":
      return `tenant/${caller.tenantId}`;
    case "node":
      return `node/${caller.nodeId}`;
  }
}

/** The caller the auth interceptor established; a handler reached without one is a wiring bug. */
export function callerOf(values: ContextValues): Caller {
  const caller = values.get(CALLER_KEY);
  if (caller === null) throw new ConnectError("no authenticated caller for this call", Code.Internal);
  return caller;
}

export interface AuthOptions {
  /** Trust domain whose SPIFFE IDs are accepted. */
  trustDomain: string;
  /** Where refusals are audited (the node-level log). */
  audit: AuditLog;
  /**
   * How the peer of a request is found. Default: the PEER_KEY context value the server adapter sets. Handler
   * tests over an in-memory transport pass their own.
   */
  resolvePeer?: (values: ContextValues, header: Headers) => PeerInfo | null;
  /** Told about every refusal (for the log); default nothing. */
  onDenied?: (event: { rpc: string; caller: string; reason: string; requestId: string }) => void;
}

/** The request id of a call: the client's when it is well-formed, else a fresh one. */
export function requestIdFrom(header: Headers): string {
  const given = header.get(REQUEST_ID_HEADER);
  return given !== null && REQUEST_ID_PATTERN.test(given) ? given : randomUUID();
}

/** Writes a `permission_deny` entry to the node-level log. A failure to audit is itself an error of the call. */
export async function auditDenial(
  audit: AuditLog,
  actor: AuditActor,
  details: { rpc: string; target: string; reason: string; requestId: string },
): Promise<void> {
  await audit.append({
    tenantId: "",
    actor,
    action: "permission_deny",
    target: details.target,
    outcome: "denied",
    reason: details.reason,
    details: { rpc: details.rpc, identity: actor.id, request_id: details.requestId },
  });
}

/** Certificates whose caller was already worked out, by SHA-256 fingerprint; reading one parses its DER. */
const IDENTITY_CACHE_SIZE = 1024;

export function createAuthInterceptor(options: AuthOptions): Interceptor {
  const resolvePeer = options.resolvePeer ?? ((values: ContextValues) => values.get(PEER_KEY));
  const callers = new Map<string, Caller | null>();
  const readCaller = (certificate: PeerCertificate | X509Certificate | null): Caller | null => {
    const identity = identityFromPeerCertificate(certificate, options.trustDomain);
    return identity === null ? null : callerFromIdentity(identity, options.trustDomain);
  };
  const callerOfCertificate = (certificate: PeerCertificate | X509Certificate | null): Caller | null => {
    const fingerprint = certificate?.fingerprint256;
    if (!fingerprint) return readCaller(certificate);
    let caller = callers.get(fingerprint);
    if (caller === undefined) {
      caller = readCaller(certificate);
      if (callers.size >= IDENTITY_CACHE_SIZE) callers.delete(callers.keys().next().value as string);
      callers.set(fingerprint, caller);
    }
    return caller;
  };
  return (next) => async (req) => {
    const rpc = `${req.service.typeName}/${req.method.name}`;
    // The call observer, outside this interceptor, normally set it already.
    const requestId = req.contextValues.get(REQUEST_ID_KEY) || requestIdFrom(req.header);
    req.contextValues.set(REQUEST_ID_KEY, requestId);
    const peer = resolvePeer(req.contextValues, req.header);
    let caller: Caller | null = null;
    let refusal = "";
    if (peer === null) refusal = "no client identity: connect with a client certificate";
    else if (peer.transport === "local") caller = { kind: "local", id: `local:uid=${peer.uid ?? "unknown"}` };
    else {
      caller = callerOfCertificate(peer.certificate);
      if (caller === null) {
        refusal = `client certificate carries no mvm identity in trust domain ${options.trustDomain} (one spiffe://${options.trustDomain}/admin|coordinator|node/<id>|tenant/<id> URI SAN is required)`;
      }
    }
    if (caller === null) {
      // Not audited: the audit log records what a known actor did, and this caller is nobody. The log has it.
      const subject = peer?.transport === "mtls" && peer.certificate ? `certificate serial ${peer.certificate.serialNumber}` : "anonymous";
      options.onDenied?.({ rpc, caller: subject, reason: refusal, requestId });
      throw new ConnectError(refusal, Code.Unauthenticated);
    }
    const access = methodAccess(rpc);
    if (!callerAllowed(caller, access)) {
      const reason = `${describeCaller(caller)} may not call ${rpc}`;
      await auditDenial(options.audit, actorOf(caller), { rpc, target: "", reason, requestId });
      options.onDenied?.({ rpc, caller: describeCaller(caller), reason, requestId });
      throw new ConnectError(reason, Code.PermissionDenied);
    }
    req.contextValues.set(CALLER_KEY, caller);
    return next(req);
  };
}
