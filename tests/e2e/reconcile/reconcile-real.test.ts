// Reconcile with real microVMs (QEMU under TCG), through `mvm agent reconcile`, inside a network namespace this test
// creates and deletes: a pool converges to running 2 / warm 1 / sleeping 1; lowering running to 1 stops the most
// idle; pruning a tenant leaves no bridge, TAP, cgroup, process or file of it.

import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bridgeName } from "../../../src/core/naming.js";
import { REPO_ROOT, tempDataDir } from "../../helpers/mvm-cli.js";

const isRoot = process.getuid?.() === 0;
const hasQemu = existsSync("/usr/bin/qemu-system-x86_64");
const skipReason = !isRoot ? "needs root (bridges, TAPs, cgroups)" : !hasQemu ? "qemu-system-x86_64 is not installed" : null;
if (skipReason) console.log(`skipping reconcile e2e: ${skipReason}`);

const NETNS = `mvm-rec-${process.pid}`;
const IMAGE_CACHE = join(REPO_ROOT, ".cache/test-images");
const KEEP = { tenant: "keep", netId: 212, subnet: "10.212.1.0/24" };
const DOOMED = { tenant: "doomed", netId: 213, subnet: "10.212.2.0/24" };
let data: ReturnType<typeof tempDataDir>;
let docs: ReturnType<typeof tempDataDir>;
let nodeId = "";

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function mvm(...args: string[]): Run {
  const r = spawnSync(process.execPath, [join(REPO_ROOT, "bin/mvm"), "--data-dir", data.path, ...args], {
    encoding: "utf8",
    env: { ...process.env, MVM_NETNS: NETNS, MVM_IMAGE_CACHE: IMAGE_CACHE, MVM_BOOT_TIMEOUT_MS: "120000" },
    timeout: 540_000,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function reconcile(doc: object): any {
  const file = join(docs.path, `desired-${Date.now()}.json`);
  writeFileSync(file, JSON.stringify(doc));
  const r = mvm("agent", "reconcile", "--desired", file, "-o", "json");
  expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
  return JSON.parse(r.stdout);
}

function document(keepRunning: number, withDoomed: boolean): object {
  const pool = (id: string, counts: object) => ({ pool_id: id, image: { debian: { suite: "bookworm" } }, resources: { vcpus: 1, mem_mib: 256 }, desired_counts: counts });
  return {
    schema_version: 1,
    node_id: nodeId,
    prune_unknown_tenants: !withDoomed,
    tenants: [
      { tenant_id: KEEP.tenant, network: { net_id: KEEP.netId, ipv4_subnet: KEEP.subnet }, pools: [pool("web", { running: keepRunning, warm: 1, sleeping: 1 })] },
      ...(withDoomed ? [{ tenant_id: DOOMED.tenant, network: { net_id: DOOMED.netId, ipv4_subnet: DOOMED.subnet }, pools: [pool("p", { running: 1 })] }] : []),
    ],
  };
}

function instances(tenant: string, pool: string): any[] {
  const r = mvm("instance", "list", "--tenant", tenant, "--pool", pool, "-o", "json");
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

function statusCounts(list: readonly any[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const i of list) counts[i.status] = (counts[i.status] ?? 0) + 1;
  return counts;
}

function alive(pid: number): boolean {
  try {
    const state = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0];
    return state !== "Z";
  } catch {
    return false;
  }
}

function waitGone(pid: number): boolean {
  const deadline = Date.now() + 5_000;
  while (alive(pid)) {
    if (Date.now() > deadline) return false;
    spawnSync("sleep", ["0.1"]);
  }
  return true;
}

function links(): string {
  return spawnSync("ip", ["-n", NETNS, "-o", "link", "show"], { encoding: "utf8" }).stdout;
}

describe.skipIf(skipReason !== null)("reconcile: real microVMs", () => {
  let doomedPids: number[] = [];
  let doomedTaps: string[] = [];

  beforeAll(() => {
    data = tempDataDir();
    docs = tempDataDir();
    execFileSync("ip", ["netns", "add", NETNS]);
    execFileSync("ip", ["-n", NETNS, "link", "set", "lo", "up"]);
    const info = mvm("node", "info", "-o", "json");
    expect(info.code, info.stderr).toBe(0);
    nodeId = JSON.parse(info.stdout).nodeId;
  }, 30_000);

  afterAll(() => {
    if (data) {
      for (const t of [KEEP.tenant, DOOMED.tenant]) mvm("tenant", "destroy", t, "--force");
      const leftovers = spawnSync("pgrep", ["-f", `qemu-system-x86_64 -name i-.*${data.path}`], { encoding: "utf8" }).stdout;
      for (const pid of leftovers.split("\n").filter(Boolean)) process.kill(Number(pid), "SIGKILL");
      data.cleanup();
    }
    docs?.cleanup();
    spawnSync("ip", ["netns", "delete", NETNS]);
  }, 180_000);

  it("converges a pool to running 2 / warm 1 / sleeping 1, and a second pass takes no step", () => {
    const report = reconcile(document(2, true));
    expect(report.converged).toBe(true);
    const web = instances(KEEP.tenant, "web");
    expect(statusCounts(web)).toEqual({ running: 2, warm: 1, sleeping: 1 });
    for (const i of web.filter((x) => x.status === "running" || x.status === "warm")) expect(alive(i.vmm.pid)).toBe(true);
    const doomed = instances(DOOMED.tenant, "p");
    expect(statusCounts(doomed)).toEqual({ running: 1 });
    doomedPids = doomed.map((i) => i.vmm.pid);
    doomedTaps = doomed.map((i) => i.net.tapName);
    expect(links()).toContain(bridgeName(DOOMED.netId));

    const again = reconcile(document(2, true));
    expect(again).toMatchObject({ converged: true, results: [] });
  }, 600_000);

  it("lowering running to 1 stops the most idle instance; pruning a tenant leaves nothing of it", () => {
    const running = instances(KEEP.tenant, "web").filter((i) => i.status === "running").sort((x, y) => (x.instanceId < y.instanceId ? -1 : 1));
    expect(running).toHaveLength(2);
    // The later ID is the idle one, so that the ID tie-break alone would pick the other.
    const idle = running[1];
    const recordPath = join(data.path, "tenants", KEEP.tenant, "pools", "web", "instances", idle.instanceId, "instance.json");
    const record = JSON.parse(readFileSync(recordPath, "utf8"));
    writeFileSync(recordPath, JSON.stringify({ ...record, idle: { ...record.idle, idleS: 900 } }));

    const report = reconcile(document(1, false));
    expect(report.converged).toBe(true);
    const kinds = report.results.map((r: any) => [r.step.kind, r.step.target.instanceId ?? r.step.target.tenantId]);
    expect(kinds).toEqual([["update_pool", KEEP.tenant], ["stop_instance", idle.instanceId], ["delete_tenant", DOOMED.tenant]]);
    const web = instances(KEEP.tenant, "web");
    expect(statusCounts(web)).toEqual({ running: 1, warm: 1, sleeping: 1, stopped: 1 });
    expect(web.find((i) => i.instanceId === idle.instanceId).status).toBe("stopped");
    expect(waitGone(idle.vmm.pid)).toBe(true);

    // Nothing of the pruned tenant is left: bridge, TAPs, cgroups, VMM processes, files.
    const after = links();
    expect(after).not.toContain(`${bridgeName(DOOMED.netId)}:`);
    for (const tap of doomedTaps) expect(after).not.toContain(`${tap}:`);
    for (const pid of doomedPids) expect(waitGone(pid)).toBe(true);
    const cgroups = spawnSync("find", ["/sys/fs/cgroup", "-maxdepth", "6", "-type", "d", "-name", `*${DOOMED.tenant}*`], { encoding: "utf8" }).stdout;
    expect(cgroups.trim()).toBe("");
    expect(existsSync(join(data.path, "tenants", DOOMED.tenant))).toBe(false);
    expect(readdirSync(join(data.path, "tenants"))).toEqual([KEEP.tenant]);
    expect(mvm("tenant", "info", DOOMED.tenant).code).toBe(3);
  }, 600_000);
});
