import { beforeEach, describe, expect, it } from "vitest";
import { isMvmError } from "../../../src/core/errors.js";
import type { Instance } from "../../../src/core/model.js";
import { createInstance } from "../../../src/core/use-cases/instances.js";
import {
  destroyInstance,
  execInInstance,
  refreshInstanceHealth,
  startInstance,
  stopInstance,
  type DataPlaneDeps,
} from "../../../src/core/use-cases/lifecycle.js";
import { createPool, updatePool } from "../../../src/core/use-cases/pools.js";
import { createTenant } from "../../../src/core/use-cases/tenants.js";
import { FakeDataPlane, type FakeFailPoint } from "../../../src/runtime/fake/fake-data-plane.js";
import { fakeDataPlaneDeps } from "../../helpers/fake-data-plane-deps.js";

let plane: FakeDataPlane;
let deps: DataPlaneDeps;

async function builtPool(dataDiskMib = 0, quotas = {}): Promise<Instance> {
  await createTenant(deps, { tenantId: "acme", quotas });
  await createPool(deps, { tenantId: "acme", poolId: "web" }, { resources: { vcpus: 2, memMib: 512, dataDiskMib } });
  const pool = await deps.store.getPool("acme", "web");
  await deps.store.putPool({ ...pool!, currentRevision: "abc123" });
  return createInstance(deps, { tenantId: "acme", poolId: "web" });
}

const keyOf = (i: Instance) => ({ tenantId: i.tenantId, poolId: i.poolId, instanceId: i.instanceId });

beforeEach(() => {
  plane = new FakeDataPlane();
  deps = fakeDataPlaneDeps(plane);
});

describe("start", () => {
  it("boots with the revision's artifacts, fixed disk order and the instance's network", async () => {
    const created = await builtPool(64);
    const running = await startInstance(deps, keyOf(created));
    expect(running.status).toBe("running");
    expect(running.revision).toBe("abc123");
    expect(running.vmm).toMatchObject({ hypervisor: "qemu", netns: "mvm-test" });
    const spec = [...plane.processes.values()][0]!;
    expect(spec.kernelPath).toBe("/data/acme/web/revisions/abc123/vmlinux");
    expect(spec.disks.map((d) => d.role)).toEqual(["root", "data", "secrets"]);
    expect(spec.kernelArgs).toContain(`mvm.instance=${created.instanceId}`);
    expect(spec.kernelArgs.find((a) => a.startsWith("ip="))).toBe(`ip=${created.net.guestIp}::${created.net.gatewayIp}:255.255.255.0::eth0:off`);
    expect(spec.cgroupProcsFiles).toHaveLength(1);
    expect(plane.taps.has(created.net.tapName)).toBe(true);
    const secrets = JSON.parse(plane.files.get(`/data/acme/web/instances/${created.instanceId}/run/secrets.ext4`)!);
    expect(secrets.authorized_keys).toContain("ssh-ed25519");
    expect(JSON.parse(secrets["identity.json"])).toMatchObject({ instance_id: created.instanceId, tenant_id: "acme" });
  });

  it("keeps the secrets disk in the third slot when the pool has no data disk", async () => {
    const created = await builtPool(0);
    await startInstance(deps, keyOf(created));
    const spec = [...plane.processes.values()][0]!;
    expect(spec.disks.map((d) => d.role)).toEqual(["root", "data", "secrets"]);
    expect(spec.disks[1]!.path).toMatch(/placeholder/);
  });

  it("gives Firecracker a raw copy of the root image and the pool's seccomp policy; QEMU a qcow2 overlay", async () => {
    const created = await builtPool(0);
    await startInstance(deps, keyOf(created));
    const qemuRoot = [...plane.processes.values()][0]!.disks[0]!;
    expect(qemuRoot).toMatchObject({ format: "qcow2", path: expect.stringMatching(/root\.qcow2$/) });
    expect(plane.files.get(qemuRoot.path)).toBe("overlay of /data/acme/web/revisions/abc123/rootfs.ext4");
    await stopInstance(deps, keyOf(created));

    const firecracker = { ...deps, chooseHypervisor: async () => "firecracker" as const };
    const running = await startInstance(firecracker, keyOf(created));
    expect(running.vmm?.hypervisor).toBe("firecracker");
    const spec = [...plane.processes.values()][0]!;
    expect(spec.disks[0]).toMatchObject({ role: "root", format: "raw", path: expect.stringMatching(/root\.raw$/) });
    expect(plane.files.get(spec.disks[0]!.path)).toBe("raw copy of /data/acme/web/revisions/abc123/rootfs.ext4");
    expect(spec.seccompPolicy).toBe((await deps.store.getPool("acme", "web"))!.seccompPolicy);
  });

  it("is idempotent: starting a running instance changes nothing", async () => {
    const created = await builtPool();
    const first = await startInstance(deps, keyOf(created));
    const second = await startInstance(deps, keyOf(created));
    expect(second).toEqual(first);
    expect(plane.processes.size).toBe(1);
  });

  it("refuses a pool without a built revision", async () => {
    await createTenant(deps, { tenantId: "acme" });
    await createPool(deps, { tenantId: "acme", poolId: "web" }, {});
    const created = await createInstance(deps, { tenantId: "acme", poolId: "web" });
    await expect(startInstance(deps, keyOf(created))).rejects.toThrow(/no built revision/);
    expect(plane.processes.size).toBe(0);
  });

  it("over quota fails with exhausted and starts no process", async () => {
    const created = await builtPool(0, { maxRunning: 1 });
    await startInstance(deps, keyOf(created));
    const second = await createInstance(deps, { tenantId: "acme", poolId: "web" });
    const error = await startInstance(deps, keyOf(second)).catch((e) => e);
    expect(isMvmError(error) && error.kind).toBe("exhausted");
    expect(error.message).toMatch(/max_running/);
    expect(plane.processes.size).toBe(1);
    expect(plane.taps.has(second.net.tapName)).toBe(false);
    expect((await deps.store.getInstance("acme", "web", second.instanceId))!.status).toBe("created");
  });

  for (const point of ["ensureTap", "cgroups.ensure", "createRootOverlay", "ensureDataDisk", "buildSecretsDisk", "boot"] as FakeFailPoint[]) {
    it(`rolls back everything when ${point} fails`, async () => {
      const created = await builtPool(64);
      plane.failAt = point;
      await expect(startInstance(deps, keyOf(created))).rejects.toThrow(`fake failure at ${point}`);
      expect(plane.taps.size).toBe(0);
      expect(plane.cgroups.size).toBe(0);
      expect(plane.processes.size).toBe(0);
      expect((await deps.store.getInstance("acme", "web", created.instanceId))!.status).toBe("created");
      plane.failAt = null;
      expect((await startInstance(deps, keyOf(created))).status).toBe("running");
    });
  }
});

describe("stop, destroy, exec, health", () => {
  it("stop releases the VMM, TAP and cgroup and keeps the record", async () => {
    const created = await builtPool();
    await startInstance(deps, keyOf(created));
    const stopped = await stopInstance(deps, keyOf(created));
    expect(stopped.status).toBe("stopped");
    expect(stopped.vmm).toBeNull();
    expect(plane.processes.size).toBe(0);
    expect(plane.taps.size).toBe(0);
    expect(plane.cgroups.size).toBe(0);
    expect(plane.execs.some((e) => e.argv.join(" ").includes("poweroff"))).toBe(true);
    expect((await stopInstance(deps, keyOf(created))).status).toBe("stopped");
  });

  it("a stopped instance starts again", async () => {
    const created = await builtPool();
    await startInstance(deps, keyOf(created));
    await stopInstance(deps, keyOf(created));
    expect((await startInstance(deps, keyOf(created))).status).toBe("running");
  });

  it("destroy of a running instance stops it and removes the record", async () => {
    const created = await builtPool(64);
    await startInstance(deps, keyOf(created));
    await destroyInstance(deps, keyOf(created), { keepVolumes: true });
    expect(plane.processes.size).toBe(0);
    expect(plane.taps.size).toBe(0);
    expect(await deps.store.getInstance("acme", "web", created.instanceId)).toBeNull();
    expect(plane.files.has(`/data/acme/web/kept/${created.instanceId}/data.ext4`)).toBe(true);
  });

  it("exec needs a running instance and reaches the guest through the data-plane netns", async () => {
    const created = await builtPool();
    await expect(execInInstance(deps, keyOf(created), ["uname"], { timeoutMs: 1000 })).rejects.toThrow(/created: exec needs a running/);
    await startInstance(deps, keyOf(created));
    const result = await execInInstance(deps, keyOf(created), ["echo", "hi"], { timeoutMs: 1000 });
    expect(result.stdout).toBe("ran echo hi\n");
    expect(plane.execs.at(-1)!.target).toEqual({
      guestIp: created.net.guestIp,
      netns: "mvm-test",
      privateKeyPath: "/data/acme/ssh/id_ed25519",
      runDir: `/data/acme/web/instances/${created.instanceId}/run`,
    });
  });

  it("notices a VMM killed from outside and reports the instance stopped", async () => {
    const created = await builtPool();
    const running = await startInstance(deps, keyOf(created));
    plane.killFromOutside(running.vmm!.pid);
    const refreshed = await refreshInstanceHealth(deps, keyOf(created));
    expect(refreshed.status).toBe("stopped");
    expect(refreshed.conditions.find((c) => c.type === "Ready")).toMatchObject({ status: "false", reason: "VmmExited" });
    expect(plane.taps.size).toBe(0);
    expect(plane.cgroups.size).toBe(0);
  });

  it("leaves a healthy running instance running", async () => {
    const created = await builtPool();
    await startInstance(deps, keyOf(created));
    expect((await refreshInstanceHealth(deps, keyOf(created))).status).toBe("running");
  });

  it("a pool update does not touch a running instance's revision until its next cold start", async () => {
    const created = await builtPool();
    await startInstance(deps, keyOf(created));
    const pool = await deps.store.getPool("acme", "web");
    await deps.store.putPool({ ...pool!, currentRevision: "def456" });
    await updatePool(deps, { tenantId: "acme", poolId: "web" }, { pinned: true });
    expect((await deps.store.getInstance("acme", "web", created.instanceId))!.revision).toBe("abc123");
    await stopInstance(deps, keyOf(created));
    expect((await startInstance(deps, keyOf(created))).revision).toBe("def456");
  });
});
