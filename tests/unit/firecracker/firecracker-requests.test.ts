import { describe, expect, it } from "vitest";
import {
  bootRequests,
  ctrlAltDelRequest,
  describeInstanceRequest,
  flushMetricsRequest,
  pauseRequest,
  restoreRequests,
  resumeRequest,
  snapshotCreateRequest,
  versionRequest,
} from "../../../src/runtime/firecracker/firecracker-requests.js";
import type { FirecrackerBootConfig, FirecrackerRequest } from "../../../src/runtime/firecracker/firecracker-requests.js";
import { FirecrackerSpec } from "./firecracker-spec.js";

const spec = new FirecrackerSpec();

function bootConfig(overrides: Partial<FirecrackerBootConfig> = {}): FirecrackerBootConfig {
  return {
    vcpus: 2,
    memMib: 256,
    trackDirtyPages: false,
    kernelPath: "/rev/vmlinux",
    initrdPath: "/rev/initramfs.cpio.gz",
    kernelArgs: ["ip=10.240.0.2::10.240.0.1:255.255.255.0::eth0:off", "mvm.instance=i-0a1b2c3d"],
    drives: [
      { role: "secrets", path: "/run/secrets.img", readOnly: true },
      { role: "root", path: "/run/root.img", readOnly: false },
      { role: "data", path: "/run/data.img", readOnly: false },
    ],
    tap: { name: "mvt-1-0a1b2c3d", mac: "02:fc:00:00:00:01" },
    logPath: "/run/firecracker.log",
    metricsPath: "/run/metrics.fifo",
    serialOutPath: null,
    ...overrides,
  };
}

function expectValid(requests: FirecrackerRequest[]): void {
  const problems = requests.flatMap((r) => spec.check(r));
  expect(problems).toEqual([]);
}

describe("firecracker requests against firecracker.yaml", () => {
  it("the validator itself rejects what the specification forbids", () => {
    expect(spec.check({ method: "PUT", path: "/machine-config", body: { vcpu_count: 0, mem_size_mib: 128 } })).not.toEqual([]);
    expect(spec.check({ method: "PUT", path: "/machine-config", body: { vcpu_count: 1 } })).not.toEqual([]);
    expect(spec.check({ method: "PUT", path: "/drives/root", body: { drive_id: "root", is_root_device: true, typo: 1 } })).not.toEqual([]);
    expect(spec.check({ method: "PATCH", path: "/vm", body: { state: "Stopped" } })).not.toEqual([]);
    expect(spec.check({ method: "POST", path: "/actions", body: { action_type: "InstanceStart" } })).not.toEqual([]);
    expect(spec.check({ method: "PUT", path: "/snapshot/create", body: { snapshot_type: "Full", mem_file_path: "/m" } })).not.toEqual([]);
    // $refs are resolved: a bad value deep inside a referenced definition is caught.
    expect(
      spec.check({ method: "PUT", path: "/snapshot/load", body: { snapshot_path: "/s", mem_backend: { backend_type: "Disk", backend_path: "/m" } } }),
    ).not.toEqual([]);
  });

  it("a cold boot sends logger, metrics, machine-config, boot-source, drives in order, eth0, then InstanceStart", () => {
    const requests = bootRequests(bootConfig());
    expectValid(requests);
    expect(requests.map((r) => `${r.method} ${r.path}`)).toEqual([
      "PUT /logger",
      "PUT /metrics",
      "PUT /machine-config",
      "PUT /boot-source",
      "PUT /drives/root",
      "PUT /drives/data",
      "PUT /drives/secrets",
      "PUT /network-interfaces/eth0",
      "PUT /actions",
    ]);
    const body = (path: string) => requests.find((r) => r.path === path)?.body as Record<string, unknown>;
    expect(body("/drives/root")).toMatchObject({ drive_id: "root", is_root_device: true, is_read_only: false, path_on_host: "/run/root.img" });
    expect(body("/drives/secrets")).toMatchObject({ is_root_device: false, is_read_only: true });
    expect(body("/boot-source").boot_args).toMatch(/^console=ttyS0 reboot=k panic=1 pci=off .*mvm\.instance=i-0a1b2c3d$/);
    expect(body("/boot-source").initrd_path).toBe("/rev/initramfs.cpio.gz");
    expect(body("/machine-config")).toEqual({ vcpu_count: 2, mem_size_mib: 256, smt: false, track_dirty_pages: false });
    expect(body("/network-interfaces/eth0")).toEqual({ iface_id: "eth0", host_dev_name: "mvt-1-0a1b2c3d", guest_mac: "02:fc:00:00:00:01" });
    expect(requests.at(-1)?.body).toEqual({ action_type: "InstanceStart" });
  });

  it("every boot variant is valid: diff tracking, no initrd, serial to a file, one vcpu", () => {
    for (const variant of [
      bootConfig({ trackDirtyPages: true }),
      bootConfig({ initrdPath: null }),
      bootConfig({ serialOutPath: "/serial.log", vcpus: 1 }),
      bootConfig({ vcpus: 3, memMib: 128 }),
    ]) {
      const requests = bootRequests(variant);
      expectValid(requests);
      if (variant.trackDirtyPages) expect(requests.find((r) => r.path === "/machine-config")?.body).toMatchObject({ track_dirty_pages: true });
      if (variant.initrdPath === null) expect(requests.find((r) => r.path === "/boot-source")?.body).not.toHaveProperty("initrd_path");
      if (variant.serialOutPath !== null) expect(requests.find((r) => r.path === "/serial")?.body).toEqual({ serial_out_path: "/serial.log" });
    }
  });

  it("refuses a launch the guest contract or firecracker cannot take", () => {
    expect(() => bootRequests(bootConfig({ vcpus: 33 }))).toThrow(/vcpus/);
    expect(() => bootRequests(bootConfig({ drives: bootConfig().drives.slice(1) }))).toThrow(/disks\.(root|data|secrets)/);
  });

  it("runtime, snapshot and restore requests are valid", () => {
    const requests = [
      pauseRequest(),
      resumeRequest(),
      snapshotCreateRequest("full", "/snap/memory.full", "/snap/vmstate.full"),
      snapshotCreateRequest("diff", "/snap/memory.diff", "/snap/vmstate.diff"),
      ctrlAltDelRequest(),
      flushMetricsRequest(),
      describeInstanceRequest(),
      versionRequest(),
      ...restoreRequests({
        logPath: "/l",
        metricsPath: "/m",
        memoryFile: "/snap/memory.full",
        stateFile: "/snap/vmstate.full",
        tapName: "mvt-1-0a1b2c3d",
        trackDirtyPages: true,
      }),
    ];
    expectValid(requests);
    expect(snapshotCreateRequest("diff", "/a", "/b").body).toMatchObject({ snapshot_type: "Diff" });
    const load = requests.at(-1);
    expect(load?.path).toBe("/snapshot/load");
    expect(load?.body).toMatchObject({ resume_vm: true, network_overrides: [{ iface_id: "eth0", host_dev_name: "mvt-1-0a1b2c3d" }] });
    // Exactly one of mem_backend and mem_file_path (the specification's rule, beyond what its schema can say).
    expect(load?.body).not.toHaveProperty("mem_file_path");
  });

  it("the answers the driver handles are the ones the specification lists for each operation", () => {
    for (const r of [...bootRequests(bootConfig({ serialOutPath: "/s" })), pauseRequest(), snapshotCreateRequest("full", "/a", "/b"), ...restoreRequests({ logPath: "/l", metricsPath: "/m", memoryFile: "/a", stateFile: "/b", tapName: "t", trackDirtyPages: false })]) {
      const op = spec.operation(r.method, r.path);
      expect(op?.statuses).toContain("204");
      expect(op?.statuses).toContain("default");
    }
    expect(spec.operation("GET", "/")?.statuses).toEqual(expect.arrayContaining(["200", "default"]));
    expect(spec.checkResponse("PUT", "/actions", 400, { fault_message: "bad" })).toEqual([]);
    expect(spec.checkResponse("GET", "/", 200, { app_name: "Firecracker", id: "i-1", state: "Paused", vmm_version: "1.17.0" })).toEqual([]);
    expect(spec.checkResponse("GET", "/", 200, { app_name: "Firecracker", id: "i-1", state: "Sleeping", vmm_version: "1" })).not.toEqual([]);
  });
});
