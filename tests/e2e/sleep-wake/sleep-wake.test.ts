// Warm, resume, sleep and wake of a real microVM through the mvm CLI: QEMU under TCG in a network namespace this
// test creates and deletes. A counter process, a tmpfs file, the data disk, the network and SSH must all carry on
// across warm/resume and across sleep/wake, with and without compression; a corrupted snapshot and a wake over quota
// must fail cleanly and leave the instance sleeping with its snapshot; a guest whose wake hook fails runs on.

import { execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, openSync, readFileSync, readSync, statSync, writeFileSync, writeSync, closeSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { GuestHook } from "../../../src/core/data-plane-ports.js";
import { runHookOverControlPort } from "../../../src/runtime/qemu/control-port.js";
import { controlPortFiles } from "../../../src/runtime/qemu/qemu-command.js";
import { okJson, processGone } from "../../helpers/e2e-checks.js";
import { REPO_ROOT, runMvm, tempDataDir, type CliResult } from "../../helpers/mvm-cli.js";

const isRoot = process.getuid?.() === 0;
const hasQemu = existsSync("/usr/bin/qemu-system-x86_64");
const skipReason = !isRoot ? "needs root (bridges, TAPs, cgroups)" : !hasQemu ? "qemu-system-x86_64 is not installed" : null;
if (skipReason) console.log(`skipping sleep/wake e2e: ${skipReason}`);

const NETNS = `mvm-e2e-sw-${process.pid}`;
const IMAGE_CACHE = join(REPO_ROOT, ".cache/test-images");
const TENANT = "sleeper";
const SUBNET = "10.212.7.0/24";
const GATEWAY = "10.212.7.1";
let data: ReturnType<typeof tempDataDir>;
let path = "";
let instanceDir = "";
let tapName = "";
let listener: ChildProcess | null = null;

const HOOK = "/usr/lib/mvm/hooks/wake";
const ENV = { MVM_NETNS: NETNS, MVM_IMAGE_CACHE: IMAGE_CACHE, MVM_BOOT_TIMEOUT_MS: "150000" };

/** Commands that boot, snapshot or restore under TCG can outlast runMvm's 30 s on a loaded 2-core host. */
const SLOW_COMMANDS = new Set(["start", "sleep", "wake", "stop", "build", "destroy"]);

function mvm(...args: string[]): CliResult {
  if (!args.some((a) => SLOW_COMMANDS.has(a))) return runMvm(args, { dataDir: data.path, env: ENV });
  const r = spawnSync(process.execPath, [join(REPO_ROOT, "bin/mvm"), "--data-dir", data.path, ...args], {
    encoding: "utf8",
    env: { ...process.env, ...ENV },
    timeout: 180_000,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const ok = okJson;

function inGuest(command: string): string {
  const r = mvm("instance", "exec", path, "--", "sh", "-c", command);
  expect(r.code, `${command}: ${r.stderr}`).toBe(0);
  return r.stdout.trim();
}

/** pid and value of the counter process started in the guest. */
function counter(): { pid: string; value: number } {
  const [pid, value] = inGuest("cat /tmp/counter.pid; cat /tmp/counter").split("\n");
  return { pid: pid!.trim(), value: Number(value) };
}

/** Guest clock minus host clock, seconds (the exec's midpoint stands for the moment the guest read its clock). */
function clockOffsetSeconds(): number {
  const t0 = Date.now();
  const guest = Number(inGuest("date +%s.%N"));
  const t1 = Date.now();
  return guest - (t0 + t1) / 2000;
}

function snapshotMeta(): any {
  return JSON.parse(readFileSync(join(instanceDir, "snapshot", "meta.json"), "utf8"));
}

function sleepAndCheck(compression: "none" | "lz4" | "zstd"): any {
  const before = ok(mvm("instance", "info", path, "-o", "json"));
  const slept = ok(mvm("instance", "sleep", path, "--compression", compression, "-o", "json"));
  expect(slept.status).toBe("sleeping");
  expect(slept.vmm).toBeNull();
  expect(slept.lastSnapshotAt).not.toBeNull();
  expect(processGone(before.vmm.pid)).toBe(true);
  // TAP reservation kept while sleeping.
  expect(spawnSync("ip", ["-n", NETNS, "link", "show", tapName]).status).toBe(0);
  const meta = snapshotMeta();
  expect(meta).toMatchObject({ hypervisor: "qemu", compression, memMib: 256, type: "full" });
  expect(meta.sha256).toMatch(/^[0-9a-f]{64}$/);
  expect(statSync(join(instanceDir, "snapshot", meta.memoryFile)).size).toBe(meta.memorySizeBytes);
  return meta;
}

describe.skipIf(skipReason !== null)("sleep and wake of a real microVM", () => {
  beforeAll(() => {
    data = tempDataDir();
    execFileSync("ip", ["netns", "add", NETNS]);
    execFileSync("ip", ["-n", NETNS, "link", "set", "lo", "up"]);
  }, 30_000);

  afterAll(() => {
    listener?.kill();
    if (data) {
      mvm("tenant", "destroy", TENANT, "--force");
      const leftovers = spawnSync("pgrep", ["-f", `qemu-system-x86_64 -name i-.*${data.path}`], { encoding: "utf8" }).stdout;
      for (const pid of leftovers.split("\n").filter(Boolean)) process.kill(Number(pid), "SIGKILL");
      data.cleanup();
    }
    spawnSync("ip", ["netns", "delete", NETNS]);
  }, 120_000);

  it("boots an instance and starts a counter, a tmpfs file and a data-disk file in it", () => {
    ok(mvm("tenant", "create", TENANT, "--subnet", SUBNET, "-o", "json"));
    ok(mvm("pool", "create", `${TENANT}/web`, "--data-disk-mib", "64", "--mem-mib", "256", "-o", "json"));
    const build = mvm("pool", "build", `${TENANT}/web`, "-o", "json");
    expect(build.code, build.stderr).toBe(0);
    const created = ok(mvm("instance", "create", `${TENANT}/web`, "-o", "json"));
    path = `${TENANT}/web/${created.instanceId}`;
    tapName = created.net.tapName;
    instanceDir = join(data.path, "tenants", TENANT, "pools", "web", "instances", created.instanceId);
    expect(ok(mvm("instance", "start", path, "-o", "json")).status).toBe("running");
    inGuest(
      "setsid sh -c 'echo $$ > /tmp/counter.pid; i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.1; done' < /dev/null > /dev/null 2>&1 &",
    );
    inGuest("echo tmpfs-survives > /dev/shm/marker; echo data-survives > /data/marker; sync");
    spawnSync("sleep", ["1"]);
    expect(counter().value).toBeGreaterThan(0);
  }, 600_000);

  it("warm pauses the guest and resume continues the same counter, with the guest's clock set again", () => {
    const before = counter();
    const warm = ok(mvm("instance", "warm", path, "-o", "json"));
    expect(warm.status).toBe("warm");
    // A paused guest cannot run a command.
    expect(mvm("instance", "exec", path, "--", "true").code).toBe(5);
    // The guest's clock stands still while it is paused: 5 s paused would leave it 5 s behind without the wake hook.
    spawnSync("sleep", ["5"]);
    const resumed = ok(mvm("instance", "resume", path, "-o", "json"));
    expect(resumed.status).toBe("running");
    expect(resumed.conditions.find((c: { type: string }) => c.type === "Ready")?.message).toBe("vcpus resumed; guest clock set from the host");
    expect(Math.abs(clockOffsetSeconds())).toBeLessThan(2);
    spawnSync("sleep", ["0.5"]);
    const after = counter();
    expect(after.pid).toBe(before.pid);
    expect(after.value).toBeGreaterThan(before.value);
  }, 120_000);

  it("runs the guest's hooks over its control port, and only hooks", async () => {
    const runDir = join(instanceDir, "run");
    expect(readFileSync(join(runDir, "serial.log"), "latin1")).toMatch(/^MVM-CONTROL \/dev\/vport\d+p\d+$/m);
    const files = controlPortFiles(runDir);
    const hostSeconds = String(Math.floor(Date.now() / 1000));
    expect(await runHookOverControlPort(files, "wake", [hostSeconds], 60_000)).toEqual({ exitCode: 0, stdout: "", stderr: "" });
    // The guest's control script answered (it leaves the hook's standard error there); SSH was not involved.
    expect(inGuest("test -f /run/mvm/control.err && echo yes")).toBe("yes");
    const refused = await runHookOverControlPort(files, "ready" as GuestHook, [], 60_000);
    expect(refused.exitCode).toBe(127);
    expect(refused.stderr).toMatch(/unknown hook ready/);
  }, 120_000);

  it("sleeps uncompressed and wakes with counter, tmpfs, data disk, network, SSH and clock intact", () => {
    const before = counter();
    const offsetBefore = clockOffsetSeconds();
    sleepAndCheck("none");
    // Long enough asleep that a guest clock left frozen would lag by more than the tolerance below.
    spawnSync("sleep", ["15"]);
    const woken = ok(mvm("instance", "wake", path, "-o", "json"));
    expect(woken.status).toBe("running");
    // Measured first: a guest under TCG on a loaded host may drift on its own later.
    expect(Math.abs(clockOffsetSeconds() - offsetBefore)).toBeLessThan(8);
    expect(existsSync(join(instanceDir, "snapshot"))).toBe(false);
    spawnSync("sleep", ["0.5"]);
    const after = counter();
    expect(after.pid).toBe(before.pid);
    expect(after.value).toBeGreaterThan(before.value);
    expect(inGuest("cat /dev/shm/marker")).toBe("tmpfs-survives");
    expect(inGuest("cat /data/marker")).toBe("data-survives");
    // The only host port a guest may reach is the metadata port on its gateway: a listener there stands in for it.
    const server = `require("node:net").createServer((s) => s.end("hello\\n")).listen(8169, ${JSON.stringify(GATEWAY)})`;
    listener = spawn("ip", ["netns", "exec", NETNS, process.execPath, "-e", server], { stdio: "ignore" });
    const deadline = Date.now() + 10_000;
    while (!spawnSync("ip", ["netns", "exec", NETNS, "ss", "-ltnH"], { encoding: "utf8" }).stdout.includes(`${GATEWAY}:8169`) && Date.now() < deadline) {
      spawnSync("sleep", ["0.1"]);
    }
    expect(inGuest(`busybox nc -w 3 ${GATEWAY} 8169 < /dev/null`)).toBe("hello");
  }, 180_000);

  it("sleeps and wakes with zstd compression", () => {
    const before = counter();
    const meta = sleepAndCheck("zstd");
    expect(meta.memoryFile).toMatch(/\.zst$/);
    expect(meta.memorySizeBytes).toBeLessThan(meta.uncompressedSizeBytes);
    expect(ok(mvm("instance", "wake", path, "-o", "json")).status).toBe("running");
    const after = counter();
    expect(after.pid).toBe(before.pid);
    expect(after.value).toBeGreaterThan(before.value);
  }, 180_000);

  it("secrets rotated while the instance sleeps are in the guest when it wakes; a running guest keeps its disk", () => {
    const secrets = join(data.path, "secret-files");
    mkdirSync(secrets);
    writeFileSync(join(secrets, "token"), "one\n");
    const first = ok(mvm("tenant", "rotate-secrets", TENANT, "--from-dir", secrets, "-o", "json"));
    expect(first.secretsEpoch).toBe(1);
    expect(first.secretsHash).toMatch(/^[0-9a-f]{64}$/);
    // The disk a running guest has was built at its start or wake.
    expect(inGuest("ls /run/mvm/secrets/user-secrets 2>&1 || true")).toMatch(/No such file/);

    const before = counter();
    sleepAndCheck("none");
    writeFileSync(join(secrets, "token"), "two\n");
    writeFileSync(join(secrets, "api-key"), "k-123\n");
    const second = ok(mvm("tenant", "rotate-secrets", TENANT, "--from-dir", secrets, "-o", "json"));
    expect(second.secretsEpoch).toBe(2);
    expect(second.secretsHash).not.toBe(first.secretsHash);
    expect(ok(mvm("instance", "wake", path, "-o", "json")).status).toBe("running");
    expect(inGuest("cat /run/mvm/secrets/user-secrets/token /run/mvm/secrets/user-secrets/api-key")).toBe("two\nk-123");
    expect(inGuest("stat -c %a /run/mvm/secrets/user-secrets/token")).toBe("600");
    expect(JSON.parse(inGuest("cat /run/mvm/secrets/identity.json")).secrets_epoch).toBe(2);
    expect(counter().pid).toBe(before.pid);
    // Nothing of the secrets in the audit trail or the tenant's record.
    expect(readFileSync(join(data.path, "tenants", TENANT, "tenant.json"), "utf8")).not.toContain("k-123");
    expect(mvm("audit", "tail", TENANT, "-o", "json").stdout).not.toContain("k-123");
  }, 180_000);

  it("refuses a corrupted snapshot with a clear error and stays sleeping with the snapshot intact", () => {
    const meta = sleepAndCheck("lz4");
    const file = join(instanceDir, "snapshot", meta.memoryFile);
    const offset = Math.floor(meta.memorySizeBytes / 2);
    const fd = openSync(file, "r+");
    const original = Buffer.alloc(1);
    readSync(fd, original, 0, 1, offset);
    writeSync(fd, Buffer.from([original[0]! ^ 0xff]), 0, 1, offset);
    closeSync(fd);

    const refused = mvm("instance", "wake", path, "-o", "json");
    expect(refused.code, refused.stderr).toBe(5);
    expect(refused.stderr).toMatch(/corrupt/);
    expect(refused.stderr).toContain(meta.memoryFile);
    expect(ok(mvm("instance", "info", path, "-o", "json")).status).toBe("sleeping");
    expect(statSync(file).size).toBe(meta.memorySizeBytes);
    expect(snapshotMeta()).toEqual(meta);
    expect(spawnSync("pgrep", ["-f", `qemu-system-x86_64 -name ${path.split("/")[2]}`]).status).toBe(1);

    const repair = openSync(file, "r+");
    writeSync(repair, original, 0, 1, offset);
    closeSync(repair);
    expect(ok(mvm("instance", "wake", path, "-o", "json")).status).toBe("running");
    expect(inGuest("cat /dev/shm/marker")).toBe("tmpfs-survives");
  }, 180_000);

  it("wake over quota is ResourceExhausted and the instance stays sleeping", () => {
    sleepAndCheck("none");
    ok(mvm("tenant", "update", TENANT, "--max-running", "0", "-o", "json"));
    const refused = mvm("instance", "wake", path);
    expect(refused.code, refused.stderr).toBe(6);
    expect(refused.stderr).toMatch(/max_running/);
    expect(ok(mvm("instance", "info", path, "-o", "json")).status).toBe("sleeping");
    expect(existsSync(join(instanceDir, "snapshot", "meta.json"))).toBe(true);
    ok(mvm("tenant", "update", TENANT, "--max-running", "8", "-o", "json"));
  }, 120_000);

  it("a guest whose wake hook fails runs on with Ready false, its counter going on, and its outgrown snapshot removed", () => {
    // Asleep since the test above: woken, its wake hook broken on purpose, put to sleep again.
    expect(ok(mvm("instance", "wake", path, "-o", "json")).status).toBe("running");
    inGuest(`cp ${HOOK} /tmp/wake.saved && printf '#!/bin/sh\\necho broken on purpose >&2\\nexit 3\\n' > ${HOOK}`);
    const before = counter();
    sleepAndCheck("none");

    const failed = mvm("instance", "wake", path, "-o", "json");
    expect(failed.code, failed.stderr).toBe(8);
    expect(failed.stderr).toMatch(/exited 3: broken on purpose/);
    expect(failed.stderr).toMatch(/running again \(Ready false\)/);
    const info = ok(mvm("instance", "info", path, "-o", "json"));
    expect(info.status).toBe("running");
    const ready = info.conditions.find((c: { type: string }) => c.type === "Ready");
    expect(ready?.reason).toBe("WakeHookFailed");
    expect(String(ready?.status)).toMatch(/false/i);
    expect(existsSync(join(instanceDir, "snapshot"))).toBe(false);
    spawnSync("sleep", ["0.5"]);
    const after = counter();
    expect(after.pid).toBe(before.pid);
    expect(after.value).toBeGreaterThan(before.value);

    // Mended, a wake asks the same guest again (no restore: the counter goes on in the same process) and it is Ready.
    inGuest(`cp /tmp/wake.saved ${HOOK}`);
    const answered = ok(mvm("instance", "wake", path, "-o", "json"));
    expect(answered.status).toBe("running");
    expect(answered.healthy).toBe(true);
    expect(answered.conditions.find((c: { type: string }) => c.type === "Ready")).toMatchObject({ reason: "Woken", message: expect.stringMatching(/later try/) });
    expect(counter().pid).toBe(before.pid);

    // It sleeps and wakes as before (and stays asleep for the next test).
    sleepAndCheck("none");
    expect(ok(mvm("instance", "wake", path, "-o", "json")).status).toBe("running");
    sleepAndCheck("none");
  }, 300_000);

  it("stop of a sleeping instance discards its snapshot", () => {
    expect(ok(mvm("instance", "stop", path, "-o", "json")).status).toBe("stopped");
    expect(existsSync(join(instanceDir, "snapshot"))).toBe(false);
  }, 60_000);
});
