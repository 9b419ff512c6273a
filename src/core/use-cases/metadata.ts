// The metadata endpoint (SPEC §6.7): what an instance learns about itself over HTTP from its tenant's gateway. The
// caller is the instance at the request's source address, on the bridge of the gateway it reached: the TAP's
// anti-spoofing rules tie that address to the instance, and nftables lets a guest reach only its own gateway's port.

import type { Instance, Tenant, WorkerPool } from "../model.js";
import { holdsVmm } from "../reservations.js";
import type { Clock, Store } from "../ports.js";

/** How long a metadata token is valid. */
export const METADATA_TOKEN_TTL_S = 15 * 60;

export interface MetadataTokenClaims {
  iss: string;
  sub: string;
  aud: "mvm-metadata";
  iat: number;
  exp: number;
  tenant_id: string;
  pool_id: string;
  instance_id: string;
  revision: string;
}

/** Signs tokens with the node's metadata key (an adapter: the key lives on disk). */
export interface MetadataTokenSigner {
  sign(claims: MetadataTokenClaims): string;
  /** The public key that verifies them, PEM. */
  publicKeyPem(): string;
}

export interface MetadataDeps {
  store: Store;
  clock: Clock;
  signer: MetadataTokenSigner;
}

export interface MetadataRequest {
  method: string;
  path: string;
  /** The gateway address the guest connected to. */
  localAddress: string;
  /** The guest's address. */
  remoteAddress: string;
}

export interface MetadataAnswer {
  status: number;
  contentType: "application/json" | "application/x-pem-file" | "text/plain; charset=utf-8";
  body: string;
  /** The instance that asked, when one did ("tenant/pool/instance"). */
  caller: string | null;
}

const json = (status: number, value: unknown, caller: string | null): MetadataAnswer => ({
  status,
  contentType: "application/json",
  body: `${JSON.stringify(value)}\n`,
  caller,
});

/** An IPv4-mapped IPv6 address as Node reports it on a dual-stack socket, as plain IPv4. */
function plainIpv4(address: string): string {
  return address.startsWith("::ffff:") ? address.slice(7) : address;
}

async function callerOf(deps: MetadataDeps, localAddress: string, remoteAddress: string): Promise<{ tenant: Tenant; pool: WorkerPool; instance: Instance } | string> {
  const gateway = plainIpv4(localAddress);
  const guest = plainIpv4(remoteAddress);
  const tenant = (await deps.store.listTenants()).find((t) => t.network.gatewayIp === gateway);
  if (!tenant) return `${gateway} is no tenant's gateway`;
  for (const pool of await deps.store.listPools(tenant.tenantId)) {
    const instance = (await deps.store.listInstances(tenant.tenantId, pool.poolId)).find((i) => i.net.guestIp === guest);
    if (!instance) continue;
    if (!holdsVmm(instance)) return `instance ${instance.instanceId} is ${instance.status}`;
    if (!pool.metadataEnabled) return `pool ${tenant.tenantId}/${pool.poolId} has the metadata endpoint turned off`;
    return { tenant, pool, instance };
  }
  return `no instance of tenant ${tenant.tenantId} has address ${guest}`;
}

export async function answerMetadata(deps: MetadataDeps, request: MetadataRequest, nodeId: string): Promise<MetadataAnswer> {
  const path = request.path.split("?")[0];
  const known = ["/v1/identity", "/v1/token", "/v1/token-key", "/v1/user-data"];
  if (!known.includes(path ?? "")) return json(404, { error: `no such path; try ${known.join(", ")}` }, null);
  if (request.method !== "GET") return json(405, { error: `${request.method} is not allowed; use GET` }, null);
  const found = await callerOf(deps, request.localAddress, request.remoteAddress);
  if (typeof found === "string") return json(403, { error: `not answered: ${found}` }, null);
  const { tenant, pool, instance } = found;
  const caller = `${tenant.tenantId}/${pool.poolId}/${instance.instanceId}`;
  if (path === "/v1/token-key") return { status: 200, contentType: "application/x-pem-file", body: deps.signer.publicKeyPem(), caller };
  if (path === "/v1/user-data") {
    if (!pool.userData) return json(404, { error: `pool ${tenant.tenantId}/${pool.poolId} has no user data` }, caller);
    return { status: 200, contentType: "text/plain; charset=utf-8", body: pool.userData, caller };
  }
  const identity = {
    tenant_id: tenant.tenantId,
    pool_id: pool.poolId,
    instance_id: instance.instanceId,
    revision: instance.revision ?? "",
    hostname: instance.instanceId,
    guest_ip: instance.net.guestIp,
    gateway_ip: instance.net.gatewayIp,
    node_id: nodeId,
  };
  if (path === "/v1/identity") return json(200, identity, caller);
  const iat = Math.floor(deps.clock.nowMs() / 1000);
  const exp = iat + METADATA_TOKEN_TTL_S;
  const token = deps.signer.sign({
    iss: `mvm:${nodeId}`,
    sub: caller,
    aud: "mvm-metadata",
    iat,
    exp,
    tenant_id: tenant.tenantId,
    pool_id: pool.poolId,
    instance_id: instance.instanceId,
    revision: identity.revision,
  });
  return json(200, { token, expires_at: new Date(exp * 1000).toISOString() }, caller);
}
