// The QEMU adapter's paths that need no QEMU: input validation before anything starts, a missing binary, a VMM that
// is already gone, which launcher a restore runs QEMU as (a stand-in script plays QEMU). Booting real guests is in
// tests/e2e/qemu.

import { spawn } from "node:child_process";
import { access, mkdtemp, readFile, readdir, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Vmm, VmLaunchSpec, VmmProcess } from "../../../src/core/data-plane-ports.js";
import { readProcStartTime } from "../../../src/runtime/process/proc-stat.js";
import { VMM_LAUNCHER_SCRIPT } from "../../../src/runtime/process/spawn-vmm.js";
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

describe("restore from a parked launcher", () => {
  /** A stand-in QEMU that records the pid it runs as, then exits (the restore then fails at QMP, as it should). */
  async function recordingQemu(): Promise<{ binary: string; ranAs: () => Promise<number | null> }> {
    const binary = join(dir, "fake-qemu");
    const record = join(dir, "ran-as");
    await writeFile(binary, `#!/bin/sh\necho $$ > '${record}'\nexit 1\n`, { mode: 0o755 });
    return { binary, ranAs: async () => (await readFile(record, "utf8").then((t) => Number(t.trim()), () => null)) };
  }

  /** Pids of this process's launchers (their shell runs the launcher script) whose working directory is `cwd`. */
  async function parkedIn(cwd: string): Promise<number[]> {
    const pids: number[] = [];
    for (const entry of await readdir("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "");
      const where = await readlink(`/proc/${entry}/cwd`).catch(() => "");
      const stat = await readFile(`/proc/${entry}/stat`, "utf8").catch(() => "");
      const parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (cmdline.includes(VMM_LAUNCHER_SCRIPT) && where === cwd && parent === process.pid) pids.push(Number(entry));
    }
    return pids;
  }

  const adapters: Vmm[] = [];
  afterEach(async () => {
    for (const vmm of adapters.splice(0)) await vmm.close?.();
  });

  const snapshot = () => ({ type: "full" as const, memoryFile: join(dir, "memory.mig"), stateFile: null, baseMemoryFile: null });

  /** Polls `read` until it gives a non-empty list (the launcher enters its directory once it reads where to go). */
  async function found(read: () => Promise<number[]>): Promise<number[]> {
    for (let i = 0; i < 500; i++) {
      const pids = await read();
      if (pids.length > 0) return pids;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    return [];
  }

  /** An adapter on the stand-in QEMU with a launcher parked for `launch`, and that launcher's pid. */
  async function withParkedLauncher() {
    const qemu = await recordingQemu();
    const vmm = createQemuVmm({ accel: "tcg", binary: qemu.binary, qmpTimeoutMs: 500 });
    adapters.push(vmm);
    const launch = spec({ bootTimeoutMs: 1_000 });
    await vmm.prepareRestore!({ runDir: launch.runDir, cgroupProcsFiles: [] });
    const [parked] = await found(() => parkedIn(launch.runDir));
    return { qemu, vmm, launch, parked };
  }

  it("runs QEMU as the parked launcher, which joined its groups before the restore", async () => {
    const { qemu, vmm, launch, parked } = await withParkedLauncher();
    expect(parked).toBeGreaterThan(0);
    await expect(vmm.restore(launch, snapshot())).rejects.toThrow(/qemu exited while loading the snapshot|restoring i-0123abcd/);
    expect(await qemu.ranAs()).toBe(parked);
  });

  it("starts a fresh launcher when the parked one is gone, and discardPrepared ends one no restore took", async () => {
    const { qemu, vmm, launch, parked } = await withParkedLauncher();
    process.kill(parked!, "SIGKILL");
    while ((await readProcStartTime(parked!)) !== null) await new Promise((resolve) => setTimeout(resolve, 10));
    await expect(vmm.restore(launch, snapshot())).rejects.toThrow(/restoring i-0123abcd/);
    const ran = await qemu.ranAs();
    expect(ran).not.toBeNull();
    expect(ran).not.toBe(parked);

    await vmm.prepareRestore!({ runDir: launch.runDir, cgroupProcsFiles: [] });
    const [again] = await found(() => parkedIn(launch.runDir));
    await vmm.discardPrepared!(launch.runDir);
    for (let i = 0; i < 200 && (await readProcStartTime(again!)) !== null; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(await readProcStartTime(again!)).toBeNull();
  });

  it("keeps a standby launcher after a restore took one, which the next restore runs QEMU as; close ends it", async () => {
    const { qemu, vmm, launch, parked } = await withParkedLauncher();
    await expect(vmm.restore(launch, snapshot())).rejects.toThrow(/restoring i-0123abcd/);
    expect(await qemu.ranAs()).toBe(parked);
    // The first launcher was started for the wake; the next one is started after it, ahead of the next wake, and
    // waits in no directory of an instance.
    const [standby] = await found(() => parkedIn("/"));
    expect(standby).toBeGreaterThan(0);
    await vmm.prepareRestore!({ runDir: launch.runDir, cgroupProcsFiles: [] });
    expect(await found(() => parkedIn(launch.runDir))).toEqual([standby]);
    await expect(vmm.restore(launch, snapshot())).rejects.toThrow(/restoring i-0123abcd/);
    expect(await qemu.ranAs()).toBe(standby);

    const [next] = await found(() => parkedIn("/"));
    expect(next).not.toBe(standby);
    await vmm.prepareRestore!({ runDir: join(dir, "other"), cgroupProcsFiles: [] });
    const [placed] = await found(() => parkedIn(join(dir, "other")));
    expect(placed).toBe(next);
    const [waiting] = await found(() => parkedIn("/"));
    expect(waiting).toBeGreaterThan(0);
    await vmm.close!();
    // Both the launcher parked for "other" and the standby are ended.
    for (const pid of [placed!, waiting!]) {
      for (let i = 0; i < 200 && (await readProcStartTime(pid)) !== null; i++) await new Promise((resolve) => setTimeout(resolve, 10));
      expect(await readProcStartTime(pid)).toBeNull();
    }
    // No standby is started after close (the refill that follows each prepared restore).
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect(await parkedIn("/")).toEqual([]);
  });
});
