import { beforeEach, describe, expect, it } from "vitest";
import type { Instance } from "../../../src/core/model.js";
import { answerMetadata, METADATA_TOKEN_TTL_S, type MetadataDeps, type MetadataTokenClaims } from "../../../src/core/use-cases/metadata.js";
import { createInstance } from "../../../src/core/use-cases/instances.js";
import { startInstance, stopInstance, type DataPlaneDeps } from "../../../src/core/use-cases/lifecycle.js";
import { createPool, updatePool } from "../../../src/core/use-cases/pools.js";
import { createTenant } from "../../../src/core/use-cases/tenants.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { fakeDataPlaneDeps } from "../../helpers/fake-data-plane-deps.js";

let deps: DataPlaneDeps;
let metadata: MetadataDeps;
let signed: MetadataTokenClaims[];
let web: Instance;

const NOW_MS = 1_800_000_000_000;

beforeEach(async () => {
  deps = fakeDataPlaneDeps(new FakeDataPlane());
  signed = [];
  metadata = {
    store: deps.store,
    clock: { nowMs: () => NOW_MS },
    signer: { sign: (claims) => (signed.push(claims), `signed-${signed.length}`), publicKeyPem: () => "-----BEGIN PUBLIC KEY-----\nX\n-----END PUBLIC KEY-----\n" },
  };
  for (const [tenantId, subnet] of [["acme", "10.213.1.0/24"], ["other", "10.213.2.0/24"]] as const) {
    await createTenant(deps, { tenantId, quotas: {}, network: { ipv4Subnet: subnet } });
    await createPool(deps, { tenantId, poolId: "web" }, { resources: { vcpus: 1, memMib: 256, dataDiskMib: 0 } });
    await deps.store.putPool({ ...(await deps.store.getPool(tenantId, "web"))!, currentRevision: "abc123" });
  }
  const created = await createInstance(deps, { tenantId: "acme", poolId: "web" });
  web = await startInstance(deps, { tenantId: "acme", poolId: "web", instanceId: created.instanceId });
});

const ask = (path: string, from: string, to = "10.213.1.1", method = "GET") =>
  answerMetadata(metadata, { method, path, localAddress: to, remoteAddress: from }, "n-0123");

describe("metadata endpoint", () => {
  it("tells a running instance who it is, by its source address on its tenant's gateway", async () => {
    const answer = await ask("/v1/identity", web.net.guestIp);
    expect(answer.status).toBe(200);
    expect(answer.caller).toBe(`acme/web/${web.instanceId}`);
    expect(JSON.parse(answer.body)).toEqual({
      tenant_id: "acme",
      pool_id: "web",
      instance_id: web.instanceId,
      revision: "abc123",
      hostname: web.instanceId,
      guest_ip: web.net.guestIp,
      gateway_ip: "10.213.1.1",
      node_id: "n-0123",
    });
    // As a dual-stack socket reports IPv4 peers.
    expect((await ask("/v1/identity", `::ffff:${web.net.guestIp}`, "::ffff:10.213.1.1")).status).toBe(200);
  });

  it("signs a short-lived token naming the instance, and serves the key that verifies it", async () => {
    const answer = await ask("/v1/token?x=1", web.net.guestIp);
    expect(answer.status).toBe(200);
    const body = JSON.parse(answer.body);
    expect(body.token).toBe("signed-1");
    expect(body.expires_at).toBe(new Date(NOW_MS + METADATA_TOKEN_TTL_S * 1000).toISOString());
    expect(signed[0]).toEqual({
      iss: "mvm:n-0123",
      sub: `acme/web/${web.instanceId}`,
      aud: "mvm-metadata",
      iat: NOW_MS / 1000,
      exp: NOW_MS / 1000 + METADATA_TOKEN_TTL_S,
      tenant_id: "acme",
      pool_id: "web",
      instance_id: web.instanceId,
      revision: "abc123",
    });
    const key = await ask("/v1/token-key", web.net.guestIp);
    expect([key.status, key.contentType, key.body]).toEqual([200, "application/x-pem-file", expect.stringContaining("BEGIN PUBLIC KEY")]);
  });

  it("answers nobody but a running instance of the gateway's own tenant, with metadata on", async () => {
    expect((await ask("/v1/identity", web.net.guestIp, "10.213.2.1")).status).toBe(403);
    expect((await ask("/v1/identity", "10.213.1.99")).status).toBe(403);
    expect((await ask("/v1/identity", web.net.guestIp, "10.9.9.9")).status).toBe(403);
    await updatePool(deps, { tenantId: "acme", poolId: "web" }, { metadataEnabled: false });
    const off = await ask("/v1/token", web.net.guestIp);
    expect(off.status).toBe(403);
    expect(JSON.parse(off.body).error).toMatch(/metadata endpoint turned off/);
    await updatePool(deps, { tenantId: "acme", poolId: "web" }, { metadataEnabled: true });
    await stopInstance(deps, { tenantId: "acme", poolId: "web", instanceId: web.instanceId });
    expect(JSON.parse((await ask("/v1/identity", web.net.guestIp)).body).error).toMatch(/is stopped/);
    expect(signed).toEqual([]);
  });

  it("serves the pool's user data as text, and 404 for a pool that has none", async () => {
    const none = await ask("/v1/user-data", web.net.guestIp);
    expect([none.status, JSON.parse(none.body).error]).toEqual([404, "pool acme/web has no user data"]);
    await updatePool(deps, { tenantId: "acme", poolId: "web" }, { userData: "#cloud-config\nhostname: é\n" });
    const some = await ask("/v1/user-data", web.net.guestIp);
    expect([some.status, some.contentType, some.body]).toEqual([200, "text/plain; charset=utf-8", "#cloud-config\nhostname: é\n"]);
    await updatePool(deps, { tenantId: "acme", poolId: "web" }, { userData: "" });
    expect((await deps.store.getPool("acme", "web"))!.userData).toBeUndefined();
    expect((await ask("/v1/user-data", web.net.guestIp)).status).toBe(404);
    const tooBig = await updatePool(deps, { tenantId: "acme", poolId: "web" }, { userData: "é".repeat(32_769) }).catch((e: Error) => e);
    expect((tooBig as Error).message).toMatch(/user_data: must be at most 65536 bytes of UTF-8 \(is 65538\)/);
  });

  it("refuses unknown paths and methods other than GET", async () => {
    expect((await ask("/v2/identity", web.net.guestIp)).status).toBe(404);
    expect((await ask("/v1/identity", web.net.guestIp, "10.213.1.1", "POST")).status).toBe(405);
  });
});
