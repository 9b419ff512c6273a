// The restore command line: the boot's, plus what receiving a migration stream needs, and nothing the guest sees.

import { describe, expect, it } from "vitest";
import type { VmLaunchSpec } from "../../../src/core/data-plane-ports.js";
import { buildQemuArgv, migrationSourceUri, migrationTargetUri, shellWord } from "../../../src/runtime/qemu/qemu-command.js";

const spec: VmLaunchSpec = {
  instanceId: "i-0123abcd",
  vcpus: 1,
  memMib: 256,
  kernelPath: "/r/vmlinux",
  initrdPath: "/r/initramfs.cpio.gz",
  kernelArgs: ["mvm.instance=i-0123abcd"],
  disks: [{ role: "root", path: "/i/root.qcow2", format: "qcow2", readOnly: false }],
  tap: { name: "tn1i2", mac: "02:fc:00:01:00:02" },
  runDir: "/i/run",
  netns: null,
  cgroupProcsFiles: [],
  bootTimeoutMs: 1000,
};

describe("restore argv", () => {
  it("is the boot argv plus -S -incoming defer, with the serial log appended to", () => {
    const boot = buildQemuArgv({ binary: "qemu", spec, accel: "tcg", hostTscKhz: 2_000_000 });
    const restore = buildQemuArgv({ binary: "qemu", spec, accel: "tcg", hostTscKhz: 2_000_000, incoming: true });
    expect(restore.slice(-3)).toEqual(["-S", "-incoming", "defer"]);
    const serial = (argv: string[]) => argv.findIndex((a) => a.startsWith("file,id=serial0,"));
    expect(restore[serial(restore)]).toBe(`${boot[serial(boot)]},append=on`);
    const withoutSerial = (argv: string[]) => argv.filter((_, i) => i !== serial(argv));
    expect(withoutSerial(restore).slice(0, -3)).toEqual(withoutSerial(boot));
  });
});

describe("migration uris", () => {
  it("quote paths for the shell QEMU runs them with", () => {
    expect(shellWord("/a b/it's")).toBe(`'/a b/it'\\''s'`);
    expect(migrationTargetUri("/d/memory.mig")).toBe("exec:cat > '/d/memory.mig'");
    expect(migrationSourceUri("/d/x;rm -rf /")).toBe("exec:cat '/d/x;rm -rf /'");
  });
});
