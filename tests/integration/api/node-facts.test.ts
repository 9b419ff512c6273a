// What NodeService reports about the host: disk use measured on a real data root, capabilities from the adapters.

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { Hypervisor } from "../../../gen/mvm/v1/common_pb.js";
import { createHostNodeFacts, probeCapabilities } from "../../../src/agent/host-node-facts.js";
import { measureDiskUsage } from "../../../src/agent/disk-usage.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { FsStore } from "../../../src/runtime/store/fs-store.js";
import { instanceRecord, poolRecord, tenantRecord } from "../../unit/store/fixtures.js";

let dir = "";
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const MIB = 1024 * 1024;

describe("measureDiskUsage", () => {
  it("splits a tenant's bytes into artifacts, instances, data disks and snapshots", async () => {
    dir = mkdtempSync(join(tmpdir(), "mvm-disk-"));
    const store = await FsStore.open(dir);
    await store.putTenant(tenantRecord("acme"));
    await store.putPool(poolRecord("acme", "web"));
    const instance = instanceRecord("acme", "web", "i-00000001");
    await store.putInstance(instance);
    const revisions = (t: string, p: string) => join(dir, "tenants", t, "pools", p, "revisions");
    const instanceDir = store.instanceDir("acme", "web", "i-00000001");
    const write = (path: string, bytes: number) => {
      mkdirSync(join(path, ".."), { recursive: true });
      writeFileSync(path, Buffer.alloc(bytes, 1));
    };
    write(join(revisions("acme", "web"), "abc123", "rootfs.ext4"), 2 * MIB);
    write(join(instanceDir, "volumes", "data.ext4"), 3 * MIB);
    write(join(instanceDir, "volumes", "root.qcow2"), 1 * MIB);
    write(join(instanceDir, "snapshot", "memory"), 4 * MIB);

    const report = await measureDiskUsage({ store, revisionsDir: revisions, reserveBytes: 7 }, undefined);
    expect(report.reserveBytes).toBe(7);
    expect(report.filesystemBytes).toBeGreaterThan(report.freeBytes);
    const pool = report.tenants[0]!.pools[0]!;
    expect(pool.revisions).toBe(1);
    // Allocated blocks: at least the bytes written, and not much more.
    expect(pool.artifactsBytes).toBeGreaterThanOrEqual(2 * MIB);
    expect(pool.artifactsBytes).toBeLessThan(2.2 * MIB);
    expect(pool.dataDiskBytes).toBeGreaterThanOrEqual(3 * MIB);
    expect(pool.dataDiskBytes).toBeLessThan(3.2 * MIB);
    expect(pool.instancesBytes).toBeGreaterThanOrEqual(4 * MIB);
    expect(pool.instancesBytes).toBeLessThan(4.4 * MIB);
    expect(pool.snapshotsBytes).toBeGreaterThanOrEqual(4 * MIB);
    expect(pool.snapshotsBytes).toBeLessThan(4.2 * MIB);
    expect(report.tenants[0]!.otherBytes).toBeLessThan(MIB);
    expect((await measureDiskUsage({ store, revisionsDir: revisions, reserveBytes: 0 }, "nobody")).tenants).toEqual([]);
  });
});

describe("host node facts", () => {
  it("reports the hypervisors the adapters offer and picks qemu without KVM", async () => {
    dir = mkdtempSync(join(tmpdir(), "mvm-facts-"));
    const store = await FsStore.open(dir);
    const plane = new FakeDataPlane();
    const runtime = { store, vmm: plane.vmm.bind(plane), cgroups: plane.cgroupsPort(), network: plane.network("mvm-ns") };
    const caps = await probeCapabilities(runtime);
    expect(caps.hypervisors.map((h) => h.kind)).toEqual([Hypervisor.FIRECRACKER, Hypervisor.QEMU]);
    expect(caps.autoHypervisor).toBe(Hypervisor.QEMU);
    expect(caps.kvmUsable).toBe(false);
    expect(caps.netns).toBe("mvm-ns");
    expect(caps.cgroupVersion).toBe(2);
    const broken = await probeCapabilities({ ...runtime, vmm: () => { throw new Error("no driver"); } });
    expect(broken.hypervisors.every((h) => !h.available && /no driver/.test(h.unavailableReason))).toBe(true);
    expect(broken.autoHypervisor).toBe(Hypervisor.UNSPECIFIED);
    const facts = createHostNodeFacts({ runtime, revisionsDir: () => dir, agentVersion: "1.0.0", agentStartedAt: new Date(0) });
    const info = await facts.nodeInfo();
    expect(info.nodeId).toBe((await store.node()).nodeId);
    expect(info.dataRoot).toBe(store.dataRoot);
    expect(info.vcpus).toBeGreaterThan(0);
    expect(info.agentVersion).toBe("1.0.0");
  });
});
