import { mkdirSync, appendFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { Code } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BadRequestDetailSchema, InstanceOperation, InstanceStateDetailSchema } from "../../../gen/mvm/v1/errors_pb.js";
import { Compression } from "../../../gen/mvm/v1/common_pb.js";
import { InstanceStatus } from "../../../gen/mvm/v1/instance_pb.js";
import { InstanceService, LogSource } from "../../../gen/mvm/v1/instance_service_pb.js";
import { PoolService } from "../../../gen/mvm/v1/pool_service_pb.js";
import { TenantService } from "../../../gen/mvm/v1/tenant_service_pb.js";
import { createHarness, type Harness } from "./api-harness.js";
import { expectCode, take } from "./expect-rpc.js";

let h: Harness;

beforeEach(async () => {
  h = await createHarness();
});
afterEach(async () => {
  await h.close();
});

const spec = { image: { source: { case: "debian" as const, value: {} } }, resources: { vcpus: 1, memMib: 256, dataDiskMib: 0 } };

async function builtPool(tenantId = "acme", poolId = "web", quotas = {}) {
  await h.client(TenantService, "admin").createTenant({ tenantId, quotas });
  const pools = h.client(PoolService, "admin");
  await pools.createPool({ pool: { tenantId, poolId }, spec });
  for await (const _ of pools.buildPool({ pool: { tenantId, poolId } })) void _;
  return { tenantId, poolId };
}

async function newInstance(pool = { tenantId: "acme", poolId: "web" }, start = false) {
  const created = await h.client(InstanceService, "admin").createInstance({ pool, start });
  const i = created.instance!;
  return { tenantId: i.tenantId, poolId: i.poolId, instanceId: i.instanceId };
}

describe("InstanceService lifecycle", () => {
  it("creates, starts, stops and destroys an instance on the data plane", async () => {
    const pool = await builtPool();
    const api = h.client(InstanceService, "admin");
    const ref = await newInstance(pool);
    expect((await api.getInstance({ instance: ref })).instance?.status).toBe(InstanceStatus.CREATED);
    const started = await api.startInstance({ instance: ref });
    expect(started.instance?.status).toBe(InstanceStatus.RUNNING);
    expect(started.instance?.vmm?.pid).toBeGreaterThan(0);
    expect(h.plane.processes.size).toBe(1);
    expect((await api.startInstance({ instance: ref })).instance?.vmm?.pid).toBe(started.instance?.vmm?.pid);
    const stopped = await api.stopInstance({ instance: ref });
    expect(stopped.instance?.status).toBe(InstanceStatus.STOPPED);
    expect(h.plane.processes.size).toBe(0);
    const tombstone = await api.destroyInstance({ instance: ref });
    expect(tombstone.instance?.status).toBe(InstanceStatus.DESTROYED);
    await expectCode(api.getInstance({ instance: ref }), Code.NotFound);
  });

  it("creates and starts in one call when asked", async () => {
    await builtPool();
    const created = await h.client(InstanceService, "admin").createInstance({ pool: { tenantId: "acme", poolId: "web" }, start: true });
    expect(created.instance?.status).toBe(InstanceStatus.RUNNING);
  });

  it("uses a chosen instance ID, and refuses one already taken", async () => {
    const pool = await builtPool();
    const api = h.client(InstanceService, "admin");
    const created = await api.createInstance({ pool, instanceId: "i-0badcafe" });
    expect(created.instance?.instanceId).toBe("i-0badcafe");
    await expectCode(api.createInstance({ pool, instanceId: "i-0badcafe" }), Code.AlreadyExists);
    const bad = await expectCode(api.createInstance({ pool, instanceId: "i-XYZ" }), Code.InvalidArgument);
    expect(bad.findDetails(BadRequestDetailSchema)[0]?.fieldViolations.map((v) => v.field)).toEqual(["instance_id"]);
  });

  it("creates one instance for a retried request_id", async () => {
    const pool = await builtPool();
    const api = h.client(InstanceService, "admin");
    const a = await api.createInstance({ pool, requestId: "create-1" });
    const b = await api.createInstance({ pool, requestId: "create-1" });
    expect(b.instance?.instanceId).toBe(a.instance?.instanceId);
    expect((await api.listInstances({})).instances).toHaveLength(1);
  });

  it("refuses start on a pool without a revision", async () => {
    await h.client(TenantService, "admin").createTenant({ tenantId: "acme" });
    await h.client(PoolService, "admin").createPool({ pool: { tenantId: "acme", poolId: "web" }, spec });
    const ref = await newInstance();
    const error = await expectCode(h.client(InstanceService, "admin").startInstance({ instance: ref }), Code.FailedPrecondition);
    expect(error.rawMessage).toMatch(/no built revision/);
  });

  it("refuses start on a sleeping instance with an InstanceStateDetail", async () => {
    await builtPool();
    const ref = await newInstance();
    const record = await h.runtime.store.getInstance(ref.tenantId, ref.poolId, ref.instanceId);
    await h.runtime.store.putInstance({ ...record!, status: "sleeping" });
    const error = await expectCode(h.client(InstanceService, "admin").startInstance({ instance: ref }), Code.FailedPrecondition);
    expect(error.rawMessage).toMatch(/use wake/);
    const [detail] = error.findDetails(InstanceStateDetailSchema);
    expect(detail?.currentStatus).toBe(InstanceStatus.SLEEPING);
    expect(detail?.refusedOperation).toBe(InstanceOperation.START);
    expect(detail?.allowedOperations).toContain(InstanceOperation.WAKE);
    expect(detail?.instance?.instanceId).toBe(ref.instanceId);
  });

  it("returns ResourceExhausted when max_running is reached", async () => {
    const pool = await builtPool("acme", "web", { maxRunning: 1 });
    const api = h.client(InstanceService, "admin");
    await newInstance(pool, true);
    const second = await newInstance(pool);
    const error = await expectCode(api.startInstance({ instance: second }), Code.ResourceExhausted);
    expect(error.rawMessage).toMatch(/max_running/);
  });

  it("warms, resumes, sleeps and wakes, returning the snapshot meta while sleeping", async () => {
    await builtPool();
    const api = h.client(InstanceService, "admin");
    const ref = await newInstance(undefined, true);
    expect((await api.warmInstance({ instance: ref })).instance?.status).toBe(InstanceStatus.WARM);
    expect((await api.resumeInstance({ instance: ref })).instance?.status).toBe(InstanceStatus.RUNNING);
    // Running is what resume and wake lead to: on a running instance both return it unchanged.
    expect((await api.wakeInstance({ instance: ref })).instance?.status).toBe(InstanceStatus.RUNNING);
    const slept = await api.sleepInstance({ instance: ref });
    expect(slept.instance?.status).toBe(InstanceStatus.SLEEPING);
    expect(slept.snapshot?.sha256).not.toBe("");
    expect((await api.getInstance({ instance: ref })).snapshot?.memMib).toBeGreaterThan(0);
    await expectCode(api.sleepInstance({ instance: ref, prepTimeoutMs: 300_001 }), Code.InvalidArgument);
    expect((await api.wakeInstance({ instance: ref })).instance?.status).toBe(InstanceStatus.RUNNING);
    expect((await api.getInstance({ instance: ref })).snapshot).toBeUndefined();
    // A compression chosen for one sleep overrides the pool's; a value outside the enum is refused, nothing done.
    await expectCode(api.sleepInstance({ instance: ref, compression: 9 as Compression }), Code.InvalidArgument);
    expect((await api.getInstance({ instance: ref })).instance?.status).toBe(InstanceStatus.RUNNING);
    expect((await api.sleepInstance({ instance: ref, compression: Compression.ZSTD })).snapshot?.compression).toBe(Compression.ZSTD);
    expect((await api.wakeInstance({ instance: ref })).instance?.status).toBe(InstanceStatus.RUNNING);
    await api.stopInstance({ instance: ref });
    const refused = await expectCode(api.warmInstance({ instance: ref }), Code.FailedPrecondition);
    expect(refused.findDetails(InstanceStateDetailSchema)[0]?.currentStatus).toBe(InstanceStatus.STOPPED);
  });

  it("reads an instance's live counters while it runs, and none once it is stopped", async () => {
    await builtPool();
    const api = h.client(InstanceService, "admin");
    const ref = await newInstance(undefined, true);
    const running = await api.getInstanceStats({ instance: ref });
    expect(running.instance?.status).toBe(InstanceStatus.RUNNING);
    // The test double's cgroup holds the pool's memory (256 MiB) as its limit and counts nothing yet.
    expect(running.memoryLimitBytes).toBe(256n * 1024n * 1024n);
    expect([running.cpuUsageUs, running.tapRxBytes, running.tapTxBytes]).toEqual([0n, 0n, 0n]);
    await api.stopInstance({ instance: ref });
    const stopped = await api.getInstanceStats({ instance: ref });
    expect(stopped.instance?.status).toBe(InstanceStatus.STOPPED);
    expect([stopped.cpuUsageUs, stopped.memoryBytes, stopped.memoryLimitBytes, stopped.tapRxBytes]).toEqual([undefined, undefined, undefined, undefined]);
    await expectCode(h.client(InstanceService, "tenant/other").getInstanceStats({ instance: ref }), Code.PermissionDenied);
  });

  it("names ref fields under instance", async () => {
    const error = await expectCode(h.client(InstanceService, "admin").getInstance({ instance: { tenantId: "acme", poolId: "web", instanceId: "nope" } }), Code.InvalidArgument);
    expect(error.findDetails(BadRequestDetailSchema)[0]?.fieldViolations.map((v) => v.field)).toEqual(["instance.instance_id"]);
    await expectCode(h.client(InstanceService, "admin").getInstance({}), Code.InvalidArgument);
  });

  it("runs a command and returns its exit code and output", async () => {
    await builtPool();
    const ref = await newInstance(undefined, true);
    const api = h.client(InstanceService, "admin");
    const result = await api.execInstance({ instance: ref, argv: ["uname", "-a"], env: { FOO: "bar" } });
    expect(result.exitCode).toBe(0);
    expect(Buffer.from(result.stdout).toString()).toBe("ran env FOO=bar uname -a\n");
    expect((await api.execInstance({ instance: ref, argv: ["fail"] })).exitCode).toBe(3);
    const error = await expectCode(api.execInstance({ instance: ref, argv: [], env: { "1BAD": "x" } }), Code.InvalidArgument);
    expect(error.findDetails(BadRequestDetailSchema)[0]?.fieldViolations.map((v) => v.field)).toEqual(["argv", 'env["1BAD"]']);
  });
});

describe("ListInstances", () => {
  it("filters by tenant, pool and status, hides nothing it should show, and pages", async () => {
    await builtPool("acme", "web");
    await h.client(PoolService, "admin").createPool({ pool: { tenantId: "acme", poolId: "api" }, spec });
    await builtPool("other", "db");
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await newInstance({ tenantId: "acme", poolId: "web" })).instanceId);
    await newInstance({ tenantId: "acme", poolId: "api" });
    const running = await newInstance({ tenantId: "other", poolId: "db" }, true);
    const api = h.client(InstanceService, "admin");
    expect((await api.listInstances({})).instances).toHaveLength(5);
    expect((await api.listInstances({ filter: { tenantId: "acme", poolId: "web" } })).instances.map((i) => i.instanceId)).toEqual([...ids].sort());
    expect((await api.listInstances({ filter: { statuses: [InstanceStatus.RUNNING] } })).instances.map((i) => i.instanceId)).toEqual([running.instanceId]);
    expect((await api.listInstances({ filter: { labels: { nope: "x" } } })).instances).toHaveLength(0);
    const page1 = await api.listInstances({ pageSize: 2 });
    const page2 = await api.listInstances({ pageSize: 2, pageToken: page1.nextPageToken });
    const page3 = await api.listInstances({ pageSize: 2, pageToken: page2.nextPageToken });
    const all = [...page1.instances, ...page2.instances, ...page3.instances].map((i) => `${i.tenantId}/${i.poolId}/${i.instanceId}`);
    expect(all).toHaveLength(5);
    expect(new Set(all).size).toBe(5);
    expect([...all].sort()).toEqual(all);
    expect(page3.nextPageToken).toBe("");
    const error = await expectCode(api.listInstances({ filter: { poolId: "web" } }), Code.InvalidArgument);
    expect(error.findDetails(BadRequestDetailSchema)[0]?.fieldViolations[0]?.field).toBe("filter.pool_id");
  });
});

describe("StreamInstanceLogs", () => {
  it("sends the last lines of the console, then follows new ones", async () => {
    await builtPool();
    const ref = await newInstance();
    const path = join(h.dir, "tenants", "acme", "pools", "web", "instances", ref.instanceId, "run", "serial.log");
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, Array.from({ length: 150 }, (_, i) => `line ${i}`).join("\n") + "\npartial");
    const api = h.client(InstanceService, "admin");
    const tail = [];
    for await (const m of api.streamInstanceLogs({ instance: ref, tailLines: 3, source: LogSource.CONSOLE })) tail.push(...m.lines.map((l) => l.text));
    expect(tail).toEqual(["line 147", "line 148", "line 149"]);

    const controller = new AbortController();
    const stream = api.streamInstanceLogs({ instance: ref, tailLines: 1, follow: true, source: LogSource.CONSOLE }, { signal: controller.signal });
    const iterator = stream[Symbol.asyncIterator]();
    expect((await iterator.next()).value?.lines.map((l: { text: string }) => l.text)).toEqual(["line 149"]);
    appendFileSync(path, " done\nnext line\n");
    expect((await iterator.next()).value?.lines.map((l: { text: string }) => l.text)).toEqual(["partial done", "next line"]);
    controller.abort();
  });
});

describe("WatchInstances", () => {
  it("sends the current state, the marker, then live changes; resuming replays what was missed", async () => {
    const pool = await builtPool();
    const existing = await newInstance(pool);
    const api = h.client(InstanceService, "admin");
    const controller = new AbortController();
    const iterator = api.watchInstances({}, { signal: controller.signal })[Symbol.asyncIterator]();
    const first = (await iterator.next()).value;
    expect(first.event.case).toBe("upsert");
    expect(first.event.value.instanceId).toBe(existing.instanceId);
    const marker = (await iterator.next()).value;
    expect(marker.event).toEqual({ case: "initialStateComplete", value: expect.objectContaining({ instanceCount: 1 }) });

    const created = await newInstance(pool);
    const change = (await iterator.next()).value;
    expect(change.event.case).toBe("upsert");
    expect(change.event.value.instanceId).toBe(created.instanceId);
    expect(change.revision).toBeGreaterThan(marker.revision);
    controller.abort();

    await api.startInstance({ instance: created });
    await api.destroyInstance({ instance: existing });
    const resumed = await take(api.watchInstances({ resumeToken: change.resumeToken }), 3);
    expect(resumed.map((e) => e.event.case)).toEqual(["upsert", "deleted", "initialStateComplete"]);
    expect(resumed[0]?.event.case === "upsert" && resumed[0].event.value.status).toBe(InstanceStatus.RUNNING);
    expect(resumed[1]?.event.case === "deleted" && resumed[1].event.value.instance?.instanceId).toBe(existing.instanceId);
    expect(resumed.every((e) => e.revision > change.revision)).toBe(true);
  });

  it("sends a snapshot reset for a token it cannot honour", async () => {
    await builtPool();
    await newInstance();
    const events = await take(h.client(InstanceService, "admin").watchInstances({ resumeToken: "w1.zzz.5.00000000.c" }), 3);
    expect(events.map((e) => e.event.case)).toEqual(["snapshotReset", "upsert", "initialStateComplete"]);
  });

  it("filters by status, and heartbeats when nothing changes", async () => {
    await builtPool();
    await newInstance();
    const api = h.client(InstanceService, "admin");
    const events = await take(api.watchInstances({ filter: { statuses: [InstanceStatus.RUNNING] }, heartbeatIntervalMs: 1000 }), 2);
    expect(events.map((e) => e.event.case)).toEqual(["initialStateComplete", "heartbeat"]);
    await expectCode(take(api.watchInstances({ heartbeatIntervalMs: 10 }), 1), Code.InvalidArgument);
  });

  it("ends with Unavailable when the server shuts down", async () => {
    await builtPool();
    const api = h.client(InstanceService, "admin");
    const iterator = api.watchInstances({})[Symbol.asyncIterator]();
    expect((await iterator.next()).value.event.case).toBe("initialStateComplete");
    const next = iterator.next();
    h.shutdown.abort();
    await expectCode(next, Code.Unavailable);
  });

  it("cuts a watcher that falls behind off with ResourceExhausted", async () => {
    await h.close();
    h = await createHarness({ watcherBufferLimit: 4 });
    const pool = await builtPool();
    const api = h.client(InstanceService, "admin");
    const iterator = api.watchInstances({})[Symbol.asyncIterator]();
    expect((await iterator.next()).value.event.case).toBe("initialStateComplete");
    // Changes published while nobody reads pile up in the watcher's buffer.
    for (let i = 0; i < 8; i++) await newInstance(pool);
    let error: unknown;
    try {
      for (let i = 0; i < 20; i++) await iterator.next();
    } catch (e) {
      error = e;
    }
    expect(error).toMatchObject({ code: Code.ResourceExhausted });
    expect(await h.metrics.watchersCutOff.get()).toMatchObject({ values: [expect.objectContaining({ value: 1 })] });
  });
});
