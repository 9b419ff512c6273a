// The adapter's whole lifecycle (boot, pause, snapshot, resume, shutdown, restore from a full and from a diff) run
// against the API TEST DOUBLE started as the `firecracker` program; every request it received is then validated
// against firecracker.yaml.

import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { VmLaunchSpec } from "../../../src/core/data-plane-ports.js";
import { createFirecrackerVmm } from "../../../src/runtime/firecracker/firecracker-vmm.js";
import { FirecrackerSpec } from "./firecracker-spec.js";

const spec = new FirecrackerSpec();
const DOUBLE = join(import.meta.dirname, "firecracker-test-double.mjs");
let dir: string;
let binary: string;

function elfVmlinuxHeader(): Buffer {
  const head = Buffer.alloc(64);
  Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]).copy(head);
  head.writeUInt16LE(2, 16);
  head.writeUInt16LE(0x3e, 18);
  return head;
}

async function launchSpec(name: string): Promise<VmLaunchSpec> {
  const runDir = join(dir, name, "run");
  await mkdir(join(dir, name), { recursive: true });
  const disk = async (file: string) => {
    const path = join(dir, name, file);
    await writeFile(path, "");
    await truncate(path, 1024 * 1024);
    return path;
  };
  return {
    instanceId: "i-0a1b2c3d",
    vcpus: 1,
    memMib: 1,
    kernelPath: join(dir, "vmlinux"),
    initrdPath: join(dir, "initrd"),
    kernelArgs: ["mvm.instance=i-0a1b2c3d"],
    disks: [
      { role: "root", path: await disk("root.img"), format: "raw", readOnly: false },
      { role: "data", path: await disk("data.img"), format: "raw", readOnly: true },
      { role: "secrets", path: await disk("secrets.img"), format: "raw", readOnly: true },
    ],
    tap: { name: "tap-test0", mac: "02:fc:00:00:00:01" },
    runDir,
    netns: null,
    cgroupProcsFiles: [],
    bootTimeoutMs: 10_000,
  };
}

async function recorded(runDir: string): Promise<{ method: string; path: string; body: unknown }[]> {
  const text = await readFile(join(runDir, "requests.jsonl"), "utf8");
  return text.trim().split("\n").map((l) => JSON.parse(l) as { method: string; path: string; body: unknown });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-fc-vmm-"));
  binary = join(dir, "firecracker");
  await writeFile(binary, `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(DOUBLE)} "$@"\n`);
  await chmod(binary, 0o755);
  await writeFile(join(dir, "vmlinux"), elfVmlinuxHeader());
  await writeFile(join(dir, "initrd"), "initrd");
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("firecracker vmm lifecycle against the test double", () => {
  it("boots, pauses, snapshots, resumes, shuts down, restores from full and from a merged diff", async () => {
    const vmm = createFirecrackerVmm({ binary, diffSnapshots: true, kvmProbe: async () => ({ usable: true, reason: "test" }) });
    const caps = await vmm.capabilities();
    expect(caps).toMatchObject({ kind: "firecracker", available: true, version: "1.17.0-test-double", diffSnapshots: true });

    const first = await launchSpec("boot");
    const proc = await vmm.boot(first);
    expect(await vmm.isAlive(proc)).toBe(true);
    expect(await readFile(proc.serialLog, "utf8")).toContain("MVM-READY i-0a1b2c3d");
    await vmm.pause(proc);
    const snapDir = join(dir, "snap");
    await mkdir(snapDir);
    await expect(vmm.snapshot(proc, snapDir, "diff")).rejects.toThrow(/diff needs a full snapshot/);
    const full = await vmm.snapshot(proc, snapDir, "full");
    expect(full).toEqual({ type: "full", memoryFile: join(snapDir, "memory.full"), stateFile: join(snapDir, "vmstate.full"), baseMemoryFile: null });
    await vmm.resume(proc);
    await expect(vmm.snapshot(proc, snapDir, "full")).rejects.toThrow(/must be paused/);
    const overhead = vmm.overhead(proc);
    expect(Object.keys(overhead?.mvmMs ?? {})).toEqual(expect.arrayContaining(["boot", "pause", "snapshot_full", "resume"]));
    expect(overhead?.firecracker?.latenciesUs).toMatchObject({ pause_vm: 42, full_create_snapshot: 42 });
    await vmm.shutdown(proc, 5_000);
    expect(await vmm.isAlive(proc)).toBe(false);
    expect(existsSync(proc.apiSocket)).toBe(false);
    const bootRequests = await recorded(first.runDir);

    const second = await launchSpec("restore");
    const restored = await vmm.restore(second, full);
    await vmm.pause(restored);
    const diffDir = join(dir, "snap-diff");
    await mkdir(diffDir);
    const diff = await vmm.snapshot(restored, diffDir, "diff");
    expect(diff.baseMemoryFile).toBe(full.memoryFile);
    await vmm.shutdown(restored, 0);
    const restoreRequests = await recorded(second.runDir);

    const third = await launchSpec("restore-diff");
    const fromDiff = await vmm.restore(third, diff);
    const merged = await readFile(full.memoryFile);
    expect(merged.subarray(0, 9).toString()).toBe("FULL-PAGE");
    expect(merged.subarray(4096, 4105).toString()).toBe("DIFF-PAGE");
    expect(merged.subarray(2 * 4096, 2 * 4096 + 9).toString()).toBe("FULL-PAGE");
    // A dirtied page of zeros replaces the base's content: a hole would not have.
    expect(merged.subarray(3 * 4096, 4 * 4096).every((b) => b === 0)).toBe(true);
    await vmm.shutdown(fromDiff, 5_000);
    const diffRequests = await recorded(third.runDir);

    const all = [...bootRequests, ...restoreRequests, ...diffRequests];
    expect(all.flatMap((r) => spec.check(r))).toEqual([]);
    const seen = new Set(all.map((r) => `${r.method} ${r.path}${r.path === "/actions" ? ` ${(r.body as { action_type: string }).action_type}` : ""}`));
    expect([...seen]).toEqual(
      expect.arrayContaining([
        "PUT /machine-config",
        "PUT /boot-source",
        "PUT /drives/root",
        "PUT /network-interfaces/eth0",
        "PUT /actions InstanceStart",
        "PATCH /vm",
        "PUT /snapshot/create",
        "PUT /snapshot/load",
        "PUT /actions SendCtrlAltDel",
        "GET /",
      ]),
    );
    expect(restoreRequests.filter((r) => r.method === "PUT").map((r) => r.path).slice(0, 3)).toEqual(["/logger", "/metrics", "/snapshot/load"]);
  });

  it("refuses qcow2 disks, unsuitable kernels and strict seccomp without a filter before starting anything", async () => {
    const vmm = createFirecrackerVmm({ binary, kvmProbe: async () => ({ usable: true, reason: "test" }) });
    const base = await launchSpec("refusals");
    await expect(vmm.boot({ ...base, disks: base.disks.map((d) => (d.role === "root" ? { ...d, format: "qcow2" as const } : d)) })).rejects.toThrow(
      /disks\.root: firecracker needs raw disk images/,
    );
    const bz = join(dir, "bzImage");
    const image = Buffer.alloc(1024);
    image.write("HdrS", 0x202, "latin1");
    await writeFile(bz, image);
    await expect(vmm.boot({ ...base, kernelPath: bz })).rejects.toThrow(/compressed bzImage/);
    await expect(vmm.boot({ ...base, seccompPolicy: "strict" })).rejects.toThrow(/seccomp strict: no filter configured/);
    expect(existsSync(join(base.runDir, "requests.jsonl"))).toBe(false);
  });

  it("reports firecracker unavailable without KVM", async () => {
    const vmm = createFirecrackerVmm({ binary, kvmProbe: async () => ({ usable: false, reason: "no kvm here" }) });
    const caps = await vmm.capabilities();
    expect(caps.available).toBe(false);
    expect(caps.notes.join(" ")).toMatch(/kvm not usable \(no kvm here\)/);
  });
});
