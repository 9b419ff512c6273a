// The QEMU adapter against real QEMU (TCG here): boot to the guest's ready line, pause/resume through QMP, shutdown
// through the ACPI power button and its fallbacks, failure and timeout paths, cgroup placement and the network
// namespace. Every VMM runs in a namespace the test creates; only processes started here are ever signalled.

import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, rmdir, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { VmLaunchSpec, Vmm, VmmProcess } from "../../../src/core/data-plane-ports.js";
import { MvmError } from "../../../src/core/errors.js";
import { isSameProcess, readProcNetNamespace } from "../../../src/runtime/process/proc-stat.js";
import { readVmmPidFile } from "../../../src/runtime/process/spawn-vmm.js";
import { terminateProcess } from "../../../src/runtime/process/terminate.js";
import { probeKvm } from "../../../src/runtime/qemu/kvm-probe.js";
import { qemuRunFiles } from "../../../src/runtime/qemu/qemu-command.js";
import { createQemuVmm } from "../../../src/runtime/qemu/qemu-vmm.js";
import { withQmp } from "../../../src/runtime/qemu/qmp-client.js";
import { ensureQemuTestFixture } from "./qemu-fixture.js";
import type { QemuTestFixture } from "./qemu-fixture.js";

const exec = promisify(execFile);

async function hasQemu(): Promise<boolean> {
  try {
    await exec("qemu-system-x86_64", ["--version"]);
    return true;
  } catch {
    return false;
  }
}

const skipReason =
  process.getuid?.() !== 0 ? "needs root (network namespaces, cgroups)" : !(await hasQemu()) ? "qemu-system-x86_64 is not installed" : null;
if (skipReason !== null) console.warn(`skipping qemu e2e: ${skipReason}`);

const BOOT_TIMEOUT_MS = 60_000;
let fixture: QemuTestFixture;
let workDir: string;
let vmm: Vmm;
let nextInstance = 0;
/** Every VMM a test started, so afterAll can end what a failed test left running. */
const started: VmmProcess[] = [];
const namespaces: string[] = [];
const bootTimesMs: number[] = [];

interface Sandbox {
  spec: VmLaunchSpec;
  netns: string;
}

/** A netns holding a TAP, three disks and a run directory; `mvm.test=<mode>` tells the fixture's init what to do. */
async function sandbox(mode: string, overrides: Partial<VmLaunchSpec> = {}): Promise<Sandbox> {
  const n = nextInstance++;
  const netns = `mvm-qt-${process.pid}-${n}`;
  const tap = `mvmqt${n}`;
  namespaces.push(netns);
  await exec("ip", ["netns", "add", netns]);
  await exec("ip", ["-n", netns, "link", "set", "lo", "up"]);
  await exec("ip", ["-n", netns, "tuntap", "add", "dev", tap, "mode", "tap"]);
  await exec("ip", ["-n", netns, "link", "set", tap, "up"]);
  const dir = join(workDir, `vm${n}`);
  await mkdir(join(dir, "volumes"), { recursive: true });
  const disk = async (name: string, mib: number): Promise<string> => {
    const path = join(dir, "volumes", name);
    await writeFile(path, "");
    await truncate(path, mib * 1024 * 1024);
    return path;
  };
  const instanceId = `i-${(0xa0000000 + n).toString(16)}`;
  const spec: VmLaunchSpec = {
    instanceId,
    vcpus: 1,
    memMib: 256,
    kernelPath: fixture.kernel,
    initrdPath: fixture.initramfs,
    kernelArgs: [`mvm.instance=${instanceId}`, `mvm.test=${mode}`],
    disks: [
      { role: "root", path: await disk("root.raw", 8), format: "raw", readOnly: false },
      { role: "data", path: await disk("data.raw", 4), format: "raw", readOnly: false },
      { role: "secrets", path: await disk("secrets.raw", 1), format: "raw", readOnly: true },
    ],
    tap: { name: tap, mac: `52:54:00:00:00:${(16 + n).toString(16).padStart(2, "0")}` },
    runDir: join(dir, "run"),
    netns,
    cgroupProcsFiles: [],
    bootTimeoutMs: BOOT_TIMEOUT_MS,
    ...overrides,
  };
  return { spec, netns };
}

async function boot(spec: VmLaunchSpec): Promise<VmmProcess> {
  const t0 = performance.now();
  const proc = await vmm.boot(spec);
  bootTimesMs.push(performance.now() - t0);
  started.push(proc);
  return proc;
}

/** The pid the launcher recorded, for boots that failed and so returned nothing. */
async function launchedPid(spec: VmLaunchSpec): Promise<{ pid: number; startTime: number }> {
  const recorded = await readVmmPidFile(qemuRunFiles(spec.runDir).launcherPidFile);
  if (recorded === null) throw new Error("no pid file");
  return recorded;
}

async function status(proc: VmmProcess): Promise<string | undefined> {
  return withQmp(proc.apiSocket, async (q) => (await q.execute<{ status?: string }>("query-status")).status);
}

describe.skipIf(skipReason !== null)("qemu vmm (real qemu, tcg)", () => {
  beforeAll(async () => {
    fixture = await ensureQemuTestFixture();
    workDir = await mkdtemp(join(tmpdir(), "mvm-qemu-e2e-"));
    vmm = createQemuVmm({ accel: "tcg" });
  }, 300_000);

  afterAll(async () => {
    for (const proc of started) await terminateProcess(proc.pid, proc.pidStartTime).catch(() => undefined);
    for (const ns of namespaces) await exec("ip", ["netns", "del", ns]).catch(() => undefined);
    if (workDir) await rm(workDir, { recursive: true, force: true });
    if (bootTimesMs.length > 0) {
      console.log(`qemu tcg boot to MVM-READY, ms: ${bootTimesMs.map((t) => Math.round(t)).join(", ")}`);
    }
  });

  it("boots to the ready line, pauses, resumes and powers off through the acpi button", async () => {
    const { spec, netns } = await sandbox("ready");
    const proc = await boot(spec);
    expect(await vmm.isAlive(proc)).toBe(true);
    expect(proc.hypervisor).toBe("qemu");

    const serial = await readFile(proc.serialLog, "utf8");
    expect(serial).toContain(`MVM-READY ${spec.instanceId}`);
    // Fixed device order: root, data, secrets are vda, vdb, vdc (sizes in 512-byte sectors); only secrets is read-only.
    expect(serial).toMatch(/MVM-DISKS vda:16384:0 vdb:8192:0 vdc:2048:1/);
    expect(serial).toContain(`MVM-MAC ${spec.tap.mac}`);

    // It runs in the namespace, in its own session, and its pid file names it.
    const nsInode = (await stat(`/run/netns/${netns}`)).ino;
    expect(await readProcNetNamespace(proc.pid)).toBe(`net:[${nsInode}]`);
    const procStat = await readFile(`/proc/${proc.pid}/stat`, "utf8");
    const session = Number(procStat.slice(procStat.lastIndexOf(")") + 2).split(" ")[3]);
    expect(session).toBe(proc.pid);
    expect(await readVmmPidFile(qemuRunFiles(spec.runDir).launcherPidFile)).toEqual({
      pid: proc.pid,
      startTime: proc.pidStartTime,
    });
    expect((await stat(spec.runDir)).mode & 0o777).toBe(0o700);

    await vmm.pause(proc);
    expect(await status(proc)).toBe("paused");
    await vmm.pause(proc);
    expect(await status(proc)).toBe("paused");
    await vmm.resume(proc);
    expect(await status(proc)).toBe("running");

    const t0 = performance.now();
    await vmm.shutdown(proc, 20_000);
    const shutdownMs = performance.now() - t0;
    console.log(`qemu shutdown through the acpi power button: ${Math.round(shutdownMs)} ms`);
    expect(await vmm.isAlive(proc)).toBe(false);
    expect(await isSameProcess(proc.pid, proc.pidStartTime)).toBe(false);
    expect(await readFile(proc.serialLog, "utf8")).toContain("MVM-POWER");
    // Shutting down what is already gone is no error, and pausing it is refused with a clear reason.
    await vmm.shutdown(proc, 1_000);
    await expect(vmm.pause(proc)).rejects.toThrow(/pause: the vmm \(pid \d+\) is not running/);
  });

  it("places the vmm in the given cgroups before it runs, and enters the namespace after", async () => {
    const groups: string[] = [];
    const controllers = ["memory", "pids"];
    const v2 = await stat("/sys/fs/cgroup/cgroup.controllers").then(
      () => true,
      () => false,
    );
    const dirs = v2
      ? [`/sys/fs/cgroup/mvm-test-${process.pid}`]
      : controllers.map((c) => `/sys/fs/cgroup/${c}/mvm-test-${process.pid}`);
    let proc: VmmProcess | null = null;
    try {
      for (const d of dirs) {
        await mkdir(d);
        groups.push(d);
      }
      const { spec } = await sandbox("ready", { cgroupProcsFiles: dirs.map((d) => `${d}/cgroup.procs`) });
      proc = await boot(spec);
      const membership = await readFile(`/proc/${proc.pid}/cgroup`, "utf8");
      if (v2) {
        expect(membership).toContain(`0::/mvm-test-${process.pid}`);
      } else {
        for (const c of controllers) expect(membership).toMatch(new RegExp(`^\\d+:${c}:/mvm-test-${process.pid}$`, "m"));
      }
      const procs = (await readFile(`${dirs[0]}/cgroup.procs`, "utf8")).split("\n").filter(Boolean).map(Number);
      expect(procs).toContain(proc.pid);
      await vmm.shutdown(proc, 20_000);
      expect(await vmm.isAlive(proc)).toBe(false);
    } finally {
      if (proc !== null) await terminateProcess(proc.pid, proc.pidStartTime).catch(() => undefined);
      // A group stays busy until the kernel has released the exited VMM from it: retried, never left behind.
      for (const d of groups.reverse()) await removeCgroupDir(d);
    }
  });

  it("fails fast with the guest's MVM-FAILED line and leaves nothing running", async () => {
    const { spec } = await sandbox("fail");
    const t0 = performance.now();
    const error = await vmm.boot(spec).then(
      () => null,
      (e: unknown) => e,
    );
    const elapsed = performance.now() - t0;
    expect(error).toBeInstanceOf(MvmError);
    expect((error as MvmError).kind).toBe("unavailable");
    expect((error as Error).message).toContain("the guest reported failure: MVM-FAILED test init was asked to fail");
    expect((error as Error).message).toContain("serial console (last lines):");
    expect(elapsed).toBeLessThan(BOOT_TIMEOUT_MS / 2);
    const { pid, startTime } = await launchedPid(spec);
    expect(await isSameProcess(pid, startTime)).toBe(false);
  });

  it("kills the vmm when the guest does not report ready in time", async () => {
    const { spec } = await sandbox("hang", { bootTimeoutMs: 4_000 });
    await expect(vmm.boot(spec)).rejects.toThrow(/did not report ready within 4000 ms/);
    const { pid, startTime } = await launchedPid(spec);
    expect(await isSameProcess(pid, startTime)).toBe(false);
  });

  it("reports a vmm that exits before the guest is ready", async () => {
    const { spec } = await sandbox("exit");
    await expect(vmm.boot(spec)).rejects.toThrow(/qemu exited before the guest reported ready/);
  });

  it("reports qemu's own error when it cannot start, e.g. a missing kernel", async () => {
    const { spec } = await sandbox("ready", { kernelPath: join(workDir, "no-such-kernel") });
    await expect(vmm.boot(spec)).rejects.toThrow(/qemu log \(last lines\):[\s\S]*no-such-kernel/);
  });

  it("falls back to quit when the guest ignores the power button", async () => {
    const { spec } = await sandbox("deaf");
    const proc = await boot(spec);
    const t0 = performance.now();
    await vmm.shutdown(proc, 1_500);
    const elapsed = performance.now() - t0;
    expect(await vmm.isAlive(proc)).toBe(false);
    expect(elapsed).toBeGreaterThanOrEqual(1_400);
    expect(await readFile(proc.serialLog, "utf8")).not.toContain("MVM-POWER");
  });

  it("refuses a second vmm for a run directory whose vmm still runs", async () => {
    const { spec } = await sandbox("deaf");
    const proc = await boot(spec);
    await expect(vmm.boot(spec)).rejects.toMatchObject({ kind: "failed_precondition" });
    expect(await vmm.isAlive(proc)).toBe(true);
    expect(await status(proc)).toBe("running");
    await vmm.shutdown(proc, 0);
    expect(await vmm.isAlive(proc)).toBe(false);
  });

  it("works with a run directory too long for a unix socket address", async () => {
    const long = join(workDir, "d".repeat(60), "e".repeat(60));
    const { spec } = await sandbox("ready", { runDir: long });
    expect(Buffer.byteLength(qemuRunFiles(long).qmpSocket)).toBeGreaterThan(107);
    const proc = await boot(spec);
    await vmm.pause(proc);
    await vmm.resume(proc);
    await vmm.shutdown(proc, 20_000);
    expect(await vmm.isAlive(proc)).toBe(false);
  });

  it("refuses to boot under a kvm that the probe found unusable, and reports capabilities", async () => {
    const kvm = await probeKvm();
    const caps = await createQemuVmm({ accel: "auto" }).capabilities();
    expect(caps.kind).toBe("qemu");
    expect(caps.available).toBe(true);
    expect(caps.version).toMatch(/^\d+\.\d+(\.\d+)?$/);
    expect(caps.kvmUsable).toBe(kvm.usable);
    expect(caps.diffSnapshots).toBe(false);
    console.log(`kvm probe on this host: ${kvm.usable ? "usable" : "not usable"} (${kvm.reason})`);
    if (!kvm.usable) {
      expect(caps.notes.join("\n")).toContain("kvm not usable");
      const { spec } = await sandbox("ready");
      await expect(createQemuVmm({ accel: "kvm" }).boot(spec)).rejects.toThrow(/accel: kvm was required but is not usable/);
    }
  });

  it("the probe itself recognises a guest that runs (tcg as the positive control) and a qemu that does not", async () => {
    expect(await probeKvm({}, "tcg")).toMatchObject({ usable: true });
    const broken = await probeKvm({ binary: "/bin/false" }, "tcg");
    expect(broken.usable).toBe(false);
    expect(broken.reason).toMatch(/exited with status 1 without output/);
    const absent = await probeKvm({ binary: join(workDir, "no-such-qemu") }, "tcg");
    expect(absent).toMatchObject({ usable: false });
    expect(absent.reason).toMatch(/the probe could not run: .*ENOENT/);
    const missing = await probeKvm({ devicePath: join(workDir, "no-kvm") });
    expect(missing).toMatchObject({ usable: false });
    expect(missing.reason).toContain("no-kvm is missing");
  });
});

async function removeCgroupDir(dir: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await rmdir(dir);
      return;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return;
      if (code !== "EBUSY" || Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
