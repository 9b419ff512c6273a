// A node runtime made of test doubles (MemoryStore, FakeDataPlane, a fake image builder) with a real watch hub and
// a real audit log in a temporary directory, and clients that reach the API through Connect's in-memory router
// transport. Each client call carries the identity of a certificate minted for the test.

import { X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DescService } from "@bufbuild/protobuf";
import { createClient, createRouterTransport, type Client, type ConnectRouter, type Interceptor, type Transport } from "@connectrpc/connect";
import { pino } from "pino";
import type { HypervisorKind } from "../../../src/core/model.js";
import type { BuildProgressEvent, BuiltImage, ImageBuilder } from "../../../src/core/data-plane-ports.js";
import { observeInstanceWrites } from "../../../src/core/observed-store.js";
import { WatchHub } from "../../../src/core/watch-hub.js";
import type { NodeRuntime } from "../../../src/agent/node-runtime-types.js";
import type { ApiDeps, DiskReport, NodeFacts } from "../../../src/api/api-deps.js";
import type { PeerInfo } from "../../../src/api/auth.js";
import { IdempotencyCache } from "../../../src/api/idempotency.js";
import { apiInterceptors, registerApiServices } from "../../../src/api/routes.js";
import { createMetrics, type Metrics } from "../../../src/platform/metrics.js";
import { createCertificateAuthority, issueCertificate, type CertificateAuthority } from "../../../src/platform/pki/cert-authority.js";
import { parseIdentityArg } from "../../../src/platform/pki/identity.js";
import { FsAuditLog } from "../../../src/runtime/audit/fs-audit-log.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { MemoryStore } from "../../../src/runtime/fake/memory-store.js";
import { create } from "@bufbuild/protobuf";
import { NodeCapabilitiesSchema, NodeInfoSchema } from "../../../gen/mvm/v1/node_pb.js";

export const TRUST_DOMAIN = "mvm.test";
export const IDENTITY_HEADER = "x-test-identity";
/** Identities the harness holds certificates for; `local` is the Unix socket caller, `nobody` a certificate without one. */
export const IDENTITIES = ["admin", "coordinator", "tenant/acme", "tenant/other", "node/n-1"] as const;
export type TestIdentity = (typeof IDENTITIES)[number] | "local" | "nobody" | "anonymous";

export interface FakeBuilder extends ImageBuilder {
  builds: number;
  /** Called at the start of each build: tests can hold a build open. */
  gate: () => Promise<void>;
  fail: Error | null;
}

export function fakeImageBuilder(): FakeBuilder {
  const builder: FakeBuilder = {
    builds: 0,
    gate: async () => undefined,
    fail: null,
    async build(_source, _dir, onProgress: (e: BuildProgressEvent) => void): Promise<BuiltImage> {
      builder.builds++;
      onProgress({ phase: "resolve", percent: 5, message: "resolving inputs" });
      await builder.gate();
      onProgress({ phase: "rootfs", percent: 60, message: "installing packages" });
      if (builder.fail) throw builder.fail;
      onProgress({ phase: "disk-image", percent: 90, message: "writing rootfs.ext4" });
      const revision = `${"ab".repeat(8)}${builder.builds.toString(16).padStart(4, "0")}`;
      const artifact = (path: string) => ({ path, sha256: "0".repeat(64), sizeBytes: 1024 });
      return { revision, kernel: artifact("vmlinux"), initrd: artifact("initramfs.cpio.gz"), rootfs: artifact("rootfs.ext4"), builder: "debian/1", flakeLockHash: "" };
    },
  };
  return builder;
}

export interface Harness {
  dir: string;
  runtime: NodeRuntime;
  plane: FakeDataPlane;
  hub: WatchHub;
  audit: FsAuditLog;
  metrics: Metrics;
  builder: FakeBuilder;
  deps: ApiDeps;
  shutdown: AbortController;
  routes: (router: ConnectRouter) => void;
  client<S extends DescService>(service: S, identity: TestIdentity): Client<S>;
  close(): Promise<void>;
}

export function fakeNodeFacts(nodeId: () => Promise<string>): NodeFacts {
  return {
    async nodeInfo() {
      return create(NodeInfoSchema, { nodeId: await nodeId(), hostname: "test-host", arch: "x86_64", vcpus: 8, memMib: 16384, capabilities: create(NodeCapabilitiesSchema, { cgroupVersion: 2 }) });
    },
    async capabilities() {
      return create(NodeCapabilitiesSchema, { cgroupVersion: 2 });
    },
    async diskUsage(tenantId): Promise<DiskReport> {
      return {
        dataRoot: "/data",
        filesystemBytes: 100 * 1024 ** 3,
        freeBytes: 50 * 1024 ** 3,
        reserveBytes: 1024 ** 3,
        imageCacheBytes: 0,
        tenants: tenantId === "other" ? [] : [{ tenantId: "acme", pools: [{ poolId: "web", artifactsBytes: 10, instancesBytes: 20, dataDiskBytes: 5, snapshotsBytes: 30, revisions: 1 }], otherBytes: 7 }],
      };
    },
  };
}

export async function certificatesFor(ca: CertificateAuthority): Promise<Map<string, X509Certificate>> {
  const certs = new Map<string, X509Certificate>();
  for (const id of IDENTITIES) {
    const issued = await issueCertificate(ca, { identity: parseIdentityArg(id), trustDomain: TRUST_DOMAIN, kind: "client" });
    certs.set(id, new X509Certificate(issued.certPem));
  }
  const bare = await issueCertificate(ca, { identity: { kind: "admin" }, trustDomain: TRUST_DOMAIN, kind: "client", withoutSpiffeIdForTests: true });
  certs.set("nobody", new X509Certificate(bare.certPem));
  return certs;
}

export function makeRuntime(dir: string, plane: FakeDataPlane, hub: WatchHub, audit: FsAuditLog, builder: ImageBuilder): NodeRuntime {
  let counter = 0;
  const store = observeInstanceWrites(new MemoryStore({ dataRoot: dir }), hub);
  return {
    store,
    clock: { nowMs: () => Date.now() },
    ids: { randomHex: (n: number) => (0x10000000 + ++counter).toString(16).slice(-n * 2).padStart(n * 2, "0") },
    keys: { ed25519: (c: string) => ({ publicKey: `ssh-ed25519 AAAATEST ${c}`, privateKey: "-----BEGIN OPENSSH PRIVATE KEY-----" }) },
    networkPool: { cidr: "10.240.0.0/12", prefixLen: 24 },
    audit,
    events: hub,
    vmm: (kind: HypervisorKind) => plane.vmm(kind),
    chooseHypervisor: async () => "qemu",
    network: plane.network(null),
    cgroups: plane.cgroupsPort(),
    volumes: plane.volumes(),
    snapshots: plane.snapshotStore(),
    guest: plane.guest((argv) => ({ exitCode: argv.includes("fail") ? 3 : 0, stdout: `ran ${argv.join(" ")}\n`, stderr: "" })),
    paths: {
      revisionDir: (t, p, r) => join(dir, "tenants", t, "pools", p, "revisions", r),
      instanceDir: (t, p, i) => join(dir, "tenants", t, "pools", p, "instances", i),
      tenantPrivateKey: (t) => join(dir, "tenants", t, "ssh", "id_ed25519"),
      keptDataDisk: (t, p, i) => join(dir, "tenants", t, "pools", p, "kept", i, "data.ext4"),
    },
    cgroupLimits: () => ({ memoryBytes: 1 << 28, cpuQuotaUs: 100_000, cpuPeriodUs: 100_000, cpuBurstUs: 100_000, pidsMax: 64 }),
    metadataPort: 8169,
    bootTimeoutMs: 1000,
    stopTimeoutMs: 1000,
    imageBuilder: builder,
    revisionsDir: (t, p) => join(dir, "tenants", t, "pools", p, "revisions"),
    revisionFiles: plane.revisionFiles(),
    async close() {},
  };
}

export async function createHarness(options: { heartbeatMs?: number; watcherBufferLimit?: number } = {}): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), "mvm-api-"));
  const plane = new FakeDataPlane();
  const hub = new WatchHub({ watcherBufferLimit: options.watcherBufferLimit });
  const audit = new FsAuditLog(dir, { pollIntervalMs: 50 });
  const builder = fakeImageBuilder();
  const runtime = makeRuntime(dir, plane, hub, audit, builder);
  const metrics = createMetrics({ processMetrics: false });
  const shutdown = new AbortController();
  const ca = await createCertificateAuthority({ trustDomain: TRUST_DOMAIN });
  const certs = await certificatesFor(ca);
  const deps: ApiDeps = {
    runtime,
    watchHub: hub,
    auditReader: audit,
    node: fakeNodeFacts(async () => (await runtime.store.node()).nodeId),
    metrics,
    logger: pino({ level: "silent" }),
    version: { version: "1.2.3", gitCommit: "abc" },
    shutdownSignal: shutdown.signal,
    defaultHeartbeatMs: options.heartbeatMs,
  };
  const resolvePeer = (_values: unknown, header: Headers): PeerInfo | null => {
    const id = header.get(IDENTITY_HEADER);
    if (id === "local") return { transport: "local", uid: 0 };
    if (id === null || id === "anonymous") return null;
    return { transport: "mtls", certificate: certs.get(id) ?? null };
  };
  const idempotency = new IdempotencyCache();
  const routes = (router: ConnectRouter) => registerApiServices(router, deps, { idempotency });
  const interceptors = apiInterceptors(deps, { trustDomain: TRUST_DOMAIN, resolvePeer });
  // One in-memory transport per identity; each sends that identity's header on every call.
  const transports = new Map<TestIdentity, Transport>();
  const transportFor = (identity: TestIdentity): Transport => {
    let t = transports.get(identity);
    if (t === undefined) {
      const sendIdentity: Interceptor = (next) => (req) => {
        req.header.set(IDENTITY_HEADER, identity);
        return next(req);
      };
      t = createRouterTransport(routes, { router: { interceptors }, transport: { interceptors: [sendIdentity] } });
      transports.set(identity, t);
    }
    return t;
  };
  return {
    dir,
    runtime,
    plane,
    hub,
    audit,
    metrics,
    builder,
    deps,
    shutdown,
    routes,
    client: <S extends DescService>(service: S, identity: TestIdentity) => createClient(service, transportFor(identity)),
    async close() {
      shutdown.abort();
      hub.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
