// The QEMU adapter's paths that need no QEMU: input validation before anything starts, a missing binary, a VMM that
// is already gone. Booting real guests is in tests/e2e/qemu.

import { spawn } from "node:child_process";
import { access, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { VmLaunchSpec, VmmProcess } from "../../../src/core/data-plane-ports.js";
import { readProcStartTime } from "../../../src/runtime/process/proc-stat.js";
import { createQemuVmm } from "../../../src/runtime/qemu/qemu-vmm.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-qemu-unit-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function spec(overrides: Partial<VmLaunchSpec> = {}): VmLaunchSpec {
  return {
    instanceId: "i-0123abcd",
    vcpus: 1,
    memMib: 128,
    kernelPath: "/k/vmlinux",
    initrdPath: null,
    kernelArgs: [],
    disks: [{ role: "root", path: "/d/root.qcow2", format: "qcow2", readOnly: false }],
    tap: { name: "tap0", mac: "52:54:00:00:00:01" },
    runDir: join(dir, "run"),
    netns: null,
    cgroupProcsFiles: [],
    bootTimeoutMs: 5_000,
    ...overrides,
  };
}

/** A VmmProcess for a process that has exited. */
async function goneProcess(): Promise<VmmProcess> {
  const child = spawn("sleep", ["30"], { stdio: "ignore" });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const pid = child.pid as number;
  const startTime = (await readProcStartTime(pid)) as number;
  child.kill("SIGKILL");
  await exited;
  return { hypervisor: "qemu", pid, pidStartTime: startTime, apiSocket: join(dir, "qmp.sock"), serialLog: join(dir, "serial.log") };
}

describe("createQemuVmm without qemu", () => {
  it("rejects an invalid spec before it creates or starts anything", async () => {
    const vmm = createQemuVmm({ accel: "tcg", binary: join(dir, "no-qemu") });
    await expect(vmm.boot(spec({ tap: { name: "tap0", mac: "bad" }, vcpus: 0 }))).rejects.toMatchObject({
      kind: "invalid",
      violations: expect.arrayContaining([
        { field: "tap.mac", rule: expect.stringContaining("unicast mac") },
        { field: "vcpus", rule: "must be an integer from 1 to 255" },
      ]),
    });
    await expect(access(join(dir, "run"))).rejects.toThrow();
  });

  it("reports a missing binary as unavailable, and refuses a required kvm it cannot probe", async () => {
    const vmm = createQemuVmm({ accel: "kvm", binary: join(dir, "no-qemu") });
    const caps = await vmm.capabilities();
    expect(caps).toMatchObject({ kind: "qemu", available: false, version: null, kvmUsable: false, diffSnapshots: false });
    expect(caps.notes.join("\n")).toContain("no-qemu: not found or did not answer --version");
    await expect(vmm.boot(spec())).rejects.toThrow(/accel: kvm was required but is not usable/);
  });

  it("treats a vmm that is gone as not alive, shuts it down as a no-op and refuses to pause or resume it", async () => {
    const vmm = createQemuVmm({ accel: "tcg" });
    const gone = await goneProcess();
    expect(await vmm.isAlive(gone)).toBe(false);
    await vmm.shutdown(gone, 1_000);
    await expect(vmm.pause(gone)).rejects.toMatchObject({ kind: "failed_precondition" });
    await expect(vmm.resume(gone)).rejects.toThrow(/resume: the vmm \(pid \d+\) is not running/);
  });
});
