// `mvm agent serve` wired through yargs with a runtime of test doubles: it serves until SIGTERM, then stops
// cleanly (socket removed, runtime closed).

import { existsSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import yargs, { type Argv } from "yargs";
import { afterEach, describe, expect, it, onTestFinished } from "vitest";
import { TenantService } from "../../../gen/mvm/v1/tenant_service_pb.js";
import { registerAgentServeCommand, parseListen, type AgentServeOptions } from "../../../src/cli/commands/agent-serve.js";
import type { NodeRuntime } from "../../../src/agent/node-runtime-types.js";
import type { CliContext, GlobalOptions } from "../../../src/cli/context.js";
import { observeInstanceWrites } from "../../../src/core/observed-store.js";
import type { FieldViolation } from "../../../src/core/errors.js";
import { CertStore } from "../../../src/platform/pki/cert-store.js";
import { FsAuditLog } from "../../../src/runtime/audit/fs-audit-log.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { FsStore } from "../../../src/runtime/store/fs-store.js";
import { fakeImageBuilder, makeRuntime } from "../../unit/api/api-harness.js";

let dir = "";
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("parseListen", () => {
  it("reads host:port, [v6]:port, :port and none", () => {
    const v: FieldViolation[] = [];
    expect(parseListen("127.0.0.1:9469", "--x", v)).toEqual({ host: "127.0.0.1", port: 9469 });
    expect(parseListen("[::1]:7443", "--x", v)).toEqual({ host: "::1", port: 7443 });
    expect(parseListen(":7443", "--x", v)).toEqual({ host: "0.0.0.0", port: 7443 });
    expect(parseListen("none", "--x", v)).toBeNull();
    expect(v).toEqual([]);
    parseListen("7443", "--listen", v);
    parseListen("host:99999", "--listen", v);
    parseListen("[nope]:1", "--listen", v);
    expect(v.map((x) => x.field)).toEqual(["--listen", "--listen", "--listen"]);
  });
});

describe("mvm agent serve", () => {
  it("serves the API on the socket and over mTLS until SIGTERM, then removes the socket and closes the runtime", async () => {
    dir = mkdtempSync(join(tmpdir(), "mvm-serve-"));
    const level = process.env.MVM_LOG_LEVEL;
    process.env.MVM_LOG_LEVEL = "silent";
    onTestFinished(() => {
      if (level === undefined) delete process.env.MVM_LOG_LEVEL;
      else process.env.MVM_LOG_LEVEL = level;
    });
    const store = await FsStore.open(dir);
    await CertStore.at(dir).init({ nodeId: (await store.node()).nodeId, trustDomain: "mvm.test" });
    let closed = false;
    let runtime: NodeRuntime | null = null;
    const openRuntime = async (options: AgentServeOptions): Promise<NodeRuntime> => {
      const hub = options.watchHub;
      const base = makeRuntime(dir, new FakeDataPlane(), hub, new FsAuditLog(dir), fakeImageBuilder());
      runtime = { ...base, store: observeInstanceWrites(store, hub), close: async () => void (closed = true) };
      return runtime;
    };
    const warnings: string[] = [];
    const ctx: CliContext = { deps: async () => runtime as NodeRuntime, write: () => undefined, warn: (t) => warnings.push(t), env: process.env };
    const socket = join(dir, "agent.sock");
    const parser = yargs(["agent", "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "none", "--socket", socket])
      .option("output", { type: "string", default: "table" })
      .option("debug", { type: "boolean", default: false })
      .command("agent", "agent", (y) => registerAgentServeCommand(y as unknown as Argv<GlobalOptions>, ctx, openRuntime))
      .strict()
      .fail((message, error) => {
        throw error ?? new Error(message);
      });
    const serving = parser.parseAsync();
    const deadline = Date.now() + 10_000;
    while (!existsSync(socket)) {
      if (Date.now() > deadline) throw new Error("the agent did not create its socket");
      await new Promise((r) => setTimeout(r, 20));
    }
    const local = createGrpcTransport({ baseUrl: "http://localhost", nodeOptions: { createConnection: () => net.connect(socket) } });
    await createClient(TenantService, local).createTenant({ tenantId: "acme" });
    expect(warnings.join("")).toMatch(/serving mTLS on 127\.0\.0\.1:\d+, socket /);
    process.kill(process.pid, "SIGTERM");
    await serving;
    expect(existsSync(socket)).toBe(false);
    expect(closed).toBe(true);
    expect(await store.getTenant("acme")).not.toBeNull();
  });
});
