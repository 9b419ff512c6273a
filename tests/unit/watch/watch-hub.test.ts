import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import type { Instance, InstanceStatus } from "../../../src/core/model.js";
import { INSTANCE_STATUSES } from "../../../src/core/model.js";
import { WATCH_OVERFLOW_MESSAGE, WatchHub } from "../../../src/core/watch-hub.js";
import type { WatchEvent, Watcher } from "../../../src/core/watch-hub.js";
import { instanceRecord } from "../store/fixtures.js";

function inst(tenant: string, id: string, status: InstanceStatus = "running", pool = "web"): Instance {
  return { ...instanceRecord(tenant, pool, id), status };
}

const key = (i: Instance) => `${i.tenantId}/${i.poolId}/${i.instanceId}`;

/** Reads every event already buffered, without waiting for more. */
async function drain(w: Watcher): Promise<WatchEvent[]> {
  const out: WatchEvent[] = [];
  while (w.buffered > 0) {
    const r = await w.next();
    if (r.done) break;
    out.push(r.value);
  }
  return out;
}

/** Applies events to a client-side view, as a client following the protocol would. */
function applyEvents(view: Map<string, Instance>, events: readonly WatchEvent[]): void {
  for (const e of events) {
    if (e.event.kind === "snapshot_reset") view.clear();
    else if (e.event.kind === "upsert") view.set(key(e.event.instance), e.event.instance);
    else if (e.event.kind === "deleted") view.delete(key(e.event.instance));
  }
}

function kinds(events: readonly WatchEvent[]): string[] {
  return events.map((e) => e.event.kind);
}

describe("WatchHub: subscription without a token", () => {
  it("sends every matching instance at the current revision, then the marker, then live changes", async () => {
    const hub = new WatchHub();
    hub.seed([inst("acme", "i-00000001"), inst("acme", "i-00000002"), inst("beta", "i-00000003")]);
    hub.publish({ kind: "upsert", instance: inst("acme", "i-00000001", "warm") });
    const w = hub.watch({ filter: (i) => i.tenantId === "acme" });
    const first = await drain(w);
    expect(kinds(first)).toEqual(["upsert", "upsert", "initial_state_complete"]);
    expect(first.every((e) => e.revision === 1)).toBe(true);
    expect(first[2]?.event).toEqual({ kind: "initial_state_complete", instanceCount: 2 });
    expect(first[0]?.event).toMatchObject({ kind: "upsert", instance: { instanceId: "i-00000001", status: "warm" } });

    hub.publish({ kind: "upsert", instance: inst("beta", "i-00000003", "stopped") });
    hub.publish({ kind: "upsert", instance: inst("acme", "i-00000002", "sleeping") });
    const live = await drain(w);
    expect(live).toHaveLength(1);
    expect(live[0]).toMatchObject({ revision: 3, event: { kind: "upsert", instance: { instanceId: "i-00000002" } } });
  });

  it("a pending next() resolves when a matching change is published", async () => {
    const hub = new WatchHub();
    const w = hub.watch();
    await drain(w);
    const pending = w.next();
    hub.publish({ kind: "upsert", instance: inst("acme", "i-0000000a") });
    const r = await pending;
    expect(r.done).toBe(false);
    expect(r.value).toMatchObject({ revision: 1, event: { kind: "upsert" } });
  });

  it("an instance that leaves a status filter is sent as deleted, and as upsert when it comes back", async () => {
    const hub = new WatchHub();
    hub.seed([inst("acme", "i-00000001", "running")]);
    const w = hub.watch({ filter: (i) => i.status === "running" });
    await drain(w);
    hub.publish({ kind: "upsert", instance: inst("acme", "i-00000001", "sleeping") });
    hub.publish({ kind: "upsert", instance: inst("acme", "i-00000001", "stopped") });
    hub.publish({ kind: "upsert", instance: inst("acme", "i-00000001", "running") });
    const events = await drain(w);
    expect(kinds(events)).toEqual(["deleted", "upsert"]);
    expect(events[0]).toMatchObject({ revision: 1, event: { instance: { status: "sleeping" } } });
    expect(events[1]).toMatchObject({ revision: 3, event: { instance: { status: "running" } } });
  });

  it("a deletion reaches only watchers that could see the instance", async () => {
    const hub = new WatchHub();
    hub.seed([inst("acme", "i-00000001"), inst("beta", "i-00000002")]);
    const acme = hub.watch({ filter: (i) => i.tenantId === "acme" });
    const beta = hub.watch({ filter: (i) => i.tenantId === "beta" });
    await drain(acme);
    await drain(beta);
    hub.publish({ kind: "deleted", instance: inst("beta", "i-00000002", "destroyed") });
    expect(await drain(acme)).toEqual([]);
    expect(kinds(await drain(beta))).toEqual(["deleted"]);
    expect(hub.snapshot().map(key)).toEqual(["acme/web/i-00000001"]);
  });
});

describe("WatchHub: resuming", () => {
  it("replays only the missed matching changes after a valid token, then the marker", async () => {
    const hub = new WatchHub({ historyLimit: 10 });
    hub.seed([inst("acme", "i-00000001")]);
    const filter = (i: Instance) => i.tenantId === "acme";
    const w1 = hub.watch({ filter });
    const seen = await drain(w1);
    const token = seen.at(-1)?.resumeToken as string;
    w1.close();
    hub.publish({ kind: "upsert", instance: inst("acme", "i-00000002") });
    hub.publish({ kind: "upsert", instance: inst("beta", "i-00000003") });
    hub.publish({ kind: "deleted", instance: inst("acme", "i-00000001") });
    const w2 = hub.watch({ filter, resumeToken: token });
    const replay = await drain(w2);
    expect(replay.map((e) => [e.event.kind, e.revision])).toEqual([
      ["upsert", 1],
      ["deleted", 3],
      ["initial_state_complete", 3],
    ]);
    expect(replay[2]?.event).toEqual({ kind: "initial_state_complete", instanceCount: 1 });
  });

  it("a token older than the history gives snapshot_reset and a full snapshot", async () => {
    const hub = new WatchHub({ historyLimit: 2 });
    const w1 = hub.watch();
    const token = (await drain(w1)).at(-1)?.resumeToken as string;
    w1.close();
    for (let n = 1; n <= 3; n++) hub.publish({ kind: "upsert", instance: inst("acme", `i-0000000${n}`) });
    const w2 = hub.watch({ resumeToken: token });
    const events = await drain(w2);
    expect(kinds(events)).toEqual(["snapshot_reset", "upsert", "upsert", "upsert", "initial_state_complete"]);
    expect(events[0]?.event).toEqual({ kind: "snapshot_reset", reason: "token older than history" });
    expect(events.every((e) => e.revision === 3)).toBe(true);
  });

  it("exactly as many changes as the history holds can still be replayed", async () => {
    const hub = new WatchHub({ historyLimit: 2 });
    const w1 = hub.watch();
    const token = (await drain(w1)).at(-1)?.resumeToken as string;
    w1.close();
    hub.publish({ kind: "upsert", instance: inst("acme", "i-00000001") });
    hub.publish({ kind: "upsert", instance: inst("acme", "i-00000002") });
    expect(kinds(await drain(hub.watch({ resumeToken: token })))).toEqual(["upsert", "upsert", "initial_state_complete"]);
  });

  it("does not trust a token from another hub, another filter, or a snapshot that was cut short", async () => {
    const other = new WatchHub({ epoch: "other1" });
    const foreign = (await drain(other.watch())).at(-1)?.resumeToken as string;
    const hub = new WatchHub({ epoch: "mine1" });
    hub.seed([inst("acme", "i-00000001"), inst("acme", "i-00000002")]);
    const reasonFor = async (resumeToken: string, filterKey = "") => {
      const first = (await drain(hub.watch({ resumeToken, filterKey })))[0];
      return first?.event.kind === "snapshot_reset" ? first.event.reason : null;
    };
    expect(await reasonFor(foreign)).toBe("agent restarted: token from another incarnation");
    expect(await reasonFor("garbage")).toBe("resume token not recognised");

    const snapshot = await drain(hub.watch({ filterKey: "tenant=acme" }));
    const markerToken = snapshot.at(-1)?.resumeToken as string;
    expect(await reasonFor(markerToken, "tenant=acme")).toBeNull();
    expect(await reasonFor(markerToken, "tenant=beta")).toBe("token was issued for a different filter");
    expect(await reasonFor(snapshot[0]?.resumeToken as string, "tenant=acme")).toBe("the previous snapshot was not completed");
    expect(await reasonFor(markerToken.replace(/\.0\./, ".99."), "tenant=acme")).toBe("token is ahead of this agent's history");
  });

  it("fast-check: a watcher that disconnects anywhere and resumes ends with the hub's state, nothing missed or doubled", async () => {
    const ids = ["i-00000001", "i-00000002", "i-00000003", "i-00000004"];
    const tenants = ["acme", "beta"];
    const op = fc.oneof(
      fc.record({
        kind: fc.constant("upsert" as const),
        id: fc.constantFrom(...ids),
        tenant: fc.constantFrom(...tenants),
        status: fc.constantFrom(...INSTANCE_STATUSES),
      }),
      fc.record({ kind: fc.constant("deleted" as const), id: fc.constantFrom(...ids), tenant: fc.constantFrom(...tenants) }),
      fc.record({ kind: fc.constant("read" as const), count: fc.nat(6) }),
    );
    const filters: Record<string, (i: Instance) => boolean> = {
      all: () => true,
      acme: (i) => i.tenantId === "acme",
      active: (i) => i.status === "running" || i.status === "warm",
    };
    await fc.assert(
      fc.asyncProperty(
        fc.array(op, { maxLength: 40 }),
        fc.array(op, { maxLength: 40 }),
        fc.integer({ min: 0, max: 12 }),
        fc.constantFrom(...Object.keys(filters)),
        fc.array(fc.tuple(fc.constantFrom(...ids), fc.constantFrom(...tenants), fc.constantFrom(...INSTANCE_STATUSES)), {
          maxLength: 6,
        }),
        async (before, during, historyLimit, filterName, seeded) => {
          const filter = filters[filterName] as (i: Instance) => boolean;
          const hub = new WatchHub({ historyLimit, watcherBufferLimit: 10_000 });
          // Independent model of the hub's state, to compute which revisions matter to the filter.
          const model = new Map<string, Instance>();
          for (const [id, tenant, status] of seeded) model.set(key(inst(tenant, id, status)), inst(tenant, id, status));
          hub.seed([...model.values()]);
          const relevant: number[] = [];
          let revision = 0;
          const view = new Map<string, Instance>();
          const changeRevisions: number[] = [];
          let lastToken = "";
          let lastRevision = -1;
          let sawMarker = false;

          const consume = (events: WatchEvent[]) => {
            for (const e of events) {
              if (e.event.kind === "upsert" || e.event.kind === "deleted") {
                const isSnapshot = e.event.kind === "upsert" && !sawMarker;
                if (!isSnapshot) changeRevisions.push(e.revision);
              }
              if (e.event.kind === "snapshot_reset") sawMarker = false;
              if (e.event.kind === "initial_state_complete") sawMarker = true;
              expect(e.revision).toBeGreaterThanOrEqual(lastRevision);
              lastRevision = e.revision;
              lastToken = e.resumeToken;
            }
            applyEvents(view, events);
          };
          const run = async (ops: typeof before, watcher: Watcher | null) => {
            for (const o of ops) {
              if (o.kind === "read") {
                if (watcher === null) continue;
                const events: WatchEvent[] = [];
                for (let n = 0; n < o.count && watcher.buffered > 0; n++) {
                  const r = await watcher.next();
                  if (!r.done) events.push(r.value);
                }
                consume(events);
                continue;
              }
              const instance = inst(o.tenant, o.id, o.kind === "upsert" ? o.status : "destroyed");
              const k = key(instance);
              const previous = model.get(k);
              if (o.kind === "upsert") model.set(k, instance);
              else model.delete(k);
              revision++;
              const was = previous !== undefined && filter(previous);
              const matters = o.kind === "upsert" ? filter(instance) || was : previous === undefined ? filter(instance) : was;
              if (matters) relevant.push(revision);
              hub.publish({ kind: o.kind, instance });
            }
          };

          const w1 = hub.watch({ filter });
          await run(before, w1);
          w1.close();
          const tokenRevision = lastRevision;
          const tokenComplete = sawMarker;
          const firstRevisions = changeRevisions.length;
          await run(during, null);

          const w2 = hub.watch({ filter, resumeToken: lastToken });
          // A client that read nothing has no token and simply starts over.
          const fresh = lastToken === "";
          const expectReset = !fresh && (!tokenComplete || tokenRevision < hub.revision - historyLimit);
          const resumed = await drain(w2);
          expect(resumed[0]?.event.kind === "snapshot_reset").toBe(expectReset);
          consume(resumed);
          await run(during.filter((o) => o.kind !== "read"), w2);
          consume(await drain(w2));

          const expected = new Map(hub.snapshot(filter).map((i) => [key(i), i]));
          expect(view).toEqual(expected);
          // No change is delivered twice, and change revisions strictly increase within and across sessions.
          for (let n = 1; n < changeRevisions.length; n++) {
            expect(changeRevisions[n]).toBeGreaterThan(changeRevisions[n - 1] as number);
          }
          if (!fresh && !expectReset) {
            // Nothing missed: every change relevant to the filter since the first snapshot arrived exactly once.
            expect(changeRevisions).toEqual(relevant.filter((r) => r > 0));
          } else {
            expect(changeRevisions.every((r) => relevant.includes(r))).toBe(true);
            expect(changeRevisions.slice(0, firstRevisions)).toEqual(relevant.slice(0, firstRevisions));
          }
          w2.close();
          expect(hub.watcherCount).toBe(0);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe("WatchHub: slow consumers, closing and heartbeats", () => {
  it("cuts off a watcher that never reads once its live buffer overflows, and forgets it", async () => {
    const counts: number[] = [];
    let cutOff = 0;
    const hub = new WatchHub({
      watcherBufferLimit: 3,
      observer: { watcherCountChanged: (n) => counts.push(n), watcherCutOff: () => cutOff++ },
    });
    // The snapshot does not count against the limit.
    hub.seed([inst("acme", "i-00000001"), inst("acme", "i-00000002"), inst("acme", "i-00000003"), inst("acme", "i-00000004")]);
    const w = hub.watch();
    expect(w.buffered).toBe(5);
    for (let n = 0; n < 3; n++) hub.publish({ kind: "upsert", instance: inst("beta", `i-0000001${n}`) });
    expect(w.ended).toBe(false);
    expect(w.buffered).toBe(8);
    hub.publish({ kind: "upsert", instance: inst("beta", "i-00000020") });
    expect(w.ended).toBe(true);
    expect(w.buffered).toBe(0);
    expect(hub.watcherCount).toBe(0);
    expect(cutOff).toBe(1);
    expect(counts).toEqual([1, 0]);
    const err = await w.next().then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(MvmError);
    expect((err as MvmError).kind).toBe("exhausted");
    expect((err as MvmError).message).toBe(WATCH_OVERFLOW_MESSAGE);
    expect(await w.next()).toEqual({ value: undefined, done: true });
    // Later publishes cost the cut-off watcher nothing.
    hub.publish({ kind: "upsert", instance: inst("beta", "i-00000021") });
    expect(w.buffered).toBe(0);
  });

  it("a consumer that keeps up is never cut off", async () => {
    const hub = new WatchHub({ watcherBufferLimit: 2 });
    const w = hub.watch();
    await drain(w);
    for (let n = 0; n < 50; n++) {
      hub.publish({ kind: "upsert", instance: inst("acme", "i-00000001", n % 2 ? "warm" : "running") });
      expect((await w.next()).value?.revision).toBe(n + 1);
    }
    expect(w.ended).toBe(false);
  });

  it("a waiting reader gets the overflow error", async () => {
    const hub = new WatchHub({ watcherBufferLimit: 1 });
    const w = hub.watch();
    await drain(w);
    hub.publish({ kind: "upsert", instance: inst("acme", "i-00000001") });
    hub.publish({ kind: "upsert", instance: inst("acme", "i-00000002") });
    await expect(w.next()).rejects.toMatchObject({ kind: "exhausted" });
  });

  it("close() and an abort end the iteration cleanly", async () => {
    const hub = new WatchHub();
    const controller = new AbortController();
    const aborted = hub.watch({ signal: controller.signal });
    const closed = hub.watch();
    const collected: string[] = [];
    const loop = (async () => {
      for await (const e of aborted) collected.push(e.event.kind);
    })();
    expect(hub.watcherCount).toBe(2);
    await new Promise((r) => setTimeout(r, 5));
    controller.abort();
    await loop;
    expect(collected).toEqual(["initial_state_complete"]);
    await drain(closed);
    const pending = closed.next();
    closed.close();
    expect(await pending).toEqual({ value: undefined, done: true });
    expect(hub.watcherCount).toBe(0);
    const early = hub.watch({ signal: AbortSignal.abort() });
    expect(early.ended).toBe(true);
    expect(hub.watcherCount).toBe(0);
  });

  it("hub.close(error) ends every watcher with that error", async () => {
    const hub = new WatchHub();
    const w = hub.watch();
    await drain(w);
    hub.close(new MvmError("unavailable", "agent shutting down"));
    await expect(w.next()).rejects.toMatchObject({ kind: "unavailable" });
  });

  it("heartbeats reach every watcher with the latest revision and a token that resumes", async () => {
    const hub = new WatchHub();
    const a = hub.watch({ filter: (i) => i.tenantId === "acme" });
    const b = hub.watch();
    await drain(a);
    await drain(b);
    hub.publish({ kind: "upsert", instance: inst("beta", "i-00000001") });
    hub.heartbeat();
    const fromA = await drain(a);
    expect(fromA).toEqual([expect.objectContaining({ revision: 1, event: { kind: "heartbeat" } })]);
    expect(kinds(await drain(b))).toEqual(["upsert", "heartbeat"]);
    b.heartbeat();
    expect(kinds(await drain(b))).toEqual(["heartbeat"]);
    expect(await drain(a)).toEqual([]);
    const resumed = await drain(hub.watch({ filter: (i) => i.tenantId === "acme", resumeToken: fromA[0]?.resumeToken as string }));
    expect(kinds(resumed)).toEqual(["initial_state_complete"]);
  });

  it("a later seed publishes only the differences", async () => {
    const hub = new WatchHub();
    hub.seed([inst("acme", "i-00000001"), inst("acme", "i-00000002")]);
    expect(hub.revision).toBe(0);
    const w = hub.watch();
    await drain(w);
    hub.seed([inst("acme", "i-00000001"), inst("acme", "i-00000003")]);
    const events = await drain(w);
    expect(events.map((e) => [e.event.kind, (e.event as { instance: Instance }).instance.instanceId])).toEqual([
      ["deleted", "i-00000002"],
      ["upsert", "i-00000003"],
    ]);
  });

  it("rejects invalid options", () => {
    expect(() => new WatchHub({ watcherBufferLimit: 0 })).toThrow(/watcherBufferLimit/);
    expect(() => new WatchHub({ epoch: "Not.Valid" })).toThrow(/epoch/);
  });
});
