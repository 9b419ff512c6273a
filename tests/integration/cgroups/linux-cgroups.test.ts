// The cgroups adapter against the host's real cgroupfs (v1 on this project's machines, v2 on most hosts): a real
// process joins the groups, the kernel confirms it, and removal works once it is gone. Everything lives under a
// parent group named for this test process, removed in afterAll whatever happens.

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { isMvmError } from "../../../src/core/errors.js";
import { cgroupLimitsFor } from "../../../src/runtime/cgroups/cgroup-limits.js";
import { createCgroups } from "../../../src/runtime/cgroups/linux-cgroups.js";

const ROOT = "/sys/fs/cgroup";

function missingPrerequisite(): string | null {
  if (process.platform !== "linux") return "not linux";
  if (process.getuid?.() !== 0) return "needs root to create cgroups";
  if (existsSync(join(ROOT, "cgroup.controllers"))) {
    const available = readFileSync(join(ROOT, "cgroup.controllers"), "utf8").split(/\s+/);
    const lacking = ["memory", "cpu", "pids"].filter((c) => !available.includes(c));
    return lacking.length === 0 ? null : `cgroup v2 without ${lacking.join(", ")}`;
  }
  const lacking = ["memory", "cpu", "pids"].filter((c) => !existsSync(join(ROOT, c)));
  return lacking.length === 0 ? null : `cgroup v1 without ${lacking.join(", ")}`;
}

const skipReason = missingPrerequisite();
if (skipReason !== null) console.log(`skipping cgroup integration tests: ${skipReason}`);

const parent = `mvm-it-${process.pid}`;
const key = { tenantId: "acme", poolId: "web", instanceId: "i-0123abcd" };
const children: ChildProcess[] = [];

/** Removes whatever the test left under its parent group, deepest first (cgroupfs rmdir only takes empty groups). */
function removeTree(dir: string): void {
  if (!existsSync(dir)) return;
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) removeTree(path);
  }
  rmdirSync(dir);
}

function hierarchies(): string[] {
  if (existsSync(join(ROOT, "cgroup.controllers"))) return [ROOT];
  return ["memory", "cpu", "cpuacct", "pids"].map((c) => join(ROOT, c)).filter((p) => existsSync(p));
}

/** The group's CPU burst file, or null where the kernel has none (before 5.14). */
function burstFile(procsFiles: string[]): string | null {
  const group = dirname(procsFiles.find((f) => existsSync(join(dirname(f), "cpu.cfs_quota_us")) || existsSync(join(dirname(f), "cpu.max"))) as string);
  const file = ["cpu.cfs_burst_us", "cpu.max.burst"].map((name) => join(group, name)).find((path) => existsSync(path));
  return file ?? null;
}

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once("exit", () => r()));
}

/** Joins the groups first, burns a little CPU inside them, then becomes `sleep 30` (how the VMM launcher works). */
function spawnInGroups(procsFiles: string[]): ChildProcess {
  const script = 'for f; do echo $$ > "$f" || exit 9; done; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 30';
  const child = spawn("/bin/sh", ["-c", script, "sh", ...procsFiles], { stdio: "ignore" });
  children.push(child);
  return child;
}

describe.skipIf(skipReason !== null)("cgroups adapter on the host's cgroupfs", () => {
  afterAll(async () => {
    for (const child of children) {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        process.kill(child.pid, "SIGKILL");
        await exited(child);
      }
    }
    for (const h of hierarchies()) removeTree(join(h, parent));
  });

  it("places a real process in the instance's groups with the limits set, and removes them after it exits", async () => {
    const cg = createCgroups({ parent, removeWaitMs: 300 });
    const limits = cgroupLimitsFor({ vcpus: 1, memMib: 128 });
    const { procsFiles } = await cg.ensure(key, limits);
    expect(procsFiles.length).toBe(cg.version === 2 ? 1 : hierarchies().length);
    expect(await cg.limits(key)).toEqual({ ...limits, cpuBurstUs: burstFile(procsFiles) === null ? 0 : limits.cpuBurstUs });

    const child = spawnInGroups(procsFiles);
    const pid = child.pid as number;
    // Wait for the shell to have exec'd sleep: then it is in its groups and has run inside them.
    const deadline = Date.now() + 5000;
    while (!readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith("sleep") && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(readFileSync(`/proc/${pid}/cmdline`, "utf8")).toMatch(/^sleep\0/);

    const membership = readFileSync(`/proc/${pid}/cgroup`, "utf8").trim().split("\n");
    const groupPath = `/${parent}/acme/web/i-0123abcd`;
    if (cg.version === 2) {
      expect(membership).toContain(`0::${groupPath}`);
    } else {
      for (const controller of ["memory", "cpu", "pids"]) {
        expect(membership.some((line) => line.split(":")[1]?.split(",").includes(controller) && line.endsWith(`:${groupPath}`))).toBe(true);
      }
    }
    for (const file of procsFiles) expect(readFileSync(file, "utf8").split("\n")).toContain(String(pid));

    const usage = await cg.usage(key);
    expect(usage).not.toBeNull();
    expect(usage!.cpuUsageUs).toBeGreaterThan(0);
    expect(usage!.memoryBytes).toBeGreaterThan(0);

    // While the process lives, removal waits and then refuses, naming it.
    const busy = await cg.remove(key).catch((e: unknown) => e);
    expect(isMvmError(busy) && busy.kind).toBe("failed_precondition");
    expect((busy as Error).message).toContain(`still holds processes ${pid}`);

    process.kill(pid, "SIGKILL");
    await exited(child);
    await cg.remove(key);
    await cg.remove(key);
    for (const h of hierarchies()) {
      expect(existsSync(join(h, parent, "acme"))).toBe(false);
    }
    expect(await cg.usage(key)).toBeNull();
    expect(await cg.limits(key)).toBeNull();
  });

  it("lowers a group's CPU quota below the burst in force, and lets a busy group burst beyond its quota", async (context) => {
    const cg = createCgroups({ parent, removeWaitMs: 3000 });
    const k = { ...key, instanceId: "i-0000b005" };
    const { procsFiles } = await cg.ensure(k, cgroupLimitsFor({ vcpus: 2, memMib: 64 }));
    const burst = burstFile(procsFiles);
    if (burst === null) {
      await cg.remove(k);
      context.skip("this kernel has no CPU burst (5.14 and later)");
    }
    expect(readFileSync(burst!, "utf8").trim()).toBe("200000");
    // The kernel refuses a quota below the burst in force: the adapter clears the burst first.
    const small = { ...cgroupLimitsFor({ vcpus: 1, memMib: 64 }), cpuQuotaUs: 20_000, cpuBurstUs: 20_000 };
    await cg.ensure(k, small);
    expect(await cg.limits(k)).toEqual(small);

    // One busy loop wants a whole CPU; the group gets 20 ms per 100 ms plus what it saved while idle, so within a
    // few periods the kernel both throttles it and counts a burst.
    const child = spawn("/bin/sh", ["-c", 'for f; do echo $$ > "$f" || exit 9; done; while :; do :; done', "sh", ...procsFiles], { stdio: "ignore" });
    children.push(child);
    const stat = join(dirname(burst!), "cpu.stat");
    const counters = () => Object.fromEntries(readFileSync(stat, "utf8").trim().split("\n").map((line) => line.split(" ")).map(([name, value]) => [name, Number(value)]));
    const deadline = Date.now() + 10_000;
    while (!(counters().nr_bursts! > 0 && counters().nr_throttled! > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    process.kill(child.pid as number, "SIGKILL");
    await exited(child);
    expect(counters().nr_bursts).toBeGreaterThan(0);
    expect(counters().nr_throttled).toBeGreaterThan(0);
    await cg.remove(k);
  });

  it("lists the instance groups under its parent, names the processes in one and kills them all, a forked child too", async () => {
    const cg = createCgroups({ parent, removeWaitMs: 300 });
    const other = { tenantId: "beta", poolId: "db", instanceId: "i-0000d00d" };
    const { procsFiles } = await cg.ensure(key, cgroupLimitsFor({ vcpus: 1, memMib: 64 }));
    await cg.ensure(other, cgroupLimitsFor({ vcpus: 1, memMib: 64 }));
    // A group whose name is no instance ID is not mvm's and is not listed.
    for (const h of hierarchies()) mkdirSync(join(h, parent, "acme", "web", "not-an-instance"), { recursive: true });
    expect((await cg.list()).sort((a, b) => a.tenantId.localeCompare(b.tenantId))).toEqual([key, other]);

    // A shell that forks a child, both inside the groups.
    const script = 'for f; do echo $$ > "$f" || exit 9; done; sleep 30 & wait';
    const child = spawn("/bin/sh", ["-c", script, "sh", ...procsFiles], { stdio: "ignore" });
    children.push(child);
    const deadline = Date.now() + 5000;
    while ((await cg.processes(key)).length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const pids = await cg.processes(key);
    expect(pids).toHaveLength(2);
    expect(pids).toContain(child.pid);
    expect(await cg.processes(other)).toEqual([]);

    expect(await cg.killProcesses(key, 5000)).toEqual(pids);
    await exited(child);
    expect(child.signalCode).toBe("SIGKILL");
    expect(await cg.processes(key)).toEqual([]);
    for (const pid of pids) expect(existsSync(`/proc/${pid}/cmdline`) && readFileSync(`/proc/${pid}/cmdline`, "utf8")).toBeFalsy();
    for (const h of hierarchies()) rmdirSync(join(h, parent, "acme", "web", "not-an-instance"));
    await cg.remove(key);
    await cg.remove(other);
    expect(await cg.list()).toEqual([]);
  });

  it("enforces the pids limit on processes in the group", async () => {
    const cg = createCgroups({ parent, removeWaitMs: 3000 });
    // Five background children plus the shell: fine under 64 tasks, a failed fork under 3 (dash then exits 2).
    const script = 'for f; do echo $$ > "$f" || exit 9; done; for i in 1 2 3 4 5; do sleep 0.5 & done; wait';
    const outcomes: { exitCode: number | null; stderr: string; events: string }[] = [];
    for (const [instanceId, pidsMax] of [["i-0000beef", 64], ["i-0000cafe", 3]] as const) {
      const k = { ...key, instanceId };
      const { procsFiles } = await cg.ensure(k, { ...cgroupLimitsFor({ vcpus: 1, memMib: 64 }), pidsMax });
      const child = spawn("/bin/sh", ["-c", script, "sh", ...procsFiles], { stdio: ["ignore", "ignore", "pipe"] });
      children.push(child);
      let stderr = "";
      child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
      await exited(child);
      const pidsDir = dirname(procsFiles.find((f) => cg.version === 2 || f.startsWith(join(ROOT, "pids"))) as string);
      outcomes.push({ exitCode: child.exitCode, stderr, events: readFileSync(join(pidsDir, "pids.events"), "utf8").trim() });
      await cg.remove(k);
    }
    expect(outcomes[0]).toEqual({ exitCode: 0, stderr: "", events: "max 0" });
    expect(outcomes[1]?.exitCode).not.toBe(0);
    expect(outcomes[1]?.stderr).toMatch(/fork/i);
    expect(outcomes[1]?.events).not.toBe("max 0");
  });
});
