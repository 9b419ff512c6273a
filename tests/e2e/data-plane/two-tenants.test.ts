// Real microVMs through the mvm CLI: QEMU under TCG, bridges, TAPs, nftables and cgroups, all inside a network
// namespace this test creates and deletes. Two tenants; two instances in A, one in B.

import { execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { okJson, processGone } from "../../helpers/e2e-checks.js";
import { REPO_ROOT, runMvm, tempDataDir, type CliResult } from "../../helpers/mvm-cli.js";

const isRoot = process.getuid?.() === 0;
const hasQemu = existsSync("/usr/bin/qemu-system-x86_64");
const skipReason = !isRoot ? "needs root (bridges, TAPs, cgroups)" : !hasQemu ? "qemu-system-x86_64 is not installed" : null;
if (skipReason) console.log(`skipping data-plane e2e: ${skipReason}`);

const NETNS = `mvm-e2e-${process.pid}`;
const IMAGE_CACHE = join(REPO_ROOT, ".cache/test-images");
let data: ReturnType<typeof tempDataDir>;
const listeners: ChildProcess[] = [];

function mvm(...args: string[]): CliResult {
  return runMvm(args, {
    dataDir: data.path,
    env: { MVM_NETNS: NETNS, MVM_IMAGE_CACHE: IMAGE_CACHE, MVM_BOOT_TIMEOUT_MS: "90000" },
  });
}

const ok = okJson;

function inGuest(path: string, command: string): CliResult {
  return mvm("instance", "exec", path, "--", "sh", "-c", command);
}

function inNetns(args: string[]): { status: number | null; stdout: string } {
  const r = spawnSync("ip", ["netns", "exec", NETNS, ...args], { encoding: "utf8", timeout: 15_000 });
  return { status: r.status, stdout: r.stdout };
}

/** A TCP listener inside the data-plane namespace that answers "hello" (standing in for host services). */
function listenInNetns(ip: string, port: number): ChildProcess {
  const server = `require("node:net").createServer((s) => s.end("hello\\n")).listen(${port}, ${JSON.stringify(ip)})`;
  const child = spawn("ip", ["netns", "exec", NETNS, process.execPath, "-e", server], { stdio: "ignore" });
  listeners.push(child);
  return child;
}

/** The directory of a process's memory cgroup (v1), or of its only cgroup (v2). */
function memoryCgroupDir(pid: number): string {
  const lines = readFileSync(`/proc/${pid}/cgroup`, "utf8").split("\n");
  const v1 = lines.find((l) => /^\d+:([^:]*,)?memory(,[^:]*)?:/.test(l));
  if (v1) return `/sys/fs/cgroup/memory${v1.split(":")[2]}`;
  return `/sys/fs/cgroup${lines.find((l) => l.startsWith("0::"))!.slice(3)}`;
}

const a = { tenant: "alpha", subnet: "10.210.1.0/24", gateway: "10.210.1.1" };
const b = { tenant: "bravo", subnet: "10.210.2.0/24", gateway: "10.210.2.1" };
const paths: Record<"a1" | "a2" | "b1", string> = { a1: "", a2: "", b1: "" };
const ips: Record<"a1" | "a2" | "b1", string> = { a1: "", a2: "", b1: "" };

describe.skipIf(skipReason !== null)("data plane: real microVMs for two tenants", () => {
  beforeAll(() => {
    data = tempDataDir();
    execFileSync("ip", ["netns", "add", NETNS]);
    execFileSync("ip", ["-n", NETNS, "link", "set", "lo", "up"]);
  }, 30_000);

  afterAll(() => {
    for (const l of listeners) l.kill();
    // Stop every VMM this test started, whatever state the test left them in, then drop the namespace.
    if (data) {
      for (const t of [a.tenant, b.tenant]) mvm("tenant", "destroy", t, "--force");
      const leftovers = spawnSync("pgrep", ["-f", `qemu-system-x86_64 -name i-.*${data.path}`], { encoding: "utf8" }).stdout;
      for (const pid of leftovers.split("\n").filter(Boolean)) process.kill(Number(pid), "SIGKILL");
      data.cleanup();
    }
    spawnSync("ip", ["netns", "delete", NETNS]);
  }, 120_000);

  it("builds the image and boots three instances", () => {
    ok(mvm("tenant", "create", a.tenant, "--subnet", a.subnet, "-o", "json"));
    ok(mvm("tenant", "create", b.tenant, "--subnet", b.subnet, "--max-running", "1", "-o", "json"));
    ok(mvm("pool", "create", `${a.tenant}/web`, "--data-disk-mib", "64", "--mem-mib", "256", "-o", "json"));
    ok(mvm("pool", "create", `${b.tenant}/web`, "--mem-mib", "256", "-o", "json"));
    for (const t of [a.tenant, b.tenant]) {
      const build = mvm("pool", "build", `${t}/web`, "-o", "json");
      expect(build.code, build.stderr).toBe(0);
      expect(JSON.parse(build.stdout).revision).toMatch(/^[0-9a-f]{16}$/);
    }
    const created = {
      a1: ok(mvm("instance", "create", `${a.tenant}/web`, "-o", "json")),
      a2: ok(mvm("instance", "create", `${a.tenant}/web`, "-o", "json")),
      b1: ok(mvm("instance", "create", `${b.tenant}/web`, "-o", "json")),
    };
    for (const k of ["a1", "a2", "b1"] as const) {
      paths[k] = `${created[k].tenantId}/web/${created[k].instanceId}`;
      ips[k] = created[k].net.guestIp;
      const started = ok(mvm("instance", "start", paths[k], "-o", "json"));
      expect(started.status).toBe("running");
      expect(started.vmm.netns).toBe(NETNS);
    }
  }, 600_000);

  it("runs a command in the guest and returns its output and status", () => {
    const r = inGuest(paths.a1, "uname -s; hostname; exit 3");
    expect(r.code).toBe(3);
    expect(r.stdout.split("\n")).toEqual(["Linux", paths.a1.split("/")[2], ""]);
    const logs = mvm("instance", "logs", paths.a1);
    expect(logs.code).toBe(0);
    expect(logs.stdout).toContain(`MVM-READY ${paths.a1.split("/")[2]}`);
  });

  it("lets instances of one tenant reach each other", () => {
    expect(inGuest(paths.a1, `busybox ping -c 1 -W 3 ${ips.a2}`).code).toBe(0);
    expect(inGuest(paths.a2, `busybox ping -c 1 -W 3 ${ips.a1}`).code).toBe(0);
  });

  it("isolates tenants in both directions, also through the host", () => {
    expect(inGuest(paths.a1, `busybox ping -c 1 -W 2 ${ips.b1}`).code, "A1 → B1").not.toBe(0);
    expect(inGuest(paths.b1, `busybox ping -c 1 -W 2 ${ips.a1}`).code, "B1 → A1").not.toBe(0);
    expect(inGuest(paths.a1, `busybox nc -w 2 ${ips.b1} 22 </dev/null`).stdout, "A1 → B1 ssh").not.toContain("SSH");
    // The other tenant's gateway address lives on the host too; it must not be a way across.
    expect(inGuest(paths.a1, `busybox ping -c 1 -W 2 ${b.gateway}`).code, "A1 → B's gateway").not.toBe(0);
  });

  it("net verify reports a clean network, notices lost rules and repairs them with --fix", () => {
    expect(mvm("net", "verify").code).toBe(0);
    expect(inNetns(["nft", "delete", "table", "inet", "mvm"]).status).toBe(0);
    const broken = mvm("net", "verify", a.tenant);
    expect(broken.code).toBe(5);
    expect(broken.stdout).toMatch(/isolation/);
    expect(mvm("net", "verify", "--fix").code).toBe(0);
    expect(mvm("net", "verify").code).toBe(0);
    expect(inGuest(paths.a1, `busybox ping -c 1 -W 2 ${ips.b1}`).code, "A1 → B1 after repair").not.toBe(0);
    expect(inGuest(paths.a1, `busybox ping -c 1 -W 3 ${ips.a2}`).code, "A1 → A2 after repair").toBe(0);
  });

  it("lets a guest reach only its gateway's metadata port on the host", () => {
    listenInNetns(a.gateway, 8169);
    listenInNetns(a.gateway, 2222);
    const deadline = Date.now() + 10_000;
    const listening = () => inNetns(["ss", "-ltnH"]).stdout;
    while (!(listening().includes(`${a.gateway}:8169`) && listening().includes(`${a.gateway}:2222`)) && Date.now() < deadline) {
      spawnSync("sleep", ["0.1"]);
    }
    const metadata = inGuest(paths.a1, `busybox nc -w 3 ${a.gateway} 8169 </dev/null`);
    expect(metadata.stdout).toContain("hello");
    const other = inGuest(paths.a1, `busybox nc -w 3 ${a.gateway} 2222 </dev/null`);
    expect(other.stdout).not.toContain("hello");
  });

  it("places the VMM in its cgroup with the pool's memory limit", () => {
    const info = ok(mvm("instance", "info", paths.a1, "-o", "json"));
    const cgroups = readFileSync(`/proc/${info.vmm.pid}/cgroup`, "utf8");
    const memoryLine = cgroups.split("\n").find((l) => /(^|:)memory:/.test(l) || l.startsWith("0::"));
    expect(memoryLine).toContain(`/${a.tenant}/web/${info.instanceId}`);
    const stats = ok(mvm("instance", "stats", paths.a1, "-o", "json"));
    expect(stats.memoryLimitBytes).toBeGreaterThanOrEqual(256 * 1024 * 1024);
    expect(stats.memoryLimitBytes).toBeLessThan(1024 * 1024 * 1024);
  });

  it("keeps the data disk's files across stop and start, and stop releases TAP and cgroup", () => {
    expect(inGuest(paths.a1, "echo persisted > /data/hello && sync").code).toBe(0);
    const before = ok(mvm("instance", "info", paths.a1, "-o", "json"));
    const cgroupDir = memoryCgroupDir(before.vmm.pid);
    expect(existsSync(cgroupDir)).toBe(true);
    const stopped = ok(mvm("instance", "stop", paths.a1, "-o", "json"));
    expect(existsSync(cgroupDir)).toBe(false);
    expect(stopped.status).toBe("stopped");
    expect(processGone(before.vmm.pid, 3_000)).toBe(true);
    expect(inNetns(["ip", "link", "show", before.net.tapName]).status).not.toBe(0);
    ok(mvm("instance", "start", paths.a1, "-o", "json"));
    expect(inGuest(paths.a1, "cat /data/hello").stdout).toBe("persisted\n");
  }, 180_000);

  it("refuses a start over quota with ResourceExhausted and starts no process", () => {
    const extra = ok(mvm("instance", "create", `${b.tenant}/web`, "-o", "json"));
    const r = mvm("instance", "start", `${b.tenant}/web/${extra.instanceId}`);
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/max_running/);
    const after = ok(mvm("instance", "info", `${b.tenant}/web/${extra.instanceId}`, "-o", "json"));
    expect(after.status).toBe("created");
    expect(spawnSync("pgrep", ["-f", `-name ${extra.instanceId}`]).status).not.toBe(0);
    expect(mvm("instance", "destroy", `${b.tenant}/web/${extra.instanceId}`).code).toBe(0);
  });

  it("notices a VMM killed from outside and reports the instance stopped", () => {
    const info = ok(mvm("instance", "info", paths.a2, "-o", "json"));
    process.kill(info.vmm.pid, "SIGKILL");
    expect(processGone(info.vmm.pid, 3_000)).toBe(true);
    const after = ok(mvm("instance", "info", paths.a2, "-o", "json"));
    expect(after.status).toBe("stopped");
    expect(after.conditions.find((c: { type: string }) => c.type === "Ready").reason).toBe("VmmExited");
    expect(inNetns(["ip", "link", "show", info.net.tapName]).status).not.toBe(0);
  });

  it("releases the IP on destroy and gives it to the next instance", () => {
    const gone = ok(mvm("instance", "info", paths.a2, "-o", "json"));
    expect(mvm("instance", "destroy", paths.a2).code).toBe(0);
    const next = ok(mvm("instance", "create", `${a.tenant}/web`, "-o", "json"));
    expect(next.net.guestIp).toBe(gone.net.guestIp);
  });

  it("node gc finds what a crash during a start left (VMM, TAP, cgroup), removes it with --apply, and the instance starts again", () => {
    const created = ok(mvm("instance", "create", `${a.tenant}/web`, "-o", "json"));
    const path = `${a.tenant}/web/${created.instanceId}`;
    const started = ok(mvm("instance", "start", path, "-o", "json"));
    const pid: number = started.vmm.pid;
    const cgroupDir = memoryCgroupDir(pid);
    // What a kill -9 of the CLI after the VMM started, before its record said so, leaves: the old record.
    const recordFile = join(data.path, "tenants", a.tenant, "pools", "web", "instances", created.instanceId, "instance.json");
    const record = JSON.parse(readFileSync(recordFile, "utf8"));
    writeFileSync(recordFile, JSON.stringify({ ...record, status: "created", vmm: null }), { mode: 0o600 });

    const dry = ok(mvm("node", "gc", "-o", "json"));
    expect(dry.items.map((i: { kind: string; name: string }) => `${i.kind} ${i.name}`)).toEqual([
      `process pid ${pid}`,
      `tap ${created.net.tapName}`,
      `cgroup ${path}`,
    ]);
    expect(processGone(pid, 0)).toBe(false);

    const applied = ok(mvm("node", "gc", "--apply", "-o", "json"));
    expect(applied.items.map((i: { removed: boolean; error: string }) => [i.removed, i.error])).toEqual([
      [true, ""],
      [true, ""],
      [true, ""],
    ]);
    expect(processGone(pid, 3_000)).toBe(true);
    expect(inNetns(["ip", "link", "show", created.net.tapName]).status).not.toBe(0);
    expect(existsSync(cgroupDir)).toBe(false);
    expect(ok(mvm("node", "gc", "-o", "json")).items).toEqual([]);

    const again = ok(mvm("instance", "start", path, "-o", "json"));
    expect(again.status).toBe("running");
    expect(inGuest(path, "true").code).toBe(0);
    expect(mvm("instance", "destroy", path).code).toBe(0);
  }, 240_000);

  it("mvm dev runs a command in a fresh microVM and destroys it afterwards", () => {
    const r = mvm("dev", "--", "sh", "-c", "echo dev-$(hostname); exit 4");
    expect(r.code, r.stderr).toBe(4);
    expect(r.stdout).toMatch(/^dev-i-[0-9a-f]{8}\n$/);
    expect(ok<unknown[]>(mvm("instance", "list", "--tenant", "dev", "-o", "json"))).toEqual([]);
    expect(mvm("tenant", "destroy", "dev", "--force").code).toBe(0);
  }, 180_000);
});
