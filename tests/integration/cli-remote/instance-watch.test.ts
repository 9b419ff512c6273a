// `mvm instance watch` as a user runs it: the built CLI in a child process against a real agent started here
// (records on disk, test doubles for the data plane), over the local Unix socket and over mTLS with --node.
// Needs dist/ (npx tsc -p tsconfig.build.json).

import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InstanceService } from "../../../gen/mvm/v1/instance_service_pb.js";
import { PoolService } from "../../../gen/mvm/v1/pool_service_pb.js";
import { TenantService } from "../../../gen/mvm/v1/tenant_service_pb.js";
import type { NodeRuntime } from "../../../src/agent/node-runtime-types.js";
import { buildAgentServer, type AgentServer } from "../../../src/agent/server.js";
import { observeInstanceWrites } from "../../../src/core/observed-store.js";
import { WatchHub } from "../../../src/core/watch-hub.js";
import { createCertificateAuthority, issueCertificate } from "../../../src/platform/pki/cert-authority.js";
import { CertStore } from "../../../src/platform/pki/cert-store.js";
import { FsAuditLog } from "../../../src/runtime/audit/fs-audit-log.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { FsStore } from "../../../src/runtime/store/fs-store.js";
import { REPO_ROOT } from "../../helpers/mvm-cli.js";
import { fakeImageBuilder, fakeNodeFacts, makeRuntime } from "../../unit/api/api-harness.js";

const TD = "mvm.test";
const BIN = join(REPO_ROOT, "bin/mvm");
const spec = { image: { source: { case: "debian" as const, value: {} } }, resources: { vcpus: 1, memMib: 256 } };

interface Agent {
  dir: string;
  server: AgentServer;
  port: number;
  socketPath: string;
  local: Transport;
  /** PEM files: the node's CA, an admin client certificate and key. */
  files: { ca: string; cert: string; key: string };
}

async function startAgent(): Promise<Agent> {
  const dir = mkdtempSync(join(tmpdir(), "mvm-cli-remote-"));
  const store = await FsStore.open(dir);
  const hub = new WatchHub();
  const base = makeRuntime(dir, new FakeDataPlane(), hub, new FsAuditLog(dir, { pollIntervalMs: 50 }), fakeImageBuilder());
  const runtime: NodeRuntime = { ...base, store: observeInstanceWrites(store, hub) };
  const certs = CertStore.at(dir);
  await certs.init({ nodeId: (await store.node()).nodeId, trustDomain: TD });
  const ca = await certs.certificateAuthority();
  const admin = await issueCertificate(ca, { identity: { kind: "admin" }, trustDomain: TD, kind: "client" });
  const files = { ca: join(dir, "t-ca.pem"), cert: join(dir, "t-admin.pem"), key: join(dir, "t-admin-key.pem") };
  writeFileSync(files.ca, ca.certPem);
  writeFileSync(files.cert, admin.certPem);
  writeFileSync(files.key, admin.keyPem, { mode: 0o600 });
  const socketPath = join(dir, "agent.sock");
  const server = buildAgentServer({
    runtime,
    certStore: certs,
    listen: { host: "127.0.0.1", port: 0 },
    socketPath,
    logger: pino({ level: "silent" }),
    nodeFacts: fakeNodeFacts(async () => (await store.node()).nodeId),
    version: { version: "9.9.9", gitCommit: "" },
    shutdownGraceMs: 200,
    defaultHeartbeatMs: 1000,
  });
  const addresses = await server.start();
  const local = createGrpcTransport({ baseUrl: "http://localhost", nodeOptions: { createConnection: () => net.connect(socketPath) } });
  return { dir, server, port: addresses.api!.port, socketPath, local, files };
}

/** The CLI as a child process, its stdout split into lines as they arrive. */
class Watcher {
  readonly child: ChildProcessWithoutNullStreams;
  readonly lines: string[] = [];
  stderr = "";
  readonly exited: Promise<number | null>;

  constructor(dataDir: string, args: string[]) {
    this.child = spawn(process.execPath, [BIN, "--data-dir", dataDir, "instance", "watch", ...args], { env: { ...process.env, MVM_CA: "", MVM_CERT: "", MVM_KEY: "" } });
    let partial = "";
    this.child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      const parts = (partial + chunk).split("\n");
      partial = parts.pop() ?? "";
      this.lines.push(...parts);
    });
    this.child.stderr.setEncoding("utf8").on("data", (chunk: string) => (this.stderr += chunk));
    this.exited = new Promise((resolve) => this.child.once("exit", (code) => resolve(code)));
  }

  events(): Array<Record<string, any>> {
    return this.lines.map((l) => JSON.parse(l) as Record<string, any>);
  }

  async waitFor(what: string, predicate: () => boolean, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      if (Date.now() > deadline || this.child.exitCode !== null) {
        throw new Error(`waiting for ${what}: stdout ${JSON.stringify(this.lines)}, stderr ${JSON.stringify(this.stderr)}, exit ${this.child.exitCode}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** Ctrl-C; resolves to the exit code. */
  interrupt(): Promise<number | null> {
    this.child.kill("SIGINT");
    return this.exited;
  }
}

describe("mvm instance watch", () => {
  let agent: Agent;
  let firstId = "";
  const watchers: Watcher[] = [];

  function watch(args: string[], dataDir = agent.dir): Watcher {
    const w = new Watcher(dataDir, args);
    watchers.push(w);
    return w;
  }

  beforeAll(async () => {
    agent = await startAgent();
    await createClient(TenantService, agent.local).createTenant({ tenantId: "acme" });
    await createClient(PoolService, agent.local).createPool({ pool: { tenantId: "acme", poolId: "web" }, spec });
    firstId = (await createClient(InstanceService, agent.local).createInstance({ pool: { tenantId: "acme", poolId: "web" } })).instance!.instanceId;
  }, 30_000);

  afterAll(async () => {
    for (const w of watchers) if (w.child.exitCode === null) w.child.kill("SIGKILL");
    await agent.server.stop();
    rmSync(agent.dir, { recursive: true, force: true });
  });

  it("through the local socket: prints the current state, the marker, then a new instance; Ctrl-C exits 0", async () => {
    const w = watch(["-o", "json"]);
    await w.waitFor("the initial state", () => w.events().some((e) => e.event === "initial_state_complete"));
    const initial = w.events();
    expect(initial.find((e) => e.event === "upsert")?.instance).toMatchObject({ tenantId: "acme", poolId: "web", instanceId: firstId, status: "created" });
    expect(initial.find((e) => e.event === "initial_state_complete")?.instanceCount).toBe(1);

    const created = (await createClient(InstanceService, agent.local).createInstance({ pool: { tenantId: "acme", poolId: "web" } })).instance!;
    await w.waitFor("the new instance", () => w.events().some((e) => e.event === "upsert" && e.instance.instanceId === created.instanceId));
    const live = w.events().find((e) => e.event === "upsert" && e.instance.instanceId === created.instanceId)!;
    expect(live.instance.net.guestIp).toBe(created.net!.guestIp);
    expect(live.revision).toBeGreaterThan(initial.find((e) => e.event === "initial_state_complete")!.revision);
    expect(live.resumeToken).not.toBe("");

    expect(await w.interrupt()).toBe(0);
    expect(w.stderr).toBe("");
  });

  it("over mTLS with --node and an admin certificate, filtered by tenant, as a table", async () => {
    await createClient(TenantService, agent.local).createTenant({ tenantId: "other" });
    await createClient(PoolService, agent.local).createPool({ pool: { tenantId: "other", poolId: "api" }, spec });
    await createClient(InstanceService, agent.local).createInstance({ pool: { tenantId: "other", poolId: "api" } });
    const empty = mkdtempSync(join(tmpdir(), "mvm-cli-remote-empty-"));
    try {
      // A data root with no agent: only --node can reach one.
      const w = watch(["--node", `127.0.0.1:${agent.port}`, "--ca", agent.files.ca, "--cert", agent.files.cert, "--key", agent.files.key, "--tenant", "other"], empty);
      await w.waitFor("the marker line", () => w.lines.some((l) => l.includes("initial_state_complete")));
      expect(w.lines[0]).toMatch(/^TIME\s+REVISION\s+EVENT\s+INSTANCE\s+STATUS\s+IP$/);
      const upserts = w.lines.filter((l) => /\supsert\s/.test(l));
      expect(upserts).toHaveLength(1);
      expect(upserts[0]).toMatch(/other\/api\/i-[0-9a-f]{8}\s+created\s+\d+\.\d+\.\d+\.\d+\/\d+$/);
      expect(w.lines.join("\n")).not.toContain("acme/");
      expect(await w.interrupt()).toBe(0);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it("refuses an agent whose certificate does not chain to --ca, in one line", async () => {
    const stranger = await createCertificateAuthority({ trustDomain: TD });
    const wrongCa = join(agent.dir, "t-wrong-ca.pem");
    writeFileSync(wrongCa, stranger.certPem);
    // Asynchronously: the agent runs in this process and must answer the handshake meanwhile.
    const w = watch(["--node", `127.0.0.1:${agent.port}`, "--ca", wrongCa, "--cert", agent.files.cert, "--key", agent.files.key]);
    expect(await w.exited, w.stderr).toBe(8);
    expect(w.lines.filter((l) => l !== "" && !/^TIME/.test(l))).toEqual([]);
    expect(w.stderr.trimEnd().split("\n")).toHaveLength(1);
    expect(w.stderr).toMatch(new RegExp(`^mvm: agent at 127\\.0\\.0\\.1:${agent.port}: connection failed: .*certificate`));
  });

  it("says how to fix a missing agent or missing certificate flags", () => {
    const empty = mkdtempSync(join(tmpdir(), "mvm-cli-remote-empty-"));
    try {
      const none = spawnSync(process.execPath, [BIN, "--data-dir", empty, "instance", "watch"], { encoding: "utf8", timeout: 30_000 });
      expect(none.status).toBe(8);
      expect(none.stderr).toMatch(/^mvm: no agent: start mvm agent serve, or pass --node/);
      const flags = spawnSync(process.execPath, [BIN, "--data-dir", empty, "instance", "watch", "--node", "127.0.0.1:7443"], {
        encoding: "utf8",
        timeout: 30_000,
        env: { ...process.env, MVM_CA: "", MVM_CERT: "", MVM_KEY: "" },
      });
      expect(flags.status).toBe(2);
      expect(flags.stderr).toMatch(/--ca: is required with --node/);
      expect(flags.stderr).toMatch(/--key: is required with --node/);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it("ends with an error and a non-zero exit when the agent shuts down", async () => {
    const own = await startAgent();
    try {
      const w = watch(["-o", "json"], own.dir);
      await w.waitFor("the marker", () => w.events().some((e) => e.event === "initial_state_complete"));
      await own.server.stop();
      expect(await w.exited).toBe(8);
      expect(w.stderr).toMatch(/^mvm: watch ended: agent at .*agent\.sock: /);
      expect(w.stderr.trimEnd().split("\n")).toHaveLength(1);
    } finally {
      await own.server.stop();
      rmSync(own.dir, { recursive: true, force: true });
    }
  });
});
