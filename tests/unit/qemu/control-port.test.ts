// The host side of the control port, against real FIFOs with this test standing in for QEMU and the guest: QEMU
// holds both FIFOs open read-write, reads requests from `control.in` and writes the guest's answers to `control.out`.

import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ExecResult, GuestChannel, GuestHook, VmLaunchSpec } from "../../../src/core/data-plane-ports.js";
import {
  createControlPortFifos,
  guestAnnouncedControlPort,
  hasControlPortFifos,
  parseAnswer,
  runHookOverControlPort,
  withControlPort,
} from "../../../src/runtime/qemu/control-port.js";
import { buildQemuArgv, controlPortFiles, type ControlPortFiles } from "../../../src/runtime/qemu/qemu-command.js";

let dir: string;
let files: ControlPortFiles;
const opened: { close(): void }[] = [];

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "mvm-control-port-"));
  files = controlPortFiles(dir);
  await createControlPortFifos(files);
});

afterEach(() => {
  for (const o of opened.splice(0)) o.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Opens the FIFOs the way QEMU does and answers each request line with `answer(line)` (null: stay silent). */
function fakeVmm(answer: (request: string) => string[] | null): { requests: string[] } {
  const requests: string[] = [];
  const inFd = openSync(files.toGuest, constants.O_RDWR | constants.O_NONBLOCK);
  const outFd = openSync(files.fromGuest, constants.O_RDWR);
  const reader = new Socket({ fd: inFd, readable: true, writable: false });
  let pending = "";
  reader.setEncoding("utf8");
  reader.on("data", (chunk: string) => {
    pending += chunk;
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      requests.push(line);
      for (const piece of answer(line) ?? []) writeSync(outFd, piece);
    }
  });
  opened.push({ close: () => (reader.destroy(), closeSync(outFd)) });
  return { requests };
}

const idOf = (request: string) => request.split(" ")[0]!;

describe("runHookOverControlPort", () => {
  it("sends one request line and returns the answer with its id, skipping other requests' answers", async () => {
    const vmm = fakeVmm((request) => {
      const id = idOf(request);
      // A stale answer, then ours in two pieces: lines are put together before they are matched.
      return ["0123456789abcdef 0 \n", `${id} 3 no sec`, "rets disk\n"];
    });
    const result = await runHookOverControlPort(files, "wake", ["1700000000"], 5_000);
    expect(result).toEqual({ exitCode: 3, stdout: "", stderr: "no secrets disk" });
    expect(vmm.requests).toHaveLength(1);
    expect(vmm.requests[0]).toMatch(/^[0-9a-f]{16} hook wake 1700000000$/);
  });

  it("fails when the guest does not answer in time", async () => {
    const vmm = fakeVmm(() => null);
    await expect(runHookOverControlPort(files, "sleep-prep", [], 200)).rejects.toThrow(/did not answer on the control port within 200 ms/);
    expect(vmm.requests).toHaveLength(1);
  });

  it("fails at once when no VMM holds the port, and leaves nothing pending behind", async () => {
    const stray: unknown[] = [];
    const onStray = (reason: unknown) => stray.push(reason);
    process.on("unhandledRejection", onStray);
    try {
      await expect(runHookOverControlPort(files, "wake", [], 100)).rejects.toThrow(/no VMM has it open/);
      // Past the timeout a forgotten wait would have rejected with nobody listening.
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(stray).toEqual([]);
    } finally {
      process.off("unhandledRejection", onStray);
    }
  });

  it("refuses files that are not FIFOs, writing nothing into them", async () => {
    const other = mkdtempSync(join(tmpdir(), "mvm-control-port-plain-"));
    try {
      const plain = controlPortFiles(other);
      writeFileSync(plain.toGuest, "");
      writeFileSync(plain.fromGuest, "");
      await expect(runHookOverControlPort(plain, "wake", [], 1_000)).rejects.toThrow(/control\.out is not a fifo/);
      // The answers' side a FIFO, the requests' side a plain file: nothing is written into it either.
      rmSync(plain.fromGuest);
      spawnSync("mkfifo", [plain.fromGuest]);
      await expect(runHookOverControlPort(plain, "wake", [], 1_000)).rejects.toThrow(/control\.in is not a fifo/);
      expect(readFileSync(plain.toGuest, "utf8")).toBe("");
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });

  it("refuses an argument that is not a plain word before sending anything", async () => {
    const vmm = fakeVmm(() => ["x 0\n"]);
    await expect(runHookOverControlPort(files, "wake", ["1 hook sleep-prep"], 1_000)).rejects.toThrow(/not a plain word/);
    await new Promise((r) => setTimeout(r, 50));
    expect(vmm.requests).toEqual([]);
  });
});

describe("parseAnswer", () => {
  it("takes only a well-formed line with the request's id", () => {
    expect(parseAnswer("abc1 0", "abc1")).toEqual({ status: 0, message: "" });
    expect(parseAnswer("abc1 127 unknown hook ready", "abc1")).toEqual({ status: 127, message: "unknown hook ready" });
    expect(parseAnswer("abc2 0", "abc1")).toBeNull();
    expect(parseAnswer("abc1", "abc1")).toBeNull();
    expect(parseAnswer("abc1 x", "abc1")).toBeNull();
    expect(parseAnswer("MVM-READY i-1", "abc1")).toBeNull();
  });
});

describe("which way a hook goes", () => {
  const target = (runDir?: string) => ({ guestIp: "10.0.0.2", netns: null, privateKeyPath: "/k", ...(runDir === undefined ? {} : { runDir }) });

  function sshStandIn(): GuestChannel & { hooks: GuestHook[] } {
    const hooks: GuestHook[] = [];
    return {
      hooks,
      exec: async (): Promise<ExecResult> => ({ exitCode: 0, stdout: "", stderr: "" }),
      runHook: async (_t, hook): Promise<ExecResult> => {
        hooks.push(hook);
        return { exitCode: 0, stdout: "over ssh", stderr: "" };
      },
    };
  }

  it("goes over SSH without a run directory, without the FIFOs, or when the guest never announced the port", async () => {
    const ssh = sshStandIn();
    const channel = withControlPort(ssh);
    expect((await channel.runHook(target(), "wake", [], { timeoutMs: 1_000 })).stdout).toBe("over ssh");
    const bare = mkdtempSync(join(tmpdir(), "mvm-control-port-bare-"));
    try {
      writeFileSync(join(bare, "serial.log"), "MVM-CONTROL /dev/vport0p1\n");
      expect((await channel.runHook(target(bare), "wake", [], { timeoutMs: 1_000 })).stdout).toBe("over ssh");
    } finally {
      rmSync(bare, { recursive: true, force: true });
    }
    writeFileSync(join(dir, "serial.log"), "[    0.1] booting\nMVM-READY i-1\n");
    expect((await channel.runHook(target(dir), "sleep-prep", [], { timeoutMs: 1_000 })).stdout).toBe("over ssh");
    expect(ssh.hooks).toEqual(["wake", "wake", "sleep-prep"]);
  });

  it("goes through the control port when the VM has it and the guest announced it", async () => {
    const ssh = sshStandIn();
    writeFileSync(join(dir, "serial.log"), "[    0.1] booting\nMVM-CONTROL /dev/vport0p1\nMVM-READY i-1\n");
    fakeVmm((request) => [`${idOf(request)} 0\n`]);
    const result = await withControlPort(ssh).runHook(target(dir), "wake", ["1"], { timeoutMs: 5_000 });
    expect(result).toEqual({ exitCode: 0, stdout: "", stderr: "" });
    expect(ssh.hooks).toEqual([]);
  });

  it("finds the announcement only at the start of a console line", async () => {
    writeFileSync(join(dir, "serial.log"), "user typed MVM-CONTROL here\n");
    expect(await guestAnnouncedControlPort(join(dir, "serial.log"))).toBe(false);
    writeFileSync(join(dir, "serial.log"), "MVM-CONTROL /dev/vport0p1\n");
    expect(await guestAnnouncedControlPort(join(dir, "serial.log"))).toBe(true);
    expect(await guestAnnouncedControlPort(join(dir, "missing.log"))).toBe(false);
  });

  it("knows a run directory by its FIFOs: regular files do not count", () => {
    expect(hasControlPortFifos(files)).toBe(true);
    const other = mkdtempSync(join(tmpdir(), "mvm-control-port-files-"));
    try {
      const f = controlPortFiles(other);
      writeFileSync(f.toGuest, "");
      writeFileSync(f.fromGuest, "");
      expect(hasControlPortFifos(f)).toBe(false);
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });
});

describe("control port argv", () => {
  const spec: VmLaunchSpec = {
    instanceId: "i-0123abcd",
    vcpus: 1,
    memMib: 256,
    kernelPath: "/r/vmlinux",
    initrdPath: null,
    kernelArgs: [],
    disks: [{ role: "root", path: "/i/root.qcow2", format: "qcow2", readOnly: false }],
    tap: { name: "tn1i2", mac: "02:fc:00:01:00:02" },
    runDir: "/i/run,x",
    netns: null,
    cgroupProcsFiles: [],
    bootTimeoutMs: 1000,
  };

  it("adds a virtio-serial port named org.mvm.control on the run directory's FIFOs, and nothing without it", () => {
    const without = buildQemuArgv({ binary: "qemu", spec, accel: "tcg", hostTscKhz: 2_000_000 });
    const withPort = buildQemuArgv({ binary: "qemu", spec, accel: "tcg", hostTscKhz: 2_000_000, controlPort: true });
    expect(withPort.filter((a) => !without.includes(a))).toEqual([
      "virtio-serial-device,id=control0",
      "pipe,id=control,path=/i/run,,x/control",
      "virtserialport,bus=control0.0,chardev=control,name=org.mvm.control",
    ]);
    expect(withPort.length - without.length).toBe(6);
    expect(without.join(" ")).not.toMatch(/virtio-serial|id=control/);
  });
});
