import { describe, expect, it } from "vitest";
import type { Instance } from "../../../src/core/model.js";
import { WatchHub, type WatchEvent } from "../../../src/core/watch-hub.js";
import { FleetEventLog } from "../../../src/coordinator/fleet-event-log.js";
import { FleetWatchMerger, type FleetWatchBody } from "../../../src/coordinator/watch-merge.js";
import { instanceRecord } from "../store/fixtures.js";

/** Feeds the merger from real watch hubs (one per node), as the agents' streams would. */
async function drain(hub: WatchHub, token: string, into: (e: WatchEvent) => void): Promise<void> {
  const w = hub.watch({ resumeToken: token });
  while (w.buffered > 0) {
    const r = await w.next();
    if (r.done) break;
    into(r.value);
  }
  w.close();
}

function label(e: FleetWatchBody): string {
  if (e.kind === "upsert" || e.kind === "deleted") return `${e.node}:${e.kind}:${e.instance.instanceId}:${e.instance.status}`;
  if (e.kind === "node_status") return `${e.node}:${e.health}`;
  return `initial:${e.instanceCount}`;
}

const inst = (id: string, status: Instance["status"] = "created"): Instance => ({ ...instanceRecord("acme", "web", id), status });

describe("FleetWatchMerger", () => {
  it("merges first snapshots, marks the fleet initial once every node is up or down, then passes live changes", async () => {
    const a = new WatchHub({ epoch: "a1" });
    const b = new WatchHub({ epoch: "b1" });
    a.seed([inst("i-0000000a")]);
    b.seed([inst("i-0000000b"), inst("i-0000000c")]);
    const out: string[] = [];
    const m = new FleetWatchMerger(["a", "b", "c"], (e) => out.push(label(e)));
    await drain(a, m.connecting("a"), (e) => m.receive("a", e));
    await drain(b, m.connecting("b"), (e) => m.receive("b", e));
    expect(out).not.toContain("initial:3");
    m.connecting("c");
    m.disconnected("c", "connection refused");
    expect(out).toEqual(["a:upsert:i-0000000a:created", "a:up", "b:upsert:i-0000000b:created", "b:upsert:i-0000000c:created", "b:up", "c:down", "initial:3"]);

    out.length = 0;
    a.publish({ kind: "upsert", instance: inst("i-0000000a", "running") });
    await drain(a, m.status()[0]!.resumeToken, (e) => m.receive("a", e));
    expect(out).toEqual(["a:upsert:i-0000000a:running"]);
  });

  it("after a node restarts (new epoch), sends only what changed while it was away: no duplicate, nothing missing", async () => {
    const before = new WatchHub({ epoch: "old" });
    before.seed([inst("i-00000001"), inst("i-00000002"), inst("i-00000003")]);
    const out: string[] = [];
    const m = new FleetWatchMerger(["n"], (e) => out.push(label(e)));
    await drain(before, m.connecting("n"), (e) => m.receive("n", e));
    m.disconnected("n", "agent killed");
    out.length = 0;

    // The restarted agent: one instance created meanwhile, one changed, one gone; its hub knows nothing of the old token.
    const after = new WatchHub({ epoch: "new" });
    after.seed([inst("i-00000001"), inst("i-00000002", "stopped"), inst("i-00000004")]);
    await drain(after, m.connecting("n"), (e) => m.receive("n", e));
    expect(out.sort()).toEqual(["n:deleted:i-00000003:created", "n:up", "n:upsert:i-00000002:stopped", "n:upsert:i-00000004:created"].sort());
    expect(m.instances().map((v) => v.instance.instanceId).sort()).toEqual(["i-00000001", "i-00000002", "i-00000004"]);
  });

  it("resuming within history replays only the missed changes, and drops replayed revisions already applied", async () => {
    const hub = new WatchHub({ epoch: "same" });
    hub.seed([inst("i-00000001")]);
    const out: string[] = [];
    const m = new FleetWatchMerger(["n"], (e) => out.push(label(e)));
    await drain(hub, m.connecting("n"), (e) => m.receive("n", e));
    const stale = m.status()[0]!.resumeToken;
    hub.publish({ kind: "upsert", instance: inst("i-00000002") });
    await drain(hub, m.connecting("n"), (e) => m.receive("n", e));
    m.disconnected("n", "reset");
    hub.publish({ kind: "upsert", instance: inst("i-00000003") });
    // A replay from an older token overlaps what was applied: only the new change comes through.
    const replay: WatchEvent[] = [];
    await drain(hub, stale, (e) => replay.push(e));
    m.connecting("n");
    for (const e of replay) m.receive("n", e);
    expect(out.filter((l) => l.includes("upsert"))).toEqual(["n:upsert:i-00000001:created", "n:upsert:i-00000002:created", "n:upsert:i-00000003:created"]);
  });

  it("drops a half-received snapshot when the stream breaks", () => {
    const out: string[] = [];
    const m = new FleetWatchMerger(["n"], (e) => out.push(label(e)));
    m.connecting("n");
    m.receive("n", { revision: 5, resumeToken: "p", event: { kind: "upsert", instance: inst("i-00000001") } });
    m.disconnected("n", "reset mid-snapshot");
    expect(m.connecting("n")).toBe("");
    expect(out).toEqual(["n:down", "initial:0"]);
  });
});

describe("FleetEventLog", () => {
  function setup() {
    const out: FleetWatchBody[] = [];
    const m = new FleetWatchMerger(["a", "b"], (e) => {
      out.push(e);
      log.publish(e);
    });
    const log: FleetEventLog = new FleetEventLog({ epoch: "e1", view: () => m.instances(), nodes: () => m.status(), historyLimit: 3 });
    return { m, log, out };
  }
  const take = async (it: AsyncIterator<unknown>, n: number) => {
    const got: any[] = [];
    for (let i = 0; i < n; i++) got.push((await it.next()).value);
    return got;
  };

  it("a subscriber gets node statuses, its tenant's instances and a marker, then live events; resumes without gaps", async () => {
    const { m, log } = setup();
    m.connecting("a");
    m.receive("a", { revision: 1, resumeToken: "", event: { kind: "upsert", instance: inst("i-00000001") } });
    m.receive("a", { revision: 1, resumeToken: "", event: { kind: "upsert", instance: { ...instanceRecord("other", "web", "i-00000009") } } });
    m.receive("a", { revision: 1, resumeToken: "t1", event: { kind: "initial_state_complete", instanceCount: 2 } });
    const sub = log.subscribe({ instanceFilter: (i) => i.tenantId === "acme" });
    const first = await take(sub, 4);
    expect(first.map((e) => e.body.kind)).toEqual(["node_status", "node_status", "upsert", "initial_state_complete"]);
    expect(first[3].body.instanceCount).toBe(1);
    const token = first[3].resumeToken;
    sub.return!();

    m.receive("a", { revision: 2, resumeToken: "t2", event: { kind: "upsert", instance: { ...instanceRecord("other", "web", "i-0000000a") } } });
    m.receive("a", { revision: 3, resumeToken: "t3", event: { kind: "upsert", instance: inst("i-00000002") } });
    const resumed = await take(log.subscribe({ resumeToken: token, instanceFilter: (i) => i.tenantId === "acme" }), 2);
    expect(resumed.map((e) => `${e.body.kind}:${e.body.instance?.instanceId ?? ""}`)).toEqual(["upsert:i-00000002", "initial_state_complete:"]);

    // History holds 3 changes: an older token restarts with a snapshot.
    for (let r = 4; r < 8; r++) m.receive("a", { revision: r, resumeToken: `t${r}`, event: { kind: "upsert", instance: inst(`i-0000010${r}`) } });
    const [reset] = await take(log.subscribe({ resumeToken: token }), 1);
    expect(reset.body).toEqual({ kind: "snapshot_reset", reason: "token older than history" });
    const [restarted] = await take(log.subscribe({ resumeToken: "f1.other.3" }), 1);
    expect(restarted.body.kind).toBe("snapshot_reset");
  });

  it("cuts off a subscriber that does not read", async () => {
    const { m, log } = setup();
    const sub = log.subscribe({});
    for (let r = 1; r <= 9000; r++) m.receive("b", { revision: r, resumeToken: `t${r}`, event: { kind: "upsert", instance: inst(`i-${r.toString(16).padStart(8, "0")}`) } });
    await expect(async () => {
      for (;;) if ((await sub.next()).done) break;
    }).rejects.toThrow(/overflow/);
  });
});
