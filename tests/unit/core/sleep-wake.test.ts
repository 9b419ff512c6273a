import { beforeEach, describe, expect, it } from "vitest";
import { GUEST_HOOK_PATHS, type GuestChannel } from "../../../src/core/data-plane-ports.js";
import { isMvmError } from "../../../src/core/errors.js";
import type { AuditEntry, AuditLog, AuditRecord } from "../../../src/core/observability-ports.js";
import type { Instance } from "../../../src/core/model.js";
import { createInstance } from "../../../src/core/use-cases/instances.js";
import { destroyInstance, startInstance, stopInstance, type DataPlaneDeps } from "../../../src/core/use-cases/lifecycle.js";
import { createPool } from "../../../src/core/use-cases/pools.js";
import {
  GUEST_HOOKS,
  hostCompatibilityProblems,
  instanceSnapshot,
  resumeInstance,
  retryWakeHook,
  sleepInstance,
  wakeInstance,
  warmInstance,
} from "../../../src/core/use-cases/sleep-wake.js";
import { retryUnansweredWakeHooks, WakeHookRetrySchedule } from "../../../src/core/use-cases/wake-hook-retry.js";
import { createTenant } from "../../../src/core/use-cases/tenants.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { fakeDataPlaneDeps } from "../../helpers/fake-data-plane-deps.js";

let plane: FakeDataPlane;
let deps: DataPlaneDeps;

const keyOf = (i: Instance) => ({ tenantId: i.tenantId, poolId: i.poolId, instanceId: i.instanceId });
const snapshotDir = (i: Instance) => `/data/acme/web/instances/${i.instanceId}/snapshot`;

async function runningInstance(options: { quotas?: object; compression?: "none" | "lz4" | "zstd"; dataDiskMib?: number } = {}): Promise<Instance> {
  await createTenant(deps, { tenantId: "acme", quotas: options.quotas ?? {} });
  await createPool(
    deps,
    { tenantId: "acme", poolId: "web" },
    { resources: { vcpus: 2, memMib: 512, dataDiskMib: options.dataDiskMib ?? 64 }, snapshotCompression: options.compression ?? "none" },
  );
  const pool = await deps.store.getPool("acme", "web");
  await deps.store.putPool({ ...pool!, currentRevision: "abc123" });
  const created = await createInstance(deps, { tenantId: "acme", poolId: "web" });
  return startInstance(deps, keyOf(created));
}

async function expectKind(promise: Promise<unknown>, kind: string, message?: RegExp): Promise<Error> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(isMvmError(error) ? error.kind : error).toBe(kind);
  if (message) expect((error as Error).message).toMatch(message);
  return error as Error;
}

beforeEach(() => {
  plane = new FakeDataPlane();
  deps = fakeDataPlaneDeps(plane);
});

/** A guest channel whose hooks run as `exec` of the hook's path, like the SSH channel's. */
function guestRunning(exec: GuestChannel["exec"]): GuestChannel {
  return { exec, runHook: (target, hook, args, options) => exec(target, [GUEST_HOOK_PATHS[hook], ...args], options) };
}

describe("warm and resume", () => {
  it("warm pauses the vmm and keeps the process; resume unpauses it", async () => {
    const running = await runningInstance();
    const warm = await warmInstance(deps, keyOf(running));
    expect(warm.status).toBe("warm");
    expect(warm.vmm?.pid).toBe(running.vmm?.pid);
    expect(plane.paused.has(running.vmm!.pid)).toBe(true);
    expect((await deps.store.getInstance("acme", "web", running.instanceId))?.status).toBe("warm");

    const resumed = await resumeInstance(deps, keyOf(running));
    expect(resumed.status).toBe("running");
    expect(plane.paused.has(running.vmm!.pid)).toBe(false);
  });

  it("resume runs the guest's wake hook with the host's time, since the guest's clock stood still while paused", async () => {
    const running = await runningInstance();
    await warmInstance(deps, keyOf(running));
    const hooks: string[][] = [];
    deps = {
      ...deps,
      guest: guestRunning(async (_target, argv) => {
        hooks.push([...argv]);
        return { exitCode: 0, stdout: "", stderr: "" };
      }),
    };
    const resumed = await resumeInstance(deps, keyOf(running));
    expect(hooks).toEqual([[GUEST_HOOKS.wake, String(Math.floor(deps.clock.nowMs() / 1000))]]);
    expect(resumed.conditions.find((c) => c.type === "Ready")).toMatchObject({ status: "true", reason: "Resumed", message: "vcpus resumed; guest clock set from the host" });
  });

  it("a resume whose wake hook fails still runs the instance, and its Ready condition says the clock was not set", async () => {
    const running = await runningInstance();
    await warmInstance(deps, keyOf(running));
    deps = { ...deps, guest: guestRunning(async () => ({ exitCode: 2, stdout: "", stderr: "hwclock: no rtc" })) };
    const resumed = await resumeInstance(deps, keyOf(running));
    expect(resumed.status).toBe("running");
    expect(plane.paused.has(running.vmm!.pid)).toBe(false);
    expect(resumed.conditions.find((c) => c.type === "Ready")?.message).toMatch(/^vcpus resumed; guest clock not set: .*exited 2: hwclock: no rtc/);
  });

  it("is idempotent in the target state", async () => {
    const running = await runningInstance();
    expect(await resumeInstance(deps, keyOf(running))).toEqual(running);
    const warm = await warmInstance(deps, keyOf(running));
    expect(await warmInstance(deps, keyOf(running))).toEqual(warm);
  });

  it("refuses warm over max_warm, leaving the instance running and unpaused", async () => {
    const running = await runningInstance({ quotas: { maxWarm: 0 } });
    await expectKind(warmInstance(deps, keyOf(running)), "exhausted", /max_warm/);
    expect((await deps.store.getInstance("acme", "web", running.instanceId))?.status).toBe("running");
    expect(plane.paused.size).toBe(0);
  });

  it("refuses illegal edges and a vmm that died", async () => {
    const running = await runningInstance();
    await stopInstance(deps, keyOf(running));
    await expectKind(warmInstance(deps, keyOf(running)), "failed_precondition", /stopped/);
    const again = await startInstance(deps, keyOf(running));
    plane.killFromOutside(again.vmm!.pid);
    await expectKind(warmInstance(deps, keyOf(running)), "failed_precondition", /vmm is not running/);
  });
});

describe("sleep", () => {
  it("runs the sleep-prep hook while the guest runs, then snapshots, stops the vmm and keeps TAP and cgroup", async () => {
    const running = await runningInstance();
    const pausedDuringHook: boolean[] = [];
    deps = {
      ...deps,
      guest: guestRunning(async (_target, argv) => {
        if (argv[0] === GUEST_HOOKS.sleepPrep) pausedDuringHook.push(plane.paused.has(running.vmm!.pid));
        return { exitCode: 0, stdout: "", stderr: "" };
      }),
    };
    const sleeping = await sleepInstance(deps, keyOf(running));
    expect(pausedDuringHook).toEqual([false]);
    expect(sleeping.status).toBe("sleeping");
    expect(sleeping.vmm).toBeNull();
    expect(sleeping.lastSnapshotAt).not.toBeNull();
    expect(plane.processes.size).toBe(0);
    expect(plane.taps.has(running.net.tapName)).toBe(true);
    expect(plane.cgroups.size).toBe(1);
    const meta = await instanceSnapshot(deps, keyOf(running));
    expect(meta).toMatchObject({ hypervisor: "qemu", revision: "abc123", memMib: 512, compression: "none", type: "full" });
    expect(plane.files.has(`${snapshotDir(running)}/${meta!.memoryFile}`)).toBe(true);
    expect(sleeping.conditions.find((c) => c.type === "SleepPrepared")?.status).toBe("true");
  });

  it("uses the pool's compression unless the call overrides it", async () => {
    const running = await runningInstance({ compression: "zstd" });
    await sleepInstance(deps, keyOf(running));
    expect((await instanceSnapshot(deps, keyOf(running)))?.compression).toBe("zstd");
    await wakeInstance(deps, keyOf(running));
    await sleepInstance(deps, keyOf(running), { compression: "lz4" });
    expect((await instanceSnapshot(deps, keyOf(running)))?.compression).toBe("lz4");
  });

  it("works from warm: resumes the guest for the hook, then sleeps", async () => {
    const running = await runningInstance();
    await warmInstance(deps, keyOf(running));
    const sleeping = await sleepInstance(deps, keyOf(running));
    expect(sleeping.status).toBe("sleeping");
    expect(plane.execs.map((e) => e.argv[0])).toContain(GUEST_HOOKS.sleepPrep);
    expect(plane.processes.size).toBe(0);
  });

  it("sleeps even when the hook fails, and says so in a condition", async () => {
    const running = await runningInstance();
    deps = { ...deps, guest: guestRunning(async () => ({ exitCode: 1, stdout: "", stderr: "sync failed" })) };
    const sleeping = await sleepInstance(deps, keyOf(running));
    expect(sleeping.status).toBe("sleeping");
    const condition = sleeping.conditions.find((c) => c.type === "SleepPrepared");
    expect(condition).toMatchObject({ status: "false", reason: "HookFailed" });
    expect(condition?.message).toMatch(/sync failed/);
  });

  it("a failed snapshot leaves the instance running, unpaused, with no snapshot", async () => {
    const running = await runningInstance();
    plane.failAt = "seal";
    await expect(sleepInstance(deps, keyOf(running))).rejects.toThrow(/fake failure at seal/);
    const record = await deps.store.getInstance("acme", "web", running.instanceId);
    expect(record?.status).toBe("running");
    expect(plane.processes.has(running.vmm!.pid)).toBe(true);
    expect(plane.paused.size).toBe(0);
    expect([...plane.files.keys()].some((p) => p.startsWith(snapshotDir(running)))).toBe(false);
  });

  it("a failed snapshot of a warm instance leaves it warm (paused)", async () => {
    const running = await runningInstance();
    await warmInstance(deps, keyOf(running));
    plane.failAt = "snapshot";
    await expect(sleepInstance(deps, keyOf(running))).rejects.toThrow(/fake failure at snapshot/);
    expect((await deps.store.getInstance("acme", "web", running.instanceId))?.status).toBe("warm");
    expect(plane.paused.has(running.vmm!.pid)).toBe(true);
  });

  it("is idempotent and refuses instances that are not running or warm", async () => {
    const running = await runningInstance();
    const sleeping = await sleepInstance(deps, keyOf(running));
    expect(await sleepInstance(deps, keyOf(running))).toEqual(sleeping);
    await stopInstance(deps, keyOf(running));
    await expectKind(sleepInstance(deps, keyOf(running)), "failed_precondition", /stopped/);
  });
});

describe("wake", () => {
  it("restores with the same devices and a fresh secrets disk, runs the wake hook with the host time, removes the snapshot", async () => {
    const running = await runningInstance();
    const bootSpec = plane.processes.get(running.vmm!.pid)!;
    await sleepInstance(deps, keyOf(running));
    const secretsPath = `/data/acme/web/instances/${running.instanceId}/run/secrets.ext4`;
    plane.files.delete(secretsPath);
    const woken = await wakeInstance(deps, keyOf(running));
    expect(woken.status).toBe("running");
    expect(woken.healthy).toBe(true);
    expect(woken.vmm?.pid).not.toBe(running.vmm?.pid);
    const restoreSpec = plane.processes.get(woken.vmm!.pid)!;
    expect(restoreSpec.disks).toEqual(bootSpec.disks);
    expect(restoreSpec.kernelArgs).toEqual(bootSpec.kernelArgs);
    expect(restoreSpec.tap).toEqual(bootSpec.tap);
    expect(plane.files.has(secretsPath)).toBe(true);
    const hook = plane.execs.find((e) => e.argv[0] === GUEST_HOOKS.wake);
    expect(Number(hook?.argv[1])).toBeGreaterThan(1_600_000_000);
    expect(await instanceSnapshot(deps, keyOf(running))).toBeNull();
    expect([...plane.files.keys()].some((p) => p.startsWith(snapshotDir(running)))).toBe(false);
  });

  it("sets the snapshot aside before it answers, and frees its files only after the record and audit entry are written", async () => {
    const running = await runningInstance();
    await sleepInstance(deps, keyOf(running));
    const order: string[] = [];
    const snapshots = deps.snapshots;
    const audit: AuditLog = {
      async append(record) {
        order.push(`audit ${record.action} ${record.outcome}`);
        return { ...record, seq: 1, at: "", prevHash: "", hash: "" };
      },
    };
    const store = new Proxy(deps.store, {
      get: (target, name) => (name === "putInstance" ? (i: Instance) => (order.push(`put ${i.status}`), target.putInstance(i)) : Reflect.get(target, name)),
    });
    const woken = await wakeInstance(
      {
        ...deps,
        store,
        audit,
        snapshots: {
          ...snapshots,
          async setAside(dir) {
            order.push("set aside");
            const aside = await snapshots.setAside(dir);
            return { purge: async () => (order.push("purge"), aside.purge()) };
          },
        },
      },
      keyOf(running),
    );
    expect(woken.status).toBe("running");
    expect(await instanceSnapshot(deps, keyOf(running))).toBeNull();
    await new Promise((resolve) => setImmediate(resolve));
    // Aside as soon as the guest has run, before the record: from then on its disks no longer match it.
    expect(order).toEqual(["set aside", "put running", "audit instance_wake success", "purge"]);
  });

  it("is a no-op on a running instance", async () => {
    const running = await runningInstance();
    expect(await wakeInstance(deps, keyOf(running))).toEqual(running);
  });

  it("refuses a corrupted snapshot before starting anything; the instance stays sleeping with its snapshot", async () => {
    const running = await runningInstance();
    await sleepInstance(deps, keyOf(running));
    const meta = (await instanceSnapshot(deps, keyOf(running)))!;
    const file = `${snapshotDir(running)}/${meta.memoryFile}`;
    plane.files.set(file, "garbage");
    await expectKind(wakeInstance(deps, keyOf(running)), "failed_precondition", /corrupt/);
    expect((await deps.store.getInstance("acme", "web", running.instanceId))?.status).toBe("sleeping");
    expect(plane.processes.size).toBe(0);
    expect(plane.files.get(file)).toBe("garbage");
    expect(await instanceSnapshot(deps, keyOf(running))).toEqual(meta);
  });

  it("lets the vmm prepare its launcher in the cgroup while the hash is checked, and ends it when the wake fails", async () => {
    const running = await runningInstance();
    await sleepInstance(deps, keyOf(running));
    const calls: string[] = [];
    const withPreparation = (kind: Parameters<DataPlaneDeps["vmm"]>[0]) => {
      const vmm = plane.vmm(kind);
      return {
        ...vmm,
        prepareRestore: async (launch: { runDir: string; cgroupProcsFiles: readonly string[] }) => {
          expect(plane.processes.size).toBe(0); // nothing of the VMM runs yet
          calls.push(`prepare ${launch.runDir} ${launch.cgroupProcsFiles.join(",")}`);
        },
        discardPrepared: async (runDir: string) => {
          calls.push(`discard ${runDir}`);
        },
      };
    };
    const meta = (await instanceSnapshot(deps, keyOf(running)))!;
    const file = `${snapshotDir(running)}/${meta.memoryFile}`;
    const good = plane.files.get(file)!;
    plane.files.set(file, "garbage");
    const prepared = { ...deps, vmm: withPreparation };
    await expectKind(wakeInstance(prepared, keyOf(running)), "failed_precondition", /corrupt/);
    const runDir = `/data/acme/web/instances/${running.instanceId}/run`;
    expect(calls).toEqual([expect.stringMatching(new RegExp(`^prepare ${runDir} .*cgroup\\.procs`)), `discard ${runDir}`]);

    calls.length = 0;
    plane.files.set(file, good);
    expect((await wakeInstance(prepared, keyOf(running))).status).toBe("running");
    expect(calls).toEqual([expect.stringMatching(/^prepare /)]);
  });

  it("refuses a snapshot from another host, naming what differs", async () => {
    const running = await runningInstance();
    await sleepInstance(deps, keyOf(running));
    plane.host = { ...plane.host, cpuModel: "other cpu" };
    await expectKind(wakeInstance(deps, keyOf(running)), "failed_precondition", /cpu_model was "fake cpu", this host has "other cpu"/);
    expect(plane.processes.size).toBe(0);
    expect((await deps.store.getInstance("acme", "web", running.instanceId))?.status).toBe("sleeping");
  });

  it("over quota fails with exhausted and the instance stays sleeping", async () => {
    const first = await runningInstance({ quotas: { maxRunning: 1 } });
    await sleepInstance(deps, keyOf(first));
    const second = await createInstance(deps, { tenantId: "acme", poolId: "web" });
    await startInstance(deps, keyOf(second));
    await expectKind(wakeInstance(deps, keyOf(first)), "exhausted", /max_running/);
    expect((await deps.store.getInstance("acme", "web", first.instanceId))?.status).toBe("sleeping");
    expect(await instanceSnapshot(deps, keyOf(first))).not.toBeNull();
    expect(plane.processes.size).toBe(1);
  });

  it("a failed restore leaves the instance sleeping with snapshot, TAP and cgroup", async () => {
    const running = await runningInstance();
    await sleepInstance(deps, keyOf(running));
    plane.failAt = "restore";
    await expect(wakeInstance(deps, keyOf(running))).rejects.toThrow(/fake failure at restore/);
    expect((await deps.store.getInstance("acme", "web", running.instanceId))?.status).toBe("sleeping");
    expect(await instanceSnapshot(deps, keyOf(running))).not.toBeNull();
    expect(plane.taps.has(running.net.tapName)).toBe(true);
    expect(plane.cgroups.size).toBe(1);
  });

  it("a guest that ran but failed its wake hook keeps running with Ready false; its outgrown snapshot is removed", async () => {
    const running = await runningInstance();
    await sleepInstance(deps, keyOf(running));
    deps = { ...deps, guest: guestRunning(async (_t, argv) => ({ exitCode: argv[0] === GUEST_HOOKS.wake ? 7 : 0, stdout: "", stderr: "no secrets" })) };
    await expectKind(wakeInstance(deps, keyOf(running)), "unavailable", /wake hook .* exited 7: no secrets; instance .* is running again \(Ready false\)/);
    expect(plane.processes.size).toBe(1);
    const after = await deps.store.getInstance("acme", "web", running.instanceId);
    expect(after?.status).toBe("running");
    expect(after?.healthy).toBe(false);
    expect(after?.conditions.find((c) => c.type === "Ready")).toMatchObject({ status: "false", reason: "WakeHookFailed", message: expect.stringMatching(/exited 7: no secrets/) });
    expect(await deps.snapshots.readMeta(snapshotDir(running))).toBeNull();
    // It is an ordinary running instance: it can sleep again.
    deps = { ...deps, guest: guestRunning(async () => ({ exitCode: 0, stdout: "", stderr: "" })) };
    expect((await sleepInstance(deps, keyOf(running))).status).toBe("sleeping");
  });

  it("a guest that never answers keeps running too, once the wait for it has run out", async () => {
    const running = await runningInstance();
    await sleepInstance(deps, keyOf(running));
    deps = {
      ...deps,
      clock: { nowMs: () => Date.now() },
      guest: guestRunning(async () => {
        throw new Error("ssh: connection refused");
      }),
    };
    await expectKind(wakeInstance(deps, keyOf(running), { readyTimeoutMs: 300 }), "unavailable", /did not answer within 300 ms: ssh: connection refused/);
    expect(plane.processes.size).toBe(1);
    expect((await deps.store.getInstance("acme", "web", running.instanceId))?.status).toBe("running");
    expect(await deps.snapshots.readMeta(snapshotDir(running))).toBeNull();
  });

  it("when the record cannot be written after the guest ran, the vmm stops and the instance sleeps without its snapshot", async () => {
    const running = await runningInstance();
    await sleepInstance(deps, keyOf(running));
    const store = new Proxy(deps.store, {
      get: (target, name) =>
        name === "putInstance"
          ? async (i: Instance) => {
              if (i.status === "running") throw new Error("disk full");
              return target.putInstance(i);
            }
          : Reflect.get(target, name),
    });
    await expect(wakeInstance({ ...deps, store }, keyOf(running))).rejects.toThrow(/disk full/);
    expect(plane.processes.size).toBe(0);
    expect((await deps.store.getInstance("acme", "web", running.instanceId))?.status).toBe("sleeping");
    // Never restored on disks that have moved on: the next wake refuses, and a start cold-boots.
    await expectKind(wakeInstance(deps, keyOf(running)), "failed_precondition", /has no snapshot/);
  });

  it("retries a guest that cannot be reached yet", async () => {
    const running = await runningInstance();
    await sleepInstance(deps, keyOf(running));
    let attempts = 0;
    deps = {
      ...deps,
      clock: { nowMs: () => Date.now() },
      guest: guestRunning(async () => {
        attempts++;
        if (attempts < 3) throw new Error("ssh: connection refused");
        return { exitCode: 0, stdout: "", stderr: "" };
      }),
    };
    expect((await wakeInstance(deps, keyOf(running))).status).toBe("running");
    expect(attempts).toBe(3);
  });

  it("a sleeping instance without a snapshot cannot wake", async () => {
    const running = await runningInstance();
    await sleepInstance(deps, keyOf(running));
    await deps.snapshots.remove(snapshotDir(running));
    await expectKind(wakeInstance(deps, keyOf(running)), "failed_precondition", /has no snapshot/);
  });
});

describe("stop and destroy discard the snapshot", () => {
  it("stop of a sleeping instance removes the snapshot, TAP and cgroup", async () => {
    const running = await runningInstance();
    await sleepInstance(deps, keyOf(running));
    const stopped = await stopInstance(deps, keyOf(running));
    expect(stopped.status).toBe("stopped");
    expect(plane.snapshotMetas.size).toBe(0);
    expect([...plane.files.keys()].some((p) => p.startsWith(snapshotDir(running)))).toBe(false);
    expect(plane.taps.size).toBe(0);
  });

  it("destroy of a sleeping instance removes the snapshot", async () => {
    const running = await runningInstance();
    await sleepInstance(deps, keyOf(running));
    await destroyInstance(deps, keyOf(running));
    expect(plane.snapshotMetas.size).toBe(0);
  });
});

describe("hostCompatibilityProblems", () => {
  it("lists each differing field and nothing when equal", () => {
    const a = { cpuModel: "x", hostKernel: "6.1", vmmVersion: "7.2.22" };
    expect(hostCompatibilityProblems(a, a)).toEqual([]);
    expect(hostCompatibilityProblems(a, { ...a, hostKernel: "6.2", vmmVersion: "8.0" })).toEqual([
      'host_kernel was "6.1", this host has "6.2"',
      'vmm_version was "7.2.22", this host has "8.0"',
    ]);
  });
});

describe("a wake hook the guest did not answer, tried again", () => {
  const failingHook = () => guestRunning(async (_t, argv) => ({ exitCode: argv[0] === GUEST_HOOKS.wake ? 7 : 0, stdout: "", stderr: "no secrets" }));
  const answeringHook = (asked: string[][] = []) =>
    guestRunning(async (_t, argv) => {
      asked.push([...argv]);
      return { exitCode: 0, stdout: "", stderr: "" };
    });

  /** A running instance whose wake left it waiting on its wake hook (Ready false, WakeHookFailed). */
  async function unanswered(): Promise<Instance> {
    const running = await runningInstance();
    await sleepInstance(deps, keyOf(running));
    const healthy = deps.guest;
    deps = { ...deps, guest: failingHook() };
    await expectKind(wakeInstance(deps, keyOf(running)), "unavailable");
    deps = { ...deps, guest: healthy };
    const after = (await deps.store.getInstance("acme", "web", running.instanceId))!;
    expect(after.conditions.find((c) => c.type === "Ready")).toMatchObject({ status: "false", reason: "WakeHookFailed" });
    return after;
  }

  it("a wake of an instance waiting on its wake hook asks the guest again, and Ready comes back with the same VM", async () => {
    const waiting = await unanswered();
    const asked: string[][] = [];
    deps = { ...deps, guest: answeringHook(asked) };
    const woken = await wakeInstance(deps, keyOf(waiting));
    expect(asked).toEqual([[GUEST_HOOKS.wake, expect.stringMatching(/^\d+$/)]]);
    expect(woken.status).toBe("running");
    expect(woken.vmm).toEqual(waiting.vmm);
    expect(woken.healthy).toBe(true);
    expect(woken.conditions.find((c) => c.type === "Ready")).toMatchObject({ status: "true", reason: "Woken", message: expect.stringMatching(/later try/) });
    expect(plane.processes.size).toBe(1);
    expect(await deps.store.getInstance("acme", "web", waiting.instanceId)).toEqual(woken);
    // Answered, it is an ordinary running instance again: a wake changes nothing and asks nothing.
    expect(await wakeInstance(deps, keyOf(waiting))).toEqual(woken);
    expect(asked).toHaveLength(1);
  });

  it("a try that gets no answer again changes nothing and says the instance runs on with Ready false", async () => {
    const waiting = await unanswered();
    deps = { ...deps, guest: failingHook() };
    await expectKind(retryWakeHook(deps, keyOf(waiting), { timeoutMs: 1000 }), "unavailable", /exited 7: no secrets; instance .* runs on with Ready false/);
    expect(await deps.store.getInstance("acme", "web", waiting.instanceId)).toEqual(waiting);
    expect(plane.processes.size).toBe(1);
  });

  it("writes nothing when the instance was stopped while its guest was asked", async () => {
    const waiting = await unanswered();
    deps = {
      ...deps,
      guest: guestRunning(async () => {
        // The hook runs outside the tenant lock: a stop gets in meanwhile.
        await stopInstance({ ...deps, guest: answeringHook() }, keyOf(waiting));
        return { exitCode: 0, stdout: "", stderr: "" };
      }),
    };
    const after = await retryWakeHook(deps, keyOf(waiting), { timeoutMs: 1000 });
    expect(after.status).toBe("stopped");
    expect(after.conditions.find((c) => c.type === "Ready")).toMatchObject({ status: "false", reason: "Stopped" });
    expect((await deps.store.getInstance("acme", "web", waiting.instanceId))?.status).toBe("stopped");
  });

  it("a guest whose VMM is gone is not asked: a wake says so, the agent's pass records the instance stopped", async () => {
    const waiting = await unanswered();
    plane.killFromOutside(waiting.vmm!.pid);
    await expectKind(wakeInstance(deps, keyOf(waiting)), "failed_precondition", /vmm is not running/);
    expect(await retryUnansweredWakeHooks(deps, new WakeHookRetrySchedule(), { timeoutMs: 1000 })).toEqual([]);
    const after = await deps.store.getInstance("acme", "web", waiting.instanceId);
    expect(after?.status).toBe("stopped");
    expect(after?.conditions.find((c) => c.type === "Ready")).toMatchObject({ status: "false", reason: "VmmExited" });
    expect(plane.taps.size).toBe(0);
  });

  it("leaves instances that wait on nothing alone", async () => {
    const running = await runningInstance();
    const asked: string[][] = [];
    deps = { ...deps, guest: answeringHook(asked) };
    expect(await retryWakeHook(deps, keyOf(running), { timeoutMs: 1000 })).toEqual(running);
    expect(await retryUnansweredWakeHooks(deps, new WakeHookRetrySchedule(), { timeoutMs: 1000 })).toEqual([]);
    expect(asked).toEqual([]);
  });

  it("the agent's pass asks each waiting guest when it is due, backs off while it gets no answer, and audits as itself", async () => {
    const waiting = await unanswered();
    let nowMs = 1_800_000_000_000;
    const audit = new RecordingAuditLog();
    deps = { ...deps, clock: { nowMs: () => nowMs }, audit, guest: failingHook() };
    const schedule = new WakeHookRetrySchedule(15_000, 60_000);
    const key = keyOf(waiting);

    const pass = () => retryUnansweredWakeHooks(deps, schedule, { timeoutMs: 1000 });
    expect(await pass()).toEqual([{ ...key, result: "unanswered", error: expect.stringMatching(/exited 7/) }]);
    // Not due again before 15 s, then 30 s, then at most 60 s.
    nowMs += 14_999;
    expect(await pass()).toEqual([]);
    nowMs += 1;
    expect(await pass()).toHaveLength(1);
    nowMs += 29_999;
    expect(await pass()).toEqual([]);
    nowMs += 1;
    expect(await pass()).toHaveLength(1);
    nowMs += 60_000;
    expect(await pass()).toHaveLength(1);
    nowMs += 60_000;
    deps = { ...deps, guest: answeringHook() };
    expect(await pass()).toEqual([{ ...key, result: "answered", error: "" }]);
    expect((await deps.store.getInstance("acme", "web", waiting.instanceId))?.healthy).toBe(true);
    expect(await pass()).toEqual([]);

    expect(audit.entries.map((e) => [e.action, e.outcome, e.actor.id, e.details.retry])).toEqual([
      ...Array.from({ length: 4 }, () => ["instance_wake", "failure", "system:wake-hook-retry", "wake_hook"]),
      ["instance_wake", "success", "system:wake-hook-retry", "wake_hook"],
    ]);
  });
});

describe("the schedule of later wake hook tries", () => {
  const instance = (pid: number) => ({ tenantId: "acme", poolId: "web", instanceId: "i-0123abcd", vmm: { pid, pidStartTime: 7 } }) as unknown as Instance;

  it("is due at once for a new instance, doubles its wait after each failure up to the maximum, and starts over for a new VMM", () => {
    const schedule = new WakeHookRetrySchedule(1000, 5000);
    expect(schedule.due(instance(10), 0)).toBe(true);
    const waits: number[] = [];
    let at = 0;
    for (let i = 0; i < 5; i += 1) {
      schedule.failed(instance(10), at);
      let next = at;
      while (!schedule.due(instance(10), next)) next += 1;
      waits.push(next - at);
      at = next;
    }
    expect(waits).toEqual([1000, 2000, 4000, 5000, 5000]);
    expect(schedule.due(instance(11), at)).toBe(true);
  });

  it("forgets instances that no longer wait", () => {
    const schedule = new WakeHookRetrySchedule(1000, 5000);
    schedule.failed(instance(10), 0);
    expect(schedule.due(instance(10), 1)).toBe(false);
    schedule.keepOnly([]);
    expect(schedule.due(instance(10), 1)).toBe(true);
  });
});

class RecordingAuditLog implements AuditLog {
  readonly entries: AuditRecord[] = [];
  async append(record: AuditRecord): Promise<AuditEntry> {
    this.entries.push(record);
    return { ...record, seq: this.entries.length, at: "", prevHash: "", hash: "" };
  }
}
