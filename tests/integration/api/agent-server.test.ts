// The agent's servers for real: HTTP/2 with TLS 1.3 and client certificates on 127.0.0.1, certificates minted in
// the test by CertStore, records on disk (FsStore), the local Unix socket and the metrics endpoint.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import type { TLSSocket } from "node:tls";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../../gen/mvm/v1/agent_service_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../../gen/grpc/health/v1/health_pb.js";
import { InstanceService } from "../../../gen/mvm/v1/instance_service_pb.js";
import { PoolService } from "../../../gen/mvm/v1/pool_service_pb.js";
import { TenantService } from "../../../gen/mvm/v1/tenant_service_pb.js";
import { observeInstanceWrites } from "../../../src/core/observed-store.js";
import { WatchHub } from "../../../src/core/watch-hub.js";
import type { NodeRuntime } from "../../../src/agent/node-runtime-types.js";
import { buildAgentServer, prepareSocketPath, type AgentServer } from "../../../src/agent/server.js";
import { createCertificateAuthority, issueCertificate, type CertificateAuthority } from "../../../src/platform/pki/cert-authority.js";
import { CertStore } from "../../../src/platform/pki/cert-store.js";
import type { Identity } from "../../../src/platform/pki/identity.js";
import { createMtlsClientOptions } from "../../../src/platform/pki/tls-context.js";
import { FsAuditLog } from "../../../src/runtime/audit/fs-audit-log.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { FsStore } from "../../../src/runtime/store/fs-store.js";
import { fakeImageBuilder, fakeNodeFacts, makeRuntime } from "../../unit/api/api-harness.js";
import { expectCode } from "../../unit/api/expect-rpc.js";

const TD = "mvm.test";
const HOUR = 3_600_000;

interface Agent {
  dir: string;
  runtime: NodeRuntime;
  audit: FsAuditLog;
  certs: CertStore;
  ca: CertificateAuthority;
  server: AgentServer;
  port: number;
  socketPath: string;
  metricsPort: number;
  logs: string[];
}

async function startAgent(): Promise<Agent> {
  const dir = mkdtempSync(join(tmpdir(), "mvm-agent-"));
  const store = await FsStore.open(dir);
  const hub = new WatchHub();
  const audit = new FsAuditLog(dir, { pollIntervalMs: 50 });
  const plane = new FakeDataPlane();
  const base = makeRuntime(dir, plane, hub, audit, fakeImageBuilder());
  const runtime: NodeRuntime = { ...base, store: observeInstanceWrites(store, hub) };
  const certs = CertStore.at(dir);
  await certs.init({ nodeId: (await store.node()).nodeId, trustDomain: TD });
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      logs.push(String(chunk));
      done();
    },
  });
  const socketPath = join(dir, "agent.sock");
  const server = buildAgentServer({
    runtime,
    certStore: certs,
    listen: { host: "127.0.0.1", port: 0 },
    socketPath,
    metricsListen: { host: "127.0.0.1", port: 0 },
    logger: pino({ level: "info" }, sink),
    nodeFacts: fakeNodeFacts(async () => (await store.node()).nodeId),
    version: { version: "9.9.9", gitCommit: "" },
    shutdownGraceMs: 500,
    defaultHeartbeatMs: 1000,
  });
  const addresses = await server.start();
  return {
    dir,
    runtime,
    audit,
    certs,
    ca: await certs.certificateAuthority(),
    server,
    port: addresses.api!.port,
    socketPath,
    metricsPort: addresses.metrics!.port,
    logs,
  };
}

async function clientCert(agent: Agent, identity: Identity, options: { issuer?: CertificateAuthority; notBefore?: Date; lifetimeHours?: number; noSpiffe?: boolean } = {}) {
  return issueCertificate(options.issuer ?? agent.ca, {
    identity,
    trustDomain: TD,
    kind: "client",
    notBefore: options.notBefore,
    lifetimeHours: options.lifetimeHours,
    withoutSpiffeIdForTests: options.noSpiffe,
  });
}

type Protocol = "grpc" | "connect" | "grpc-web";

function mtlsTransport(agent: Agent, cert: { certPem: string; keyPem: string } | null, protocol: Protocol = "grpc"): Transport {
  const tls = createMtlsClientOptions({ caPem: agent.ca.certPem, certPem: cert?.certPem ?? "", keyPem: cert?.keyPem ?? "", servername: "127.0.0.1" });
  const nodeOptions = cert === null ? { ...tls, cert: undefined, key: undefined } : tls;
  const options = { baseUrl: `https://127.0.0.1:${agent.port}`, httpVersion: "2" as const, nodeOptions };
  if (protocol === "connect") return createConnectTransport(options);
  if (protocol === "grpc-web") return createGrpcWebTransport(options);
  return createGrpcTransport(options);
}

function socketTransport(path: string): Transport {
  return createGrpcTransport({ baseUrl: "http://localhost", nodeOptions: { createConnection: () => net.connect(path) } });
}

const spec = { image: { source: { case: "debian" as const, value: {} } }, resources: { vcpus: 1, memMib: 256 } };

describe("the agent over mTLS", () => {
  let agent: Agent;
  let admin: Transport;

  beforeAll(async () => {
    agent = await startAgent();
    admin = mtlsTransport(agent, await clientCert(agent, { kind: "admin" }));
  });

  afterAll(async () => {
    await agent.server.stop();
    rmSync(agent.dir, { recursive: true, force: true });
  });

  it("lets an admin create a tenant, pool and instance and read them back, over gRPC, Connect and gRPC-Web", async () => {
    await createClient(TenantService, admin).createTenant({ tenantId: "acme" });
    await createClient(PoolService, admin).createPool({ pool: { tenantId: "acme", poolId: "web" }, spec });
    const created = await createClient(InstanceService, admin).createInstance({ pool: { tenantId: "acme", poolId: "web" } });
    const ref = { tenantId: "acme", poolId: "web", instanceId: created.instance!.instanceId };
    for (const protocol of ["grpc", "connect", "grpc-web"] as const) {
      const t = mtlsTransport(agent, await clientCert(agent, { kind: "admin" }), protocol);
      const got = await createClient(InstanceService, t).getInstance({ instance: ref });
      expect(got.instance?.net?.guestIp, protocol).toBe(created.instance?.net?.guestIp);
      expect((await createClient(TenantService, t).getTenant({ tenantId: "acme" })).tenant?.tenantId).toBe("acme");
    }
    // The records are files: a fresh store on the same data root reads them back.
    const reopened = await FsStore.open(agent.dir);
    expect(await reopened.getInstance("acme", "web", ref.instanceId)).toMatchObject({ status: "created" });
  });

  it("keeps a tenant certificate to its own tenant, and audits what it was refused", async () => {
    const tenants = createClient(TenantService, admin);
    for (const id of ["t-one", "t-two"]) {
      await tenants.createTenant({ tenantId: id });
      await createClient(PoolService, admin).createPool({ pool: { tenantId: id, poolId: "web" }, spec });
      await createClient(InstanceService, admin).createInstance({ pool: { tenantId: id, poolId: "web" } });
    }
    const asOne = createClient(InstanceService, mtlsTransport(agent, await clientCert(agent, { kind: "tenant", tenantId: "t-one" })));
    const listed = await asOne.listInstances({});
    expect(listed.instances.map((i) => i.tenantId)).toEqual(["t-one"]);
    const other = (await createClient(InstanceService, admin).listInstances({ filter: { tenantId: "t-two" } })).instances[0]!;
    const error = await expectCode(asOne.stopInstance({ instance: { tenantId: "t-two", poolId: "web", instanceId: other.instanceId } }), Code.PermissionDenied);
    expect(error.rawMessage).toMatch(/may not act on tenant "t-two"/);
    const denial = (await agent.audit.tail("", 50)).find((e) => e.action === "permission_deny" && e.actor.id === `spiffe://${TD}/tenant/t-one`);
    expect(denial).toMatchObject({ outcome: "denied", details: expect.objectContaining({ rpc: "mvm.v1.InstanceService/StopInstance" }) });
    expect((await agent.audit.verify("")).ok).toBe(true);
  });

  it("refuses a connection without a client certificate", async () => {
    const before = agent.logs.length;
    const error = await expectRejected(createClient(AgentService, mtlsTransport(agent, null)).getVersion({}));
    expect(error.code).not.toBe(Code.PermissionDenied);
    await waitFor(() => agent.logs.slice(before).some((l) => l.includes("tls handshake refused")));
  });

  it("refuses a certificate from another CA", async () => {
    const stranger = await createCertificateAuthority({ trustDomain: TD });
    const before = agent.logs.length;
    await expectRejected(createClient(AgentService, mtlsTransport(agent, await clientCert(agent, { kind: "admin" }, { issuer: stranger }))).getVersion({}));
    await waitFor(() => agent.logs.slice(before).some((l) => /tls handshake refused/.test(l) && /client certificate refused/.test(l)));
  });

  it("refuses an expired certificate", async () => {
    const expired = await clientCert(agent, { kind: "admin" }, { notBefore: new Date(Date.now() - 48 * HOUR), lifetimeHours: 1 });
    const before = agent.logs.length;
    await expectRejected(createClient(AgentService, mtlsTransport(agent, expired)).getVersion({}));
    await waitFor(() => agent.logs.slice(before).some((l) => /CERT_HAS_EXPIRED|expired/i.test(l)));
  });

  it("refuses a certificate without a SPIFFE ID at the API", async () => {
    const bare = await clientCert(agent, { kind: "admin" }, { noSpiffe: true });
    const error = await expectCode(createClient(AgentService, mtlsTransport(agent, bare)).getVersion({}), Code.Unauthenticated);
    expect(error.rawMessage).toMatch(/no mvm identity/);
  });

  it("streams the current state, the marker, then a change made by another call; a token resumes", async () => {
    await createClient(TenantService, admin).createTenant({ tenantId: "watch" });
    await createClient(PoolService, admin).createPool({ pool: { tenantId: "watch", poolId: "web" }, spec });
    const instances = createClient(InstanceService, admin);
    const first = await instances.createInstance({ pool: { tenantId: "watch", poolId: "web" } });
    const controller = new AbortController();
    const iterator = instances.watchInstances({ filter: { tenantId: "watch" } }, { signal: controller.signal })[Symbol.asyncIterator]();
    const initial = (await iterator.next()).value;
    expect(initial.event.case === "upsert" && initial.event.value.instanceId).toBe(first.instance?.instanceId);
    expect((await iterator.next()).value.event.case).toBe("initialStateComplete");
    const other = createClient(InstanceService, mtlsTransport(agent, await clientCert(agent, { kind: "coordinator" })));
    const second = await other.createInstance({ pool: { tenantId: "watch", poolId: "web" } });
    const change = (await iterator.next()).value;
    expect(change.event.case === "upsert" && change.event.value.instanceId).toBe(second.instance?.instanceId);
    controller.abort();

    await other.destroyInstance({ instance: { tenantId: "watch", poolId: "web", instanceId: first.instance!.instanceId } });
    const resumed = instances.watchInstances({ filter: { tenantId: "watch" }, resumeToken: change.resumeToken })[Symbol.asyncIterator]();
    const missed = (await resumed.next()).value;
    expect(missed.event.case).toBe("deleted");
    expect(missed.event.case === "deleted" && missed.event.value.instance?.instanceId).toBe(first.instance?.instanceId);
    expect((await resumed.next()).value.event.case).toBe("initialStateComplete");
    await resumed.return?.();
  });

  it("serves grpc.health.v1 and the metrics endpoint", async () => {
    const health = await createClient(Health, admin).check({ service: "mvm.v1.InstanceService" });
    expect(health.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    const text = await (await fetch(`http://127.0.0.1:${agent.metricsPort}/metrics`)).text();
    expect(text).toMatch(/mvm_rpc_requests_total\{service="mvm.v1.TenantService",method="CreateTenant",code="ok"\} \d+/);
    expect(text).toMatch(/mvm_instances\{tenant="acme",pool="web",status="created"\} 1/);
    expect((await fetch(`http://127.0.0.1:${agent.metricsPort}/other`)).status).toBe(404);
  });

  it("rotates the node certificate and serves the new one without dropping an open connection", async () => {
    const session = http2.connect(`https://127.0.0.1:${agent.port}`, createMtlsClientOptions({ caPem: agent.ca.certPem, ...(await clientCert(agent, { kind: "admin" })), servername: "127.0.0.1" }));
    await new Promise<void>((resolve, reject) => session.once("connect", () => resolve()).once("error", reject));
    const oldSerial = (session.socket as TLSSocket).getPeerCertificate().serialNumber;
    const rotated = await createClient(AgentService, admin).rotateCertificate({ validityDays: 5 });
    expect(rotated.previous?.serialNumber).toBe(oldSerial.toLowerCase());
    expect(rotated.current?.serialNumber).not.toBe(rotated.previous?.serialNumber);
    const fresh = http2.connect(`https://127.0.0.1:${agent.port}`, createMtlsClientOptions({ caPem: agent.ca.certPem, ...(await clientCert(agent, { kind: "admin" })), servername: "127.0.0.1" }));
    await new Promise<void>((resolve, reject) => fresh.once("connect", () => resolve()).once("error", reject));
    expect((fresh.socket as TLSSocket).getPeerCertificate().serialNumber.toLowerCase()).toBe(rotated.current?.serialNumber);
    expect(session.closed || session.destroyed).toBe(false);
    fresh.close();
    session.close();
    const status = await createClient(AgentService, admin).getCertificateStatus({});
    expect(status.nodeCertificate?.serialNumber).toBe(rotated.current?.serialNumber);
    expect(status.nodeCertificate?.keyAlgorithm).toBe("ECDSA P-256");
    expect((await agent.audit.tail("", 20)).some((e) => e.action === "certificate_rotate" && e.outcome === "success")).toBe(true);
  });
});

describe("the local socket", () => {
  let agent: Agent;

  beforeAll(async () => {
    agent = await startAgent();
  });

  afterAll(async () => {
    await agent.server.stop();
    rmSync(agent.dir, { recursive: true, force: true });
  });

  it("serves the same API to the local user, and is mode 0600", async () => {
    expect(statSync(agent.socketPath).mode & 0o777).toBe(0o600);
    const local = socketTransport(agent.socketPath);
    await createClient(TenantService, local).createTenant({ tenantId: "acme" });
    expect((await createClient(TenantService, local).listTenants({})).tenants.map((t) => t.tenantId)).toEqual(["acme"]);
    const entry = (await agent.audit.tail("acme", 5)).find((e) => e.action === "tenant_create");
    expect(entry?.actor.kind).toBe("local");
  });

  it("is not taken over while an agent answers on it, and a stale one is replaced", async () => {
    await expect(prepareSocketPath(agent.socketPath)).rejects.toMatchObject({ kind: "failed_precondition" });
    const stalePath = join(agent.dir, "stale.sock");
    // An agent killed with SIGKILL leaves its socket file behind with nobody listening.
    const child = spawn(process.execPath, ["-e", `require("net").createServer().listen(${JSON.stringify(stalePath)}, () => console.log("up"))`]);
    await new Promise((r) => child.stdout.once("data", r));
    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r));
    expect(statSync(stalePath).isSocket()).toBe(true);
    await prepareSocketPath(stalePath);
    expect(() => statSync(stalePath)).toThrow();
  });
});

describe("shutdown", () => {
  it("ends open streams with Unavailable and removes the socket", async () => {
    const agent = await startAgent();
    try {
      const admin = mtlsTransport(agent, await clientCert(agent, { kind: "admin" }));
      const iterator = createClient(InstanceService, admin).watchInstances({})[Symbol.asyncIterator]();
      expect((await iterator.next()).value.event.case).toBe("initialStateComplete");
      const pending = iterator.next();
      const stopping = agent.server.stop();
      await expectCode(pending, Code.Unavailable);
      await stopping;
      expect(() => statSync(agent.socketPath)).toThrow();
      await expectRejected(createClient(AgentService, mtlsTransport(agent, await clientCert(agent, { kind: "admin" }))).getVersion({}));
    } finally {
      await agent.server.stop();
      rmSync(agent.dir, { recursive: true, force: true });
    }
  });
});

async function expectRejected(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (e) {
    return ConnectError.from(e);
  }
  throw new Error("the call succeeded but should have been refused");
}

async function waitFor(condition: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}
