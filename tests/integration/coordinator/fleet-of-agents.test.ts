// `mvm coordinator` against 50 real agents on loopback (see fleet-harness.ts): status, list, push, wake routing, a
// merged watch that survives one agent being killed and restarted, a hanging node reported as a timeout, and Ctrl-C
// cancelling every call in flight. Needs dist/ (npx tsc -p tsconfig.build.json).

import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ReconcileService } from "../../../gen/mvm/v1/reconcile_service_pb.js";
import { BIN, createInstance, inParallel, mvm, seedAgent, startFleet, startSilentServer, type AgentProcess, type Fleet } from "./fleet-harness.js";

const AGENTS = 50;

class FleetWatcher {
  readonly child: ChildProcessWithoutNullStreams;
  readonly events: Array<Record<string, any>> = [];
  stderr = "";

  constructor(fleetFile: string) {
    this.child = spawn(process.execPath, [BIN, "coordinator", "watch", "--fleet", fleetFile, "-o", "json", "--heartbeat-ms", "1000"]);
    let partial = "";
    this.child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      const parts = (partial + chunk).split("\n");
      partial = parts.pop() ?? "";
      for (const p of parts) if (p !== "") this.events.push(JSON.parse(p) as Record<string, any>);
    });
    this.child.stderr.setEncoding("utf8").on("data", (c: string) => (this.stderr += c));
  }

  async waitFor(what: string, predicate: () => boolean, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      if (Date.now() > deadline || this.child.exitCode !== null) throw new Error(`waiting for ${what}: ${this.events.length} events, stderr ${this.stderr}, exit ${this.child.exitCode}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  upserts(node: string, instanceId?: string): Array<Record<string, any>> {
    return this.events.filter((e) => e.event === "upsert" && e.node === node && (instanceId === undefined || e.instance.instanceId === instanceId));
  }
}

describe(`mvm coordinator with ${AGENTS} agents`, () => {
  let fleet: Fleet;
  let fleetFile = "";
  const firstInstance = new Map<string, string>();

  beforeAll(async () => {
    fleet = await startFleet(AGENTS);
    fleetFile = fleet.fleetFile("fleet", fleet.agents);
    await inParallel(fleet.agents, 16, async (a) => {
      firstInstance.set(a.name, await seedAgent(fleet.transport(a)));
    });
  }, 180_000);

  afterAll(async () => {
    await fleet?.stop();
  }, 60_000);

  it("status: info and stats from every node, exit 0", async () => {
    // The first call to each agent probes its host (KVM, binaries): 50 cold agents on two cores get a longer deadline.
    const r = await mvm(["coordinator", "status", "--fleet", fleetFile, "-o", "json", "--timeout-ms", "30000"]);
    const doc = JSON.parse(r.stdout);
    expect(doc.nodes.filter((n: any) => n.result !== "ok").map((n: any) => `${n.node}: ${n.result}: ${n.error}`)).toEqual([]);
    expect(r.code, r.stderr).toBe(0);
    expect(doc.verdict).toBe("ok");
    expect(doc.nodes).toHaveLength(AGENTS);
    expect(doc.nodes.every((n: any) => n.result === "ok" && n.instances === 1 && n.tenants === 1)).toBe(true);
    expect(new Set(doc.nodes.map((n: any) => n.nodeId)).size).toBe(AGENTS);
  });

  it("list-instances: one merged list with the node of each instance", async () => {
    const r = await mvm(["coordinator", "list-instances", "--fleet", fleetFile, "-o", "json", "--tenant", "acme"]);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.instances).toHaveLength(AGENTS);
    for (const i of doc.instances) expect(firstInstance.get(i.node)).toBe(i.instanceId);
  });

  it("push: applies a desired state on every node, each with its own node_id", async () => {
    // No pools in the document (and pools are not pruned): the pass has nothing to build or boot.
    const doc = join(fleet.root, "desired.yaml");
    writeFileSync(doc, "schema_version: 1\ntenants:\n  - tenant_id: acme\n    labels: { team: ci }\n");
    const r = await mvm(["coordinator", "push", doc, "--fleet", fleetFile, "-o", "json"]);
    const result = JSON.parse(r.stdout);
    expect(result.nodes).toHaveLength(AGENTS);
    expect(result.nodes.filter((n: any) => n.result !== "ok").map((n: any) => `${n.node}: ${n.result}: ${n.error}`)).toEqual([]);
    expect(r.code).toBe(0);
    const sample = fleet.agents[7] as AgentProcess;
    const stored = await createClient(ReconcileService, fleet.transport(sample)).getDesiredState({});
    expect(stored.desiredState?.nodeId).toBe(result.nodes[7].nodeId);
    expect(stored.desiredState?.tenants[0]?.labels).toEqual({ team: "ci" });
    expect(Number(stored.generation)).toBe(result.nodes[7].generation);
  }, 60_000);

  it("plan: each node's steps for a document, listed under the table too, and nothing changes on any node", async () => {
    // After the push above every node has acme as asked: the only step left is the new tenant.
    const doc = join(fleet.root, "plan.yaml");
    writeFileSync(doc, "schema_version: 1\ntenants:\n  - tenant_id: acme\n    labels: { team: ci }\n  - tenant_id: beta\n");
    const r = await mvm(["coordinator", "plan", doc, "--fleet", fleetFile, "-o", "json"]);
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout);
    expect(result.nodes).toHaveLength(AGENTS);
    for (const n of result.nodes) {
      expect(n.steps.map((s: any) => `${s.kind} ${s.target}`), n.node).toEqual(["create_tenant beta"]);
      expect(n).toMatchObject({ actions: 1, errors: 0, cannotConverge: [] });
    }
    const table = await mvm(["coordinator", "plan", doc, "--fleet", fleetFile]);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(new RegExp(`\\n${result.nodes[0].node}:\\n  create tenant beta \\(`));
    const sample = fleet.agents[3] as AgentProcess;
    const applied = await createClient(ReconcileService, fleet.transport(sample)).getDesiredState({});
    expect(applied.desiredState?.tenants.map((t) => t.tenantId)).toEqual(["acme"]);
    // Without a document: against what each node applied last, which the push's pass already reached.
    const idle = await mvm(["coordinator", "plan", "--fleet", fleetFile, "-o", "json"]);
    expect(JSON.parse(idle.stdout).nodes.every((n: any) => n.actions === 0 && n.result === "ok")).toBe(true);
  }, 60_000);

  it("refuses a bad document before calling any node", async () => {
    const doc = join(fleet.root, "bad.yaml");
    writeFileSync(doc, "schema_version: 1\ntenants:\n  - tenant_id: Acme!\n");
    const r = await mvm(["coordinator", "push", doc, "--fleet", fleetFile]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^mvm: invalid input: tenants\[0\]\.tenant_id: /);
    expect(r.stdout).toBe("");
  });

  it("wake finds the node that holds the instance and reports that node's answer", async () => {
    const target = fleet.agents[23] as AgentProcess;
    const id = firstInstance.get(target.name)!;
    const r = await mvm(["coordinator", "wake", `acme/web/${id}`, "--fleet", fleetFile, "-o", "json"]);
    const doc = JSON.parse(r.stdout);
    expect(doc.nodes).toHaveLength(1);
    expect(doc.nodes[0].node).toBe(target.name);
    // The instance was only created, never put to sleep: the node refuses (or, before wake exists, says so).
    expect(["failed_precondition", "unimplemented", "ok"]).toContain(doc.nodes[0].result);
    const missing = await mvm(["coordinator", "wake", "acme/web/i-00000000", "--fleet", fleetFile]);
    expect(missing.code).toBe(3);
    expect(missing.stderr).toMatch(/not found on any of the 50 nodes/);
  });

  it("watch: one merged stream with events from every node; a killed agent is reported down, the rest go on, and its return resumes without duplicates or gaps", async () => {
    const w = new FleetWatcher(fleetFile);
    try {
      await w.waitFor("the fleet's initial state", () => w.events.some((e) => e.event === "initial_state_complete"));
      const marker = w.events.find((e) => e.event === "initial_state_complete")!;
      expect(marker.instanceCount).toBe(AGENTS);
      expect(new Set(w.events.filter((e) => e.event === "upsert").map((e) => e.node)).size).toBe(AGENTS);

      const created = new Map<string, string>();
      await inParallel(fleet.agents, 16, async (a) => {
        created.set(a.name, await createInstance(fleet.transport(a)));
      });
      await w.waitFor("a live event from every node", () => fleet.agents.every((a) => w.upserts(a.name, created.get(a.name)).length > 0));

      const victim = fleet.agents[13] as AgentProcess;
      await fleet.kill(victim);
      await w.waitFor("the killed node reported down", () => w.events.some((e) => e.event === "node_status" && e.node === victim.name && e.health === "down"));
      const other = fleet.agents[14] as AgentProcess;
      const whileDown = await createInstance(fleet.transport(other));
      await w.waitFor("events from the others meanwhile", () => w.upserts(other.name, whileDown).length === 1);

      // While the agent is down, an instance is created on its node by the CLI acting in-process on its data root.
      const offline = await mvm(["--data-dir", victim.dataDir, "instance", "create", "acme/web", "-o", "json"]);
      expect(offline.code, offline.stderr).toBe(0);
      const offlineId = JSON.parse(offline.stdout).instanceId as string;
      const before = w.upserts(victim.name).length;
      await fleet.start(victim);
      await w.waitFor("the node back up", () => w.events.some((e) => e.event === "node_status" && e.node === victim.name && e.health === "up"));
      await w.waitFor("the instance created while it was down", () => w.upserts(victim.name, offlineId).length === 1);
      const afterReturn = await createInstance(fleet.transport(victim));
      await w.waitFor("a live event after the return", () => w.upserts(victim.name, afterReturn).length === 1);
      // Since the restart: exactly the offline instance and the new one, nothing repeated from before.
      expect(w.upserts(victim.name).slice(before).map((e) => e.instance.instanceId)).toEqual([offlineId, afterReturn]);
      for (const a of fleet.agents) {
        for (const id of [firstInstance.get(a.name), created.get(a.name)]) expect(w.upserts(a.name, id).length, `${a.name} ${id}`).toBe(1);
      }
    } finally {
      w.child.kill("SIGINT");
    }
  }, 120_000);

  it("a node that accepts and never answers is reported as a timeout while the others succeed (exit 10)", async () => {
    const silent = await startSilentServer(fleet.coordinator);
    try {
      const file = fleet.fleetFile("with-silent", fleet.agents.slice(0, 5), [{ name: "silent", address: `127.0.0.1:${silent.port}` }]);
      const started = Date.now();
      const r = await mvm(["coordinator", "status", "--fleet", file, "--timeout-ms", "1500", "-o", "json"]);
      expect(Date.now() - started).toBeLessThan(15_000);
      expect(r.code).toBe(10);
      const doc = JSON.parse(r.stdout);
      expect(doc.verdict).toBe("partial");
      expect(doc.nodes.map((n: any) => `${n.node}:${n.result}`)).toEqual([...fleet.agents.slice(0, 5).map((a) => `${a.name}:ok`), "silent:timeout"]);
      expect(doc.nodes[5].error).toMatch(/1500 ms deadline/);
    } finally {
      await silent.close();
    }
  }, 30_000);

  it("Ctrl-C cancels every call in flight: hanging nodes are reported cancelled and their connections closed", async () => {
    const silentA = await startSilentServer(fleet.coordinator);
    const silentB = await startSilentServer(fleet.coordinator);
    try {
      const file = fleet.fleetFile("cancel", fleet.agents.slice(0, 2), [
        { name: "silent-a", address: `127.0.0.1:${silentA.port}` },
        { name: "silent-b", address: `127.0.0.1:${silentB.port}` },
      ]);
      const child = spawn(process.execPath, [BIN, "coordinator", "status", "--fleet", file, "--timeout-ms", "120000", "-o", "json"]);
      let stdout = "";
      child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
      const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
      const deadline = Date.now() + 20_000;
      while (silentA.openSockets() === 0 || silentB.openSockets() === 0) {
        if (Date.now() > deadline) throw new Error("the hanging nodes were never called");
        await new Promise((r) => setTimeout(r, 50));
      }
      const interrupted = Date.now();
      child.kill("SIGINT");
      const code = await exited;
      expect(Date.now() - interrupted).toBeLessThan(5_000);
      const doc = JSON.parse(stdout);
      expect(doc.nodes.slice(2).map((n: any) => `${n.node}:${n.result}`)).toEqual(["silent-a:cancelled", "silent-b:cancelled"]);
      expect(doc.nodes[2].error).toMatch(/^cancelled after \d+ ms/);
      // The real agents may have answered before Ctrl-C, or been cancelled with the rest.
      for (const n of doc.nodes.slice(0, 2)) expect(["ok", "cancelled"]).toContain(n.result);
      expect(code).toBe(doc.nodes.some((n: any) => n.result === "ok") ? 10 : 11);
      const closedBy = Date.now() + 3_000;
      while (silentA.openSockets() + silentB.openSockets() > 0 && Date.now() < closedBy) await new Promise((r) => setTimeout(r, 25));
      expect(silentA.openSockets() + silentB.openSockets()).toBe(0);
    } finally {
      await silentA.close();
      await silentB.close();
    }
  }, 40_000);
});
