import { describe, expect, it } from "vitest";
import { hostPathInJail, jailIdentity, jailLayout, jailerArgv } from "../../../src/runtime/firecracker/jailer-command.js";
import type { JailerArgsInput } from "../../../src/runtime/firecracker/jailer-command.js";
import { firecrackerArgs } from "../../../src/runtime/firecracker/firecracker-command.js";

const input = (overrides: Partial<JailerArgsInput> = {}): JailerArgsInput => ({
  jailerBinary: "/usr/bin/jailer",
  execFile: "/usr/bin/firecracker",
  instanceId: "i-0a1b2c3d",
  uid: 900123,
  gid: 900123,
  chrootBaseDir: "/var/lib/mvm/jailer",
  netns: "mvm-test",
  daemonize: true,
  cgroupVersion: 2,
  parentCgroup: "mvm/t1/p1",
  cgroups: ["cpu.max=100000 100000".replace(" ", "_")],
  resourceLimits: ["no-file=1024", "fsize=1073741824"],
  firecrackerArgs: firecrackerArgs({ apiSocket: "/run/firecracker.socket", instanceId: "i-0a1b2c3d", seccompFilterPath: null, jailed: true }),
  ...overrides,
});

describe("jailer invocation", () => {
  it("passes the documented arguments in order, then -- and firecracker's own", () => {
    expect(jailerArgv(input())).toEqual([
      "/usr/bin/jailer",
      "--id", "i-0a1b2c3d",
      "--exec-file", "/usr/bin/firecracker",
      "--uid", "900123",
      "--gid", "900123",
      "--chroot-base-dir", "/var/lib/mvm/jailer",
      "--netns", "/var/run/netns/mvm-test",
      "--daemonize",
      "--cgroup", "cpu.max=100000_100000",
      "--cgroup-version", "2",
      "--parent-cgroup", "mvm/t1/p1",
      "--resource-limit", "no-file=1024",
      "--resource-limit", "fsize=1073741824",
      "--",
      "--api-sock", "/run/firecracker.socket",
    ]);
  });

  it("leaves out what is not asked for; --cgroup-version is always given", () => {
    const argv = jailerArgv(input({ netns: null, daemonize: false, parentCgroup: null, cgroups: [], resourceLimits: [], cgroupVersion: 1 }));
    expect(argv).not.toContain("--netns");
    expect(argv).not.toContain("--daemonize");
    expect(argv).not.toContain("--parent-cgroup");
    expect(argv.slice(argv.indexOf("--cgroup-version"), argv.indexOf("--cgroup-version") + 2)).toEqual(["--cgroup-version", "1"]);
  });

  it("firecracker gets --id only when it is not jailed (the jailer adds it), and the bpf filter when strict", () => {
    expect(firecrackerArgs({ apiSocket: "/s", instanceId: "i-1", seccompFilterPath: null, jailed: false })).toEqual(["--api-sock", "/s", "--id", "i-1"]);
    expect(firecrackerArgs({ apiSocket: "/s", instanceId: "i-1", seccompFilterPath: "/f.bpf", jailed: true })).toEqual([
      "--api-sock", "/s", "--seccomp-filter", "/f.bpf",
    ]);
  });

  it("refuses arguments the jailer would reject", () => {
    expect(() => jailerArgv(input({ instanceId: "i_bad/../x" }))).toThrow(/instance_id/);
    expect(() => jailerArgv(input({ execFile: "firecracker" }))).toThrow(/exec_file/);
    expect(() => jailerArgv(input({ parentCgroup: "../escape" }))).toThrow(/parent_cgroup/);
    expect(() => jailerArgv(input({ cgroups: ["nonsense"] }))).toThrow(/cgroups\[0\]/);
    expect(() => jailerArgv(input({ resourceLimits: ["stack=1"] }))).toThrow(/resource_limits\[0\]/);
    expect(() => jailerArgv(input({ uid: -1 }))).toThrow(/jailer\.uid/);
  });

  it("the chroot is <base>/<exec-file-name>/<id>/root, and in-jail paths map below it", () => {
    const layout = jailLayout("/var/lib/mvm/jailer", "/opt/fc/bin/firecracker-v1.7", "i-0a1b2c3d");
    expect(layout).toEqual({
      jailDir: "/var/lib/mvm/jailer/firecracker-v1.7/i-0a1b2c3d",
      rootDir: "/var/lib/mvm/jailer/firecracker-v1.7/i-0a1b2c3d/root",
    });
    expect(hostPathInJail(layout, "/run/firecracker.socket")).toBe("/var/lib/mvm/jailer/firecracker-v1.7/i-0a1b2c3d/root/run/firecracker.socket");
    expect(() => hostPathInJail(layout, "/../../etc/passwd")).toThrow(/path_in_jail/);
  });

  it("derives a per-instance uid/gid inside the configured range", () => {
    const a = jailIdentity("i-0a1b2c3d", 900_000, 1_000_000);
    const b = jailIdentity("i-0a1b2c3e", 900_000, 1_000_000);
    expect(a.uid).not.toBe(b.uid);
    expect(a.uid).toBe(900_000 + (0x0a1b2c3d % 1_000_000));
    expect(a.gid).toBe(a.uid);
    expect(() => jailIdentity("vm-1", 900_000, 10)).toThrow(/instance_id/);
  });
});
