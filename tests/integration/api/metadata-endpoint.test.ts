// The metadata endpoint on real sockets: bound inside a network namespace this test makes (the agent stays in its
// own), reached from an address of a recorded instance on the tenant gateway, tokens verified with the key on disk.
// No VM: the instance's address sits on the test's bridge, so the kernel sees the same source and destination as
// from a guest.

import { execFile, execFileSync, spawnSync } from "node:child_process";
import { promisify } from "node:util";
import { verify } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startMetadataServer, type MetadataServer } from "../../../src/agent/metadata-server.js";
import type { Instance } from "../../../src/core/model.js";
import { createInstance } from "../../../src/core/use-cases/instances.js";
import { startInstance } from "../../../src/core/use-cases/lifecycle.js";
import { createPool } from "../../../src/core/use-cases/pools.js";
import { createTenant } from "../../../src/core/use-cases/tenants.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { listenInNetns } from "../../../src/runtime/metadata/netns-listener.js";
import { loadTokenSigner, TOKEN_KEY_FILE, TOKEN_PUBLIC_KEY_FILE } from "../../../src/runtime/metadata/token-signer.js";
import { fakeDataPlaneDeps } from "../../helpers/fake-data-plane-deps.js";

const execFileAsync = promisify(execFile);
const skipReason = process.getuid?.() !== 0 ? "needs root (network namespace)" : null;
const NETNS = `mvm-it-md-${process.pid}`;
const PORT = 8169;
let keyDir = "";
let server: MetadataServer | null = null;
let web: Instance;

/** GET from inside the namespace, from `source` to `target`: status and body. Asynchronous: this process serves it. */
async function get(path: string, source: string, target = "10.213.1.1"): Promise<{ status: number; body: string }> {
  const script = `require("node:http").get({ host: ${JSON.stringify(target)}, port: ${PORT}, path: ${JSON.stringify(path)}, localAddress: ${JSON.stringify(source)}, timeout: 5000 }, (r) => { let b = ""; r.on("data", (d) => (b += d)); r.on("end", () => process.stdout.write(JSON.stringify({ status: r.statusCode, body: b }))); }).on("error", (e) => { process.stdout.write(JSON.stringify({ status: 0, body: e.message })); })`;
  const { stdout } = await execFileAsync("ip", ["netns", "exec", NETNS, process.execPath, "-e", script], { encoding: "utf8", timeout: 15_000 });
  return JSON.parse(stdout);
}

describe.skipIf(skipReason !== null)("metadata endpoint in a network namespace", () => {
  beforeAll(async () => {
    const deps = fakeDataPlaneDeps(new FakeDataPlane());
    await createTenant(deps, { tenantId: "acme", quotas: {}, network: { ipv4Subnet: "10.213.1.0/24" } });
    await createTenant(deps, { tenantId: "other", quotas: {}, network: { ipv4Subnet: "10.213.2.0/24" } });
    await createPool(deps, { tenantId: "acme", poolId: "web" }, { resources: { vcpus: 1, memMib: 256, dataDiskMib: 0 } });
    await deps.store.putPool({ ...(await deps.store.getPool("acme", "web"))!, currentRevision: "abc123" });
    const created = await createInstance(deps, { tenantId: "acme", poolId: "web" });
    web = await startInstance(deps, { tenantId: "acme", poolId: "web", instanceId: created.instanceId });

    execFileSync("ip", ["netns", "add", NETNS]);
    const inNs = (...args: string[]) => execFileSync("ip", ["-n", NETNS, ...args]);
    inNs("link", "set", "lo", "up");
    for (const [bridge, addresses] of [["mvmt-br1", ["10.213.1.1/24", `${web.net.guestIp}/24`, "10.213.1.77/24"]], ["mvmt-br2", ["10.213.2.1/24"]]] as const) {
      inNs("link", "add", bridge, "type", "bridge");
      for (const a of addresses) inNs("addr", "add", a, "dev", bridge);
      inNs("link", "set", bridge, "up");
    }
    keyDir = mkdtempSync(join(tmpdir(), "mvm-md-"));
    const logger = pino({ level: "silent" });
    server = startMetadataServer({
      deps: { store: deps.store, clock: { nowMs: () => Date.now() }, signer: await loadTokenSigner(keyDir) },
      nodeId: "n-test",
      listen: () => listenInNetns(NETNS, "0.0.0.0", PORT),
      logger,
      retryMs: 200,
    });
    await server.serving;
  }, 30_000);

  afterAll(async () => {
    await server?.close();
    spawnSync("ip", ["netns", "delete", NETNS]);
    if (keyDir) rmSync(keyDir, { recursive: true, force: true });
  });

  it("answers the instance at its address with its identity", async () => {
    const r = await get("/v1/identity", web.net.guestIp);
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toMatchObject({ tenant_id: "acme", pool_id: "web", instance_id: web.instanceId, node_id: "n-test" });
  });

  it("signs a token that the public key on disk verifies, with the instance as subject and a 15-minute life", async () => {
    const r = await get("/v1/token", web.net.guestIp);
    expect(r.status).toBe(200);
    const [header, payload, signature] = JSON.parse(r.body).token.split(".");
    expect(JSON.parse(Buffer.from(header, "base64url").toString())).toEqual({ alg: "EdDSA", typ: "JWT" });
    const claims = JSON.parse(Buffer.from(payload, "base64url").toString());
    expect(claims).toMatchObject({ sub: `acme/web/${web.instanceId}`, aud: "mvm-metadata", iss: "mvm:n-test" });
    expect(claims.exp - claims.iat).toBe(900);
    const publicKey = readFileSync(join(keyDir, TOKEN_PUBLIC_KEY_FILE), "utf8");
    expect(verify(null, Buffer.from(`${header}.${payload}`), publicKey, Buffer.from(signature, "base64url"))).toBe(true);
    expect(verify(null, Buffer.from(`${header}.${payload}x`), publicKey, Buffer.from(signature, "base64url"))).toBe(false);
    expect(statSync(join(keyDir, TOKEN_KEY_FILE)).mode & 0o777).toBe(0o600);
    expect((await get("/v1/token-key", web.net.guestIp)).body).toBe(publicKey);
  });

  it("refuses an address that is no instance, and the instance on another tenant's gateway", async () => {
    expect((await get("/v1/identity", "10.213.1.77")).status).toBe(403);
    expect((await get("/v1/identity", web.net.guestIp, "10.213.2.1")).status).toBe(403);
  });

  it("listens only inside the namespace", async () => {
    const refused = await new Promise<string>((resolve) => {
      const socket = net.connect({ host: "127.0.0.1", port: PORT }, () => resolve("connected"));
      socket.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    });
    expect(refused).toBe("ECONNREFUSED");
  });
});
