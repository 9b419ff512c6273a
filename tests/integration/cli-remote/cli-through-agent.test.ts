// The CLI acting through a running agent: the built `mvm` binary against a real `mvm agent serve` child process on a
// temp data root, over its socket (found under the data root) and with --node over mTLS (certificates from `mvm
// agent certs init` and `issue`). The agent's own WatchInstances stream must see what the CLI creates; --local must
// bypass the agent; exit codes and output must be those of an in-process run. Needs dist/.

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InstanceService } from "../../../gen/mvm/v1/instance_service_pb.js";
import { REPO_ROOT, runMvm, type CliResult } from "../../helpers/mvm-cli.js";

const BIN = join(REPO_ROOT, "bin/mvm");
const NO_CERT_ENV = { MVM_CA: "", MVM_CERT: "", MVM_KEY: "" };

interface RunningAgent {
  child: ChildProcess;
  port: number;
  socketPath: string;
}

async function startAgent(dataDir: string): Promise<RunningAgent> {
  const child = spawn(process.execPath, [BIN, "--data-dir", dataDir, "agent", "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "none"], {
    env: { ...process.env, ...NO_CERT_ENV },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (t: string) => (stderr += t));
  const deadline = Date.now() + 30_000;
  for (;;) {
    const m = /serving mTLS on 127\.0\.0\.1:(\d+), socket (\S+)/.exec(stderr);
    if (m) return { child, port: Number(m[1]), socketPath: m[2] as string };
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`agent did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The agent's live instance stream, as a client of its socket sees it: instance IDs of every upsert, in order. */
function watchUpserts(socketPath: string): { ids: string[]; ready: Promise<void>; stop: () => void } {
  const transport = createGrpcTransport({ baseUrl: "http://localhost", nodeOptions: { createConnection: () => net.connect(socketPath) } });
  const abort = new AbortController();
  const ids: string[] = [];
  let markReady: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => (markReady = resolve));
  void (async () => {
    try {
      for await (const m of createClient(InstanceService, transport).watchInstances({}, { signal: abort.signal })) {
        if (m.event.case === "upsert") ids.push(m.event.value.instanceId);
        if (m.event.case === "initialStateComplete") markReady();
      }
    } catch {
      // Ended by stop().
    }
  })();
  return { ids, ready, stop: () => abort.abort() };
}

async function until(what: string, predicate: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function ok(r: CliResult): CliResult {
  expect(r.code, r.stderr).toBe(0);
  return r;
}

describe("the CLI through a running agent", () => {
  const dataDir = mkdtempSync(join(tmpdir(), "mvm-cli-agent-"));
  const elsewhere = mkdtempSync(join(tmpdir(), "mvm-cli-agent-empty-"));
  const clientDir = join(dataDir, "client");
  let agent: RunningAgent;
  let watch: ReturnType<typeof watchUpserts>;
  const mvm = (args: string[], dir = dataDir) => runMvm(args, { dataDir: dir, env: NO_CERT_ENV });
  const mtls = () => ["--node", `127.0.0.1:${agent.port}`, "--ca", join(clientDir, "ca.pem"), "--cert", join(clientDir, "admin.pem"), "--key", join(clientDir, "admin-key.pem")];

  beforeAll(async () => {
    ok(mvm(["agent", "certs", "init"]));
    ok(mvm(["agent", "certs", "issue", "--identity", "admin", "--out", clientDir]));
    agent = await startAgent(dataDir);
    watch = watchUpserts(agent.socketPath);
    await watch.ready;
  }, 60_000);

  afterAll(async () => {
    watch?.stop();
    if (agent && agent.child.exitCode === null) {
      const exited = new Promise((r) => agent.child.once("exit", r));
      agent.child.kill("SIGTERM");
      await exited;
    }
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(elsewhere, { recursive: true, force: true });
  });

  it("creates tenant, pool and instance through the socket, and the agent's watchers see the instance", () => {
    ok(mvm(["tenant", "create", "acme", "--label", "team=ci", "-o", "json"]));
    ok(mvm(["pool", "create", "acme/web", "--mem-mib", "512", "-o", "json"]));
    const created = JSON.parse(ok(mvm(["instance", "create", "acme/web", "-o", "json"])).stdout) as { instanceId: string };
    return until(`the upsert of ${created.instanceId}`, () => watch.ids.includes(created.instanceId));
  }, 60_000);

  it("--local acts in this process: the agent's watchers do not see it", async () => {
    const bypassed = JSON.parse(ok(mvm(["instance", "create", "acme/web", "--local", "-o", "json"])).stdout) as { instanceId: string };
    const routed = JSON.parse(ok(mvm(["instance", "create", "acme/web", "-o", "json"])).stdout) as { instanceId: string };
    await until(`the upsert of ${routed.instanceId}`, () => watch.ids.includes(routed.instanceId));
    expect(watch.ids).not.toContain(bypassed.instanceId);
    // Both wrote the same store: each side lists both.
    const listed = JSON.parse(ok(mvm(["instance", "list", "--tenant", "acme", "-o", "json"])).stdout) as Array<{ instanceId: string }>;
    expect(listed.map((i) => i.instanceId)).toEqual(expect.arrayContaining([bypassed.instanceId, routed.instanceId]));
  }, 60_000);

  it("prints byte for byte what an in-process run prints", () => {
    const id = (JSON.parse(ok(mvm(["instance", "list", "-o", "json"])).stdout) as Array<{ instanceId: string }>)[0]!.instanceId;
    const commands = [
      ["tenant", "info", "acme", "-o", "json"],
      ["tenant", "list"],
      ["pool", "info", "acme/web", "-o", "yaml"],
      ["pool", "list", "acme"],
      ["instance", "list", "-o", "json"],
      ["instance", "info", `acme/web/${id}`],
      ["instance", "stats", `acme/web/${id}`, "-o", "json"],
      ["pool", "builds", "acme/web"],
      ["audit", "tail", "acme", "-n", "50"],
      ["audit", "verify", "acme", "-o", "json"],
      ["audit", "verify", "--node-log"],
    ];
    for (const command of commands) {
      const viaAgent = ok(mvm(command));
      const inProcess = ok(mvm([...command, "--local"]));
      expect(viaAgent.stdout, command.join(" ")).toBe(inProcess.stdout);
      expect(viaAgent.stdout).not.toBe("");
    }
  }, 120_000);

  it("refuses with the exit code and message of an in-process run", () => {
    const cases: Array<[string[], number]> = [
      [["tenant", "info", "nosuch"], 3],
      [["instance", "info", "acme/web/i-00000000"], 3],
      [["pool", "info", "acme/nosuch"], 3],
      [["tenant", "create", "acme"], 4],
      [["pool", "create", "acme/web"], 4],
      [["pool", "create", "acme/big", "--vcpus", "0"], 2],
      [["pool", "scale", "acme/web", "--running", "-1"], 2],
      [["pool", "update", "acme/web", "--hypervisor", "xen"], 2],
      [["tenant", "update", "acme", "--max-pools", "-3"], 2],
    ];
    for (const [command, code] of cases) {
      const viaAgent = mvm(command);
      const inProcess = mvm([...command, "--local"]);
      expect(viaAgent.code, `${command.join(" ")}: ${viaAgent.stderr}`).toBe(code);
      expect(inProcess.code, `${command.join(" ")} --local: ${inProcess.stderr}`).toBe(code);
      expect(viaAgent.stderr, command.join(" ")).toBe(inProcess.stderr);
    }
  }, 120_000);

  it("with --node acts over mTLS from another data root, and the agent's watchers see it", async () => {
    const tenants = JSON.parse(ok(mvm(["tenant", "list", ...mtls(), "-o", "json"], elsewhere)).stdout) as Array<{ tenantId: string }>;
    expect(tenants.map((t) => t.tenantId)).toEqual(["acme"]);
    const created = JSON.parse(ok(mvm(["instance", "create", "acme/web", ...mtls(), "-o", "json"], elsewhere)).stdout) as { instanceId: string };
    await until(`the upsert of ${created.instanceId}`, () => watch.ids.includes(created.instanceId));
    expect(mvm(["tenant", "info", "nosuch", ...mtls()], elsewhere).code).toBe(3);
    expect(mvm(["tenant", "list", "--local", ...mtls()], elsewhere).code).toBe(2);
  }, 60_000);

  it("destroys through the agent", () => {
    ok(mvm(["pool", "create", "acme/tmp"]));
    const r = ok(mvm(["pool", "destroy", "acme/tmp"]));
    expect(r.stderr).toBe("destroyed pool acme/tmp\n");
    expect(mvm(["pool", "info", "acme/tmp", "--local"]).code).toBe(3);
  }, 60_000);
});

describe("the CLI with no agent running", () => {
  it("acts in-process", () => {
    const dir = mkdtempSync(join(tmpdir(), "mvm-cli-noagent-"));
    try {
      const created = runMvm(["tenant", "create", "solo", "-o", "json"], { dataDir: dir, env: NO_CERT_ENV });
      expect(created.code, created.stderr).toBe(0);
      expect(JSON.parse(created.stdout)).toMatchObject({ tenantId: "solo" });
      const info = runMvm(["tenant", "info", "solo", "-o", "json"], { dataDir: dir, env: NO_CERT_ENV });
      expect(info.stdout).toBe(created.stdout);
      expect(runMvm(["tenant", "info", "nosuch"], { dataDir: dir, env: NO_CERT_ENV }).code).toBe(3);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
