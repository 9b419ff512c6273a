import { describe, expect, it } from "vitest";
import type { VmLaunchSpec } from "../../../src/core/data-plane-ports.js";
import { MvmError } from "../../../src/core/errors.js";
import {
  buildQemuArgv,
  guestKernelCmdline,
  optionValue,
  qemuRunFiles,
} from "../../../src/runtime/qemu/qemu-command.js";

function spec(overrides: Partial<VmLaunchSpec> = {}): VmLaunchSpec {
  return {
    instanceId: "i-0123abcd",
    vcpus: 2,
    memMib: 512,
    kernelPath: "/var/lib/mvm/revisions/r1/vmlinux",
    initrdPath: "/var/lib/mvm/revisions/r1/initrd.cpio",
    kernelArgs: ["ip=10.240.0.2::10.240.0.1:255.255.255.0::eth0:off", "mvm.instance=i-0123abcd"],
    disks: [
      { role: "root", path: "/d/root.qcow2", format: "qcow2", readOnly: false },
      { role: "data", path: "/d/data.ext4", format: "raw", readOnly: false },
      { role: "secrets", path: "/d/secrets.ext4", format: "raw", readOnly: true },
    ],
    tap: { name: "mvt-1-2", mac: "52:54:00:AB:CD:EF" },
    runDir: "/var/lib/mvm/t/p/i-0123abcd/run",
    netns: null,
    cgroupProcsFiles: [],
    bootTimeoutMs: 30_000,
    ...overrides,
  };
}

/** The value that follows `flag` each time it occurs. */
function valuesOf(argv: string[], flag: string): string[] {
  return argv.flatMap((a, i) => (a === flag ? [argv[i + 1] as string] : []));
}

function single(argv: string[], flag: string): string {
  const values = valuesOf(argv, flag);
  expect(values).toHaveLength(1);
  return values[0] as string;
}

const tcg = (s: VmLaunchSpec = spec()) => buildQemuArgv({ binary: "qemu-system-x86_64", spec: s, accel: "tcg", hostTscKhz: 2_596_102 });
const kvm = (s: VmLaunchSpec = spec()) => buildQemuArgv({ binary: "/usr/bin/qemu-system-x86_64", spec: s, accel: "kvm", hostTscKhz: 2_596_102 });

describe("buildQemuArgv", () => {
  it("builds a microvm with the machine, memory, cpus and isolation flags", () => {
    const argv = tcg();
    expect(argv[0]).toBe("qemu-system-x86_64");
    expect(single(argv, "-M")).toBe("microvm,rtc=on");
    expect(single(argv, "-m")).toBe("512M");
    expect(single(argv, "-smp")).toBe("2");
    expect(single(argv, "-name")).toBe("i-0123abcd");
    expect(single(argv, "-display")).toBe("none");
    for (const flag of ["-no-reboot", "-nodefaults", "-no-user-config"]) expect(argv).toContain(flag);
    expect(single(argv, "-kernel")).toBe("/var/lib/mvm/revisions/r1/vmlinux");
    expect(single(argv, "-initrd")).toBe("/var/lib/mvm/revisions/r1/initrd.cpio");
    expect(single(argv, "-pidfile")).toBe("/var/lib/mvm/t/p/i-0123abcd/run/qemu.pid");
  });

  it("confines qemu with seccomp unless told not to", () => {
    expect(single(tcg(), "-sandbox")).toBe("on,obsolete=deny,elevateprivileges=deny,spawn=allow,resourcecontrol=deny");
    const loose = buildQemuArgv({ binary: "q", spec: spec(), accel: "kvm", hostTscKhz: null, seccompSandbox: false });
    expect(loose).not.toContain("-sandbox");
  });

  it("uses tcg with a bounded translation cache and cpu max, or kvm with cpu host", () => {
    const soft = tcg();
    expect(single(soft, "-accel")).toBe("tcg,tb-size=64");
    expect(single(soft, "-cpu")).toBe("max");
    const hard = kvm();
    expect(hard[0]).toBe("/usr/bin/qemu-system-x86_64");
    expect(single(hard, "-accel")).toBe("kvm");
    expect(single(hard, "-cpu")).toBe("host");
  });

  it("passes tsc_early_khz and mitigations=off only under tcg", () => {
    const soft = single(tcg(), "-append").split(" ");
    expect(soft).toContain("tsc_early_khz=2596102");
    expect(soft).toContain("mitigations=off");
    const hard = single(kvm(), "-append").split(" ");
    expect(hard.some((a) => a.startsWith("tsc_early_khz="))).toBe(false);
    expect(hard).not.toContain("mitigations=off");
  });

  it("puts console, boot-speed and root arguments first and core's own arguments last", () => {
    const args = single(tcg(), "-append").split(" ");
    expect(args.slice(0, 3)).toEqual(["console=ttyS0", "panic=-1", "quiet"]);
    for (const a of ["cryptomgr.notests", "8250.nr_uarts=1", "i8042.nopnp", "root=/dev/vda", "rw"]) expect(args).toContain(a);
    expect(args.slice(-2)).toEqual(["ip=10.240.0.2::10.240.0.1:255.255.255.0::eth0:off", "mvm.instance=i-0123abcd"]);
    expect(args.indexOf("root=/dev/vda")).toBeLessThan(args.indexOf("mvm.instance=i-0123abcd"));
  });

  it("attaches the disks in the given order as virtio-blk devices with safe cache modes", () => {
    const argv = tcg();
    expect(valuesOf(argv, "-drive")).toEqual([
      "id=disk0,file=/d/root.qcow2,format=qcow2,if=none,cache=writeback",
      "id=disk1,file=/d/data.ext4,format=raw,if=none,cache=writeback",
      "id=disk2,file=/d/secrets.ext4,format=raw,if=none,cache=writeback,readonly=on",
    ]);
    const devices = valuesOf(argv, "-device");
    expect(devices.slice(0, 3)).toEqual([
      "virtio-blk-device,drive=disk0",
      "virtio-blk-device,drive=disk1",
      "virtio-blk-device,drive=disk2",
    ]);
    // Each device follows its own drive, so the guest sees root, data, secrets as vda, vdb, vdc.
    const driveAt = argv.indexOf("id=disk1,file=/d/data.ext4,format=raw,if=none,cache=writeback");
    expect(argv.slice(driveAt - 1, driveAt + 3)).toEqual([
      "-drive",
      "id=disk1,file=/d/data.ext4,format=raw,if=none,cache=writeback",
      "-device",
      "virtio-blk-device,drive=disk1",
    ]);
    expect(argv.join(" ")).not.toMatch(/cache=unsafe|cache\.no-flush=on/);
  });

  it("connects the tap with no helper scripts and the instance's mac, and serves qmp on the run directory", () => {
    const argv = tcg();
    expect(single(argv, "-netdev")).toBe("tap,id=net0,ifname=mvt-1-2,script=no,downscript=no");
    expect(valuesOf(argv, "-device")).toContain("virtio-net-device,netdev=net0,mac=52:54:00:ab:cd:ef");
    expect(single(argv, "-qmp")).toBe("unix:/var/lib/mvm/t/p/i-0123abcd/run/qmp.sock,server=on,wait=off");
    expect(single(argv, "-chardev")).toBe("file,id=serial0,path=/var/lib/mvm/t/p/i-0123abcd/run/serial.log");
    expect(single(argv, "-serial")).toBe("chardev:serial0");
  });

  it("omits -initrd when there is none", () => {
    expect(tcg(spec({ initrdPath: null }))).not.toContain("-initrd");
  });

  it("passes paths with spaces and shell syntax literally, doubling only the commas qemu would split at", () => {
    const dir = "/srv/my vms/$(touch pwned)/`id`;x,y";
    const argv = tcg(
      spec({
        runDir: `${dir}/run`,
        kernelPath: `${dir}/vmlinux`,
        disks: [{ role: "root", path: `${dir}/root disk.qcow2`, format: "qcow2", readOnly: false }],
      }),
    );
    expect(single(argv, "-kernel")).toBe(`${dir}/vmlinux`);
    expect(single(argv, "-chardev")).toBe("file,id=serial0,path=/srv/my vms/$(touch pwned)/`id`;x,,y/run/serial.log");
    expect(single(argv, "-drive")).toBe(
      "id=disk0,file=/srv/my vms/$(touch pwned)/`id`;x,,y/root disk.qcow2,format=qcow2,if=none,cache=writeback",
    );
    // Nothing in the argv is there for a shell: every flag is its own element, no element is quoted.
    expect(argv.every((a) => !/^["'].*["']$/.test(a))).toBe(true);
    expect(argv.filter((a) => a.startsWith("-")).every((a) => /^-[A-Za-z-]+$/.test(a))).toBe(true);
  });

  it("names the qmp socket relative to the run directory when its absolute path is too long for a socket address", () => {
    const runDir = `/var/lib/mvm/${"t".repeat(63)}/${"p".repeat(63)}/i-0123abcd/run`;
    expect(single(tcg(spec({ runDir })), "-qmp")).toBe("unix:qmp.sock,server=on,wait=off");
    expect(qemuRunFiles(runDir).qmpSocket).toBe(`${runDir}/qmp.sock`);
  });

  it("rejects a spec the command line cannot carry, naming each field and rule", () => {
    const error = (() => {
      try {
        tcg(
          spec({
            instanceId: "vm1",
            vcpus: 0,
            kernelArgs: ["ok=1", "two words", 'quote="x"', ""],
            tap: { name: "a-tap-name-that-is-too-long", mac: "01:00:5e:00:00:01" },
            runDir: "relative/run",
            disks: [
              { role: "data", path: "/d/data", format: "raw", readOnly: false },
              { role: "root", path: "/d/root", format: "qcow2", readOnly: false },
            ],
          }),
        );
      } catch (e) {
        return e;
      }
      return null;
    })();
    expect(error).toBeInstanceOf(MvmError);
    const fields = (error as MvmError).violations.map((v) => v.field);
    expect(fields).toEqual(
      expect.arrayContaining([
        "instance_id",
        "vcpus",
        "kernel_args[1]",
        "kernel_args[2]",
        "kernel_args[3]",
        "tap.name",
        "tap.mac",
        "run_dir",
        "disks",
        "disks[1].role",
      ]),
    );
    expect(fields).not.toContain("kernel_args[0]");
    expect((error as MvmError).message).toContain("tap.mac: must be a unicast mac address");
  });

  it("rejects a repeated disk role and tcg without a host tsc frequency", () => {
    const twice = spec({
      disks: [
        { role: "root", path: "/d/r", format: "raw", readOnly: false },
        { role: "secrets", path: "/d/s1", format: "raw", readOnly: true },
        { role: "secrets", path: "/d/s2", format: "raw", readOnly: true },
      ],
    });
    expect(() => tcg(twice)).toThrow(/disks\[2\]\.role: must follow the order root, data, secrets/);
    expect(() => buildQemuArgv({ binary: "q", spec: spec(), accel: "tcg", hostTscKhz: null })).toThrow(/host_tsc_khz/);
    expect(() => buildQemuArgv({ binary: "q", spec: spec(), accel: "kvm", hostTscKhz: null })).not.toThrow();
  });

  it("is deterministic, as wake relies on the same command line", () => {
    expect(tcg()).toEqual(tcg());
  });
});

describe("guestKernelCmdline and optionValue", () => {
  it("leaves out tsc_early_khz when the frequency is unknown", () => {
    expect(guestKernelCmdline({ kernelArgs: [] }, "tcg", null)).not.toContain("tsc_early_khz");
  });

  it("doubles every comma", () => {
    expect(optionValue("a,b,,c")).toBe("a,,b,,,,c");
    expect(optionValue("plain")).toBe("plain");
  });
});
