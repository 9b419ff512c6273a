// The default debian image boots as docs/guest-contract.md promises: QEMU microvm under TCG, started here with a
// plain command line (not through the Vmm adapter), in a network namespace this test creates. The guest must print
// `MVM-READY <id>` on its serial console, let the tenant's key in over SSH, run its hooks, mount the data disk only
// when it holds ext4, and power off from `poweroff` and from the ACPI power button. Only QEMUs started here are
// signalled, by pid; namespaces made here are deleted.

import { execFile, spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, open, readFile, rm, truncate, writeFile, chmod } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { withQmp } from "../../../src/runtime/qemu/qmp-client.js";
import { ensureDefaultTestImage } from "../../helpers/default-image.js";
import type { DefaultTestImage } from "../../helpers/default-image.js";

const exec = promisify(execFile);
const READY_TIMEOUT_MS = 60_000;
const POWEROFF_TIMEOUT_MS = 30_000;

async function missingTool(): Promise<string | null> {
  if (process.getuid?.() !== 0) return "needs root (network namespaces, TAP devices)";
  for (const tool of ["qemu-system-x86_64", "qemu-img", "ip", "ssh", "ssh-keygen", "mkfs.ext4", "debugfs", "mmdebstrap"]) {
    try {
      await exec("sh", ["-c", `command -v ${tool}`]);
    } catch {
      return `${tool} is not installed`;
    }
  }
  return null;
}

const skipReason = await missingTool();
if (skipReason !== null) console.warn(`skipping default image boot e2e: ${skipReason}`);

/** Host TSC frequency for `tsc_early_khz`, which TCG guests need to boot reliably (VM-NOTES). */
async function hostTscKhz(): Promise<number> {
  const mhz = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(await readFile("/proc/cpuinfo", "utf8"))?.[1];
  if (mhz === undefined) throw new Error("/proc/cpuinfo has no cpu MHz line");
  return Math.round(Number(mhz) * 1000);
}

interface Guest {
  instanceId: string;
  netns: string;
  ip: string;
  dir: string;
  serialLog: string;
  qmpSocket: string;
  dataDisk: string;
  qemu: ChildProcess;
  exited: Promise<number | null>;
  startedAt: number;
}

let image: DefaultTestImage;
let work: string;
let privateKey: string;
let publicKey: string;
let tscKhz: number;
const namespaces: string[] = [];
const guests: Guest[] = [];

/** Serial log lines so far. */
async function serial(guest: Guest): Promise<string> {
  return readFile(guest.serialLog, "utf8").catch(() => "");
}

/** Waits until the serial log holds a line matching `pattern`; fails early on MVM-FAILED or when QEMU exits. */
async function waitForSerial(guest: Guest, pattern: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void guest.exited.then(() => {
    exited = true;
  });
  for (;;) {
    const text = await serial(guest);
    const match = pattern.exec(text);
    if (match !== null) return match;
    const failed = /MVM-FAILED .*/.exec(text);
    if (failed !== null) throw new Error(`guest reported ${failed[0]}\n${text}`);
    if (exited) throw new Error(`qemu exited before ${pattern}\n${text}\n${await readFile(join(guest.dir, "qemu.log"), "utf8")}`);
    if (Date.now() > deadline) throw new Error(`no ${pattern} within ${timeoutMs} ms\n${text}`);
    await sleep(50);
  }
}

async function exitWithin(guest: Guest, timeoutMs: number): Promise<number | null | "timeout"> {
  return Promise.race([guest.exited, sleep(timeoutMs).then(() => "timeout" as const)]);
}

async function ssh(guest: Guest, command: string, extraOptions: string[] = []): Promise<string> {
  const options = extraOptions.length > 0 ? extraOptions : ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"];
  const { stdout } = await exec(
    "ip",
    ["netns", "exec", guest.netns, "ssh", "-i", privateKey, ...options, "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", `root@${guest.ip}`, command],
    { timeout: 30_000 },
  );
  return stdout;
}

/** A namespace with a bridge (gateway .1) and a TAP, the three disks, and QEMU booting the default image. */
async function launch(name: string, index: number, data: "placeholder" | "ext4", withSecretsDisk = true): Promise<Guest> {
  const netns = `mvm-img-${process.pid}-${index}`;
  const instanceId = `i-${(0xc0ffee00 + index).toString(16)}`;
  const subnet = `10.251.${index}`;
  const dir = join(work, name);
  await mkdir(join(dir, "secrets"), { recursive: true });

  namespaces.push(netns);
  await exec("ip", ["netns", "add", netns]);
  await exec("ip", ["-n", netns, "link", "set", "lo", "up"]);
  await exec("ip", ["-n", netns, "link", "add", "br0", "type", "bridge"]);
  await exec("ip", ["-n", netns, "addr", "add", `${subnet}.1/24`, "dev", "br0"]);
  await exec("ip", ["-n", netns, "link", "set", "br0", "up"]);
  await exec("ip", ["-n", netns, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
  await exec("ip", ["-n", netns, "link", "set", "tap0", "master", "br0", "up"]);

  const root = join(dir, "root.qcow2");
  await exec("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", image.rootfs, root]);
  const dataDisk = join(dir, "data.raw");
  await writeFile(dataDisk, "");
  if (data === "placeholder") {
    await truncate(dataDisk, 1024 * 1024);
  } else {
    await truncate(dataDisk, 64 * 1024 * 1024);
    await exec("mkfs.ext4", ["-q", "-F", "-L", "data", dataDisk]);
  }
  const secretsDir = join(dir, "secrets");
  await writeFile(join(secretsDir, "authorized_keys"), publicKey, { mode: 0o600 });
  const identity = { instance_id: instanceId, tenant_id: "acme", pool_id: "web", revision: image.built.revision };
  await writeFile(join(secretsDir, "identity.json"), `${JSON.stringify(identity)}\n`, { mode: 0o600 });
  await chmod(secretsDir, 0o700);
  const secretsDisk = join(dir, "secrets.ext4");
  await exec("mkfs.ext4", ["-q", "-F", "-L", "secrets", "-d", secretsDir, secretsDisk, "4M"]);

  const serialLog = join(dir, "serial.log");
  const qmpSocket = join(dir, "qmp.sock");
  const append = [
    "console=ttyS0",
    "panic=-1",
    "quiet",
    `tsc_early_khz=${tscKhz}`,
    "mitigations=off",
    "cryptomgr.notests",
    "random.trust_cpu=on",
    "8250.nr_uarts=1",
    "i8042.noaux",
    "i8042.nomux",
    "i8042.nopnp",
    "i8042.dumbkbd",
    "root=/dev/vda",
    "rw",
    `ip=${subnet}.2::${subnet}.1:255.255.255.0::eth0:off`,
    `mvm.instance=${instanceId}`,
  ].join(" ");
  const drive = (id: string, file: string, format: string, extra = ""): string[] => [
    "-drive",
    `id=${id},file=${file},format=${format},if=none,cache=unsafe${extra}`,
    "-device",
    `virtio-blk-device,drive=${id}`,
  ];
  const argv = [
    "netns", "exec", netns, "qemu-system-x86_64",
    "-name", instanceId,
    "-M", "microvm,rtc=on",
    "-cpu", "max",
    "-accel", "tcg,tb-size=64",
    "-m", "256",
    "-smp", "1",
    "-display", "none",
    "-no-reboot",
    "-nodefaults",
    "-no-user-config",
    "-chardev", `file,id=ser0,path=${serialLog}`,
    "-serial", "chardev:ser0",
    "-kernel", image.kernel,
    "-initrd", image.initrd,
    "-append", append,
    ...drive("d0", root, "qcow2"),
    ...drive("d1", dataDisk, "raw"),
    ...(withSecretsDisk ? drive("d2", secretsDisk, "raw", ",readonly=on") : []),
    "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
    "-device", `virtio-net-device,netdev=n0,mac=52:54:00:00:${index.toString(16).padStart(2, "0")}:02`,
    "-qmp", `unix:${qmpSocket},server=on,wait=off`,
  ];
  const log = await open(join(dir, "qemu.log"), "w");
  const startedAt = performance.now();
  // `ip netns exec` execs QEMU in place: the child's pid is QEMU's.
  const qemu = spawn("ip", argv, { stdio: ["ignore", log.fd, log.fd] });
  const exited = new Promise<number | null>((resolve) => qemu.on("exit", (code) => resolve(code)));
  void exited.finally(() => log.close());
  const guest: Guest = { instanceId, netns, ip: `${subnet}.2`, dir, serialLog, qmpSocket, dataDisk, qemu, exited, startedAt };
  guests.push(guest);
  return guest;
}

describe.skipIf(skipReason !== null)("default debian image (qemu microvm, tcg)", () => {
  beforeAll(async () => {
    image = await ensureDefaultTestImage();
    work = await mkdtemp(join(tmpdir(), "mvm-image-boot-"));
    privateKey = join(work, "tenant_key");
    await exec("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "tenant@test", "-f", privateKey]);
    publicKey = await readFile(`${privateKey}.pub`, "utf8");
    tscKhz = await hostTscKhz();
  }, 20 * 60_000);

  afterAll(async () => {
    for (const guest of guests) {
      if (guest.qemu.exitCode === null && guest.qemu.signalCode === null && guest.qemu.pid !== undefined) {
        process.kill(guest.qemu.pid, "SIGKILL");
        await guest.exited;
      }
    }
    for (const netns of namespaces) await exec("ip", ["netns", "del", netns]).catch(() => undefined);
    if (work) await rm(work, { recursive: true, force: true });
  });

  it("boots to MVM-READY, lets the tenant key in over ssh, runs the hooks and powers off on poweroff", async () => {
    const guest = await launch("plain", 1, "placeholder");
    await waitForSerial(guest, new RegExp(`MVM-READY ${guest.instanceId}\\b`), READY_TIMEOUT_MS);
    const readyMs = performance.now() - guest.startedAt;

    const uname = await ssh(guest, "uname -a");
    const sshMs = performance.now() - guest.startedAt;
    console.log(`default image: boot to MVM-READY ${Math.round(readyMs)} ms, to first ssh answer ${Math.round(sshMs)} ms`);
    const manifest = JSON.parse(await readFile(join(image.dir, "manifest.json"), "utf8")) as { kernel: { release: string } };
    expect(uname).toContain(`Linux ${guest.instanceId} ${manifest.kernel.release}`);

    // The host key the guest announced on its console is the one it serves: callers can pin it.
    const announced = (await waitForSerial(guest, new RegExp(`MVM-HOSTKEY ${guest.instanceId} (ssh-ed25519 \\S+)`), 1000))[1];
    const knownHosts = join(guest.dir, "known_hosts");
    await writeFile(knownHosts, `${guest.ip} ${announced}\n`);
    const pinned = ["-o", "StrictHostKeyChecking=yes", "-o", `UserKnownHostsFile=${knownHosts}`];
    const facts = await ssh(
      guest,
      "hostname; cat /run/mvm/instance-id; stat -c '%a' /root/.ssh /root/.ssh/authorized_keys; " +
        "grep -c ' /run/mvm/secrets ext4 ro,' /proc/mounts; grep -c ' /data ' /proc/mounts; " +
        "cat /run/mvm/secrets/identity.json; ip -4 -o addr show eth0; ip route show default",
      pinned,
    );
    const lines = facts.trim().split("\n");
    expect(lines.slice(0, 6)).toEqual([guest.instanceId, guest.instanceId, "700", "600", "1", "0"]);
    expect(JSON.parse(lines[6] as string)).toMatchObject({ instance_id: guest.instanceId, tenant_id: "acme" });
    expect(lines[7]).toContain(`inet ${guest.ip}/24`);
    expect(lines[8]).toContain(`default via 10.251.1.1 dev eth0`);

    expect(await ssh(guest, "/usr/lib/mvm/hooks/sleep-prep && /usr/lib/mvm/hooks/wake && echo hooks-ok", pinned)).toBe("hooks-ok\n");
    expect(await ssh(guest, "test -r /run/mvm/secrets/authorized_keys && cat /run/mvm/instance-id", pinned)).toBe(`${guest.instanceId}\n`);

    await ssh(guest, "poweroff", pinned).catch(() => undefined);
    expect(await exitWithin(guest, POWEROFF_TIMEOUT_MS)).toBe(0);
    expect(await serial(guest)).not.toContain("MVM-FAILED");
  }, 180_000);

  it("mounts an ext4 data disk at /data, keeps what the guest wrote there, and powers off on the acpi power button", async () => {
    const guest = await launch("data", 2, "ext4");
    await waitForSerial(guest, new RegExp(`MVM-READY ${guest.instanceId}\\b`), READY_TIMEOUT_MS);
    expect(await ssh(guest, "grep -c ' /data ext4 ' /proc/mounts && echo kept-by-the-guest > /data/probe && sync && echo written")).toBe(
      "1\nwritten\n",
    );

    await withQmp(guest.qmpSocket, (qmp) => qmp.execute("system_powerdown"));
    expect(await exitWithin(guest, POWEROFF_TIMEOUT_MS)).toBe(0);
    const { stdout } = await exec("debugfs", ["-R", "cat /probe", guest.dataDisk]);
    expect(stdout).toBe("kept-by-the-guest\n");
  }, 180_000);

  it("reports MVM-FAILED and powers off instead of hanging when the secrets disk is missing", async () => {
    const guest = await launch("no-secrets", 3, "placeholder", false);
    const failed = await waitForSerial(guest, /MVM-FAILED (.*)/, READY_TIMEOUT_MS);
    expect(failed[1]).toBe("cannot mount secrets disk /dev/vdc on /run/mvm/secrets");
    expect(await exitWithin(guest, POWEROFF_TIMEOUT_MS)).toBe(0);
    expect(await serial(guest)).not.toContain("MVM-READY");
  }, 120_000);
});
