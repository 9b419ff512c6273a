// `mvm coordinator serve` as a process in front of 3 real agents: FleetService over mTLS, node health, one merged
// stream for a dashboard that survives an agent's death and resumes from its token, tenant scoping, push.
// Needs dist/ (npx tsc -p tsconfig.build.json).

import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FleetService, NodeHealth, type WatchFleetInstancesResponse } from "../../../gen/mvm/v1/fleet_service_pb.js";
import { TenantService } from "../../../gen/mvm/v1/tenant_service_pb.js";
import { createMtlsClientOptions } from "../../../src/platform/pki/tls-context.js";
import { BIN, createInstance, mvm, seedAgent, startFleet, type Fleet } from "./fleet-harness.js";

describe("mvm coordinator serve (FleetService)", () => {
  let fleet: Fleet;
  let service: ChildProcessWithoutNullStreams;
  let port = 0;
  const clients: Record<string, Client<typeof FleetService>> = {};

  async function clientFor(identity: string, name: string): Promise<Client<typeof FleetService>> {
    const out = join(fleet.root, `client-${name}`);
    const r = await mvm(["--data-dir", fleet.agents[0]!.dataDir, "agent", "certs", "issue", "--identity", identity, "--out", out, "--name", name]);
    if (r.code !== 0) throw new Error(r.stderr);
    const nodeOptions = createMtlsClientOptions({ caPem: readFileSync(join(out, "ca.pem"), "utf8"), certPem: readFileSync(join(out, `${name}.pem`), "utf8"), keyPem: readFileSync(join(out, `${name}-key.pem`), "utf8"), servername: "127.0.0.1" });
    return createClient(FleetService, createGrpcTransport({ baseUrl: `https://127.0.0.1:${port}`, nodeOptions }));
  }

  beforeAll(async () => {
    fleet = await startFleet(3);
    for (const a of fleet.agents) await seedAgent(fleet.transport(a));
    await createClient(TenantService, fleet.transport(fleet.agents[0]!)).createTenant({ tenantId: "other" });
    const file = fleet.fleetFile("fleet", fleet.agents);
    service = spawn(process.execPath, [BIN, "coordinator", "serve", "--fleet", file, "--listen", "127.0.0.1:0", "--heartbeat-ms", "1000"]);
    let stderr = "";
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`coordinator did not start: ${stderr}`)), 30_000);
      service.stderr.setEncoding("utf8").on("data", (c: string) => {
        stderr += c;
        const m = /serving FleetService mTLS on 127\.0\.0\.1:(\d+)/.exec(stderr);
        if (m) {
          port = Number(m[1]);
          clearTimeout(timer);
          resolve();
        }
      });
    });
    clients.admin = await clientFor("admin", "admin");
    clients.acme = await clientFor("tenant/acme", "acme");
    clients.node = await clientFor("node/n1", "n1");
  }, 120_000);

  afterAll(async () => {
    service?.kill("SIGTERM");
    await fleet?.stop();
  }, 30_000);

  async function collect(stream: AsyncIterable<WatchFleetInstancesResponse>, until: (seen: WatchFleetInstancesResponse[]) => boolean, seen: WatchFleetInstancesResponse[] = []): Promise<WatchFleetInstancesResponse[]> {
    for await (const m of stream) {
      seen.push(m);
      if (until(seen)) break;
    }
    return seen;
  }

  it("lists the nodes with their health; node identities are refused", async () => {
    const deadline = Date.now() + 20_000;
    let nodes = (await clients.admin!.listNodes({})).nodes;
    while (nodes.some((n) => n.health !== NodeHealth.UP) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      nodes = (await clients.admin!.listNodes({})).nodes;
    }
    expect(nodes.map((n) => [n.name, n.health, n.instanceCount])).toEqual(fleet.agents.map((a) => [a.name, NodeHealth.UP, 1]));
    expect(nodes[0]!.address).toBe(`127.0.0.1:${fleet.agents[0]!.port}`);
    expect((await clients.acme!.listNodes({})).nodes[0]!.address).toBe("");
    await expect(clients.node!.listNodes({})).rejects.toMatchObject({ code: Code.PermissionDenied });
  });

  it("one merged stream for a dashboard: snapshot, live changes, a node going down, and a resume without gaps", async () => {
    const stop = new AbortController();
    const stream = clients.admin!.watchFleetInstances({ heartbeatIntervalMs: 1000 }, { signal: stop.signal });
    const initial = await collect(stream, (s) => s.some((m) => m.event.case === "initialStateComplete"));
    expect(initial.filter((m) => m.event.case === "upsert").map((m) => m.node).sort()).toEqual(fleet.agents.map((a) => a.name));
    const id = await createInstance(fleet.transport(fleet.agents[1]!));
    const live = await collect(stream, (s) => s.some((m) => m.event.case === "upsert" && m.event.value.instanceId === id));
    const token = live.filter((m) => m.resumeToken !== "").at(-1)!.resumeToken;
    stop.abort();

    // While the dashboard is away: an agent dies and another gets a new instance.
    await fleet.kill(fleet.agents[2]!);
    const missed = await createInstance(fleet.transport(fleet.agents[0]!));
    const resumed = await collect(clients.admin!.watchFleetInstances({ resumeToken: token }), (s) =>
      s.some((m) => m.event.case === "upsert" && m.event.value.instanceId === missed) && s.some((m) => m.event.case === "nodeStatus" && m.event.value.node?.health === NodeHealth.DOWN),
    );
    expect(resumed.some((m) => m.event.case === "snapshotReset")).toBe(false);
    expect(resumed.filter((m) => m.event.case === "upsert").map((m) => (m.event.value as { instanceId: string }).instanceId)).toEqual([missed]);
    expect(resumed.find((m) => m.event.case === "nodeStatus")!.node).toBe(fleet.agents[2]!.name);
  }, 60_000);

  it("a tenant sees only its tenant and may not push", async () => {
    const other = await collect(clients.acme!.watchFleetInstances({}), (s) => s.some((m) => m.event.case === "initialStateComplete"));
    expect(other.filter((m) => m.event.case === "upsert").every((m) => (m.event.value as { tenantId: string }).tenantId === "acme")).toBe(true);
    await expect(collect(clients.acme!.watchFleetInstances({ tenantId: "other" }), () => true)).rejects.toMatchObject({ code: Code.PermissionDenied });
    const err = await clients.acme!.pushDesiredState({ documents: {} }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.PermissionDenied);
  });

  it("push reports one result per node: ok for the live ones, unavailable for the dead one", async () => {
    const doc = { schemaVersion: 1, tenants: [{ tenantId: "acme", labels: { via: "fleet" } }] };
    const res = await clients.admin!.pushDesiredState({ documents: Object.fromEntries(fleet.agents.map((a) => [a.name, doc])), nodeTimeoutMs: 5000 });
    expect(res.results.map((r) => `${r.node}:${r.ok ? "ok" : r.errorKind}`)).toEqual([`${fleet.agents[0]!.name}:ok`, `${fleet.agents[1]!.name}:ok`, `${fleet.agents[2]!.name}:unavailable`]);
    expect(res.results[2]!.attempts).toBe(3);
  }, 30_000);
});
