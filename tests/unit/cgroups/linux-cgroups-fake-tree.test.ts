// The cgroups adapter against directories laid out like cgroupfs (v1 with separate or co-mounted cpu/cpuacct, and
// v2), so both versions are exercised on any host. The real v1 tree is in tests/integration/cgroups.
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { isMvmError } from "../../../src/core/errors.js";
import { cgroupLimitsFor } from "../../../src/runtime/cgroups/cgroup-limits.js";
import { createCgroups, removeCgroupParent } from "../../../src/runtime/cgroups/linux-cgroups.js";

const key = { tenantId: "acme", poolId: "web", instanceId: "i-0123abcd" };
const sibling = { ...key, instanceId: "i-0000beef" };
const limits = cgroupLimitsFor({ vcpus: 2, memMib: 256 });

const roots: string[] = [];
afterEach(async () => {
  for (const r of roots.splice(0)) await rm(r, { recursive: true, force: true });
});

async function tempRoot(): Promise<string> {
  const r = await mkdtemp(join(tmpdir(), "mvm-cgroup-"));
  roots.push(r);
  return r;
}

async function v1Tree(options: { coMountCpuacct?: boolean; cpuacct?: boolean } = {}): Promise<string> {
  const root = await tempRoot();
  for (const c of ["memory", "pids", "cpuset"]) await mkdir(join(root, c));
  if (options.coMountCpuacct) {
    await mkdir(join(root, "cpu,cpuacct"));
    await symlink("cpu,cpuacct", join(root, "cpu"));
    await symlink("cpu,cpuacct", join(root, "cpuacct"));
  } else {
    await mkdir(join(root, "cpu"));
    if (options.cpuacct !== false) await mkdir(join(root, "cpuacct"));
  }
  return root;
}

async function v2Tree(controllers = "cpuset cpu io memory hugetlb pids rdma misc"): Promise<string> {
  const root = await tempRoot();
  await writeFile(join(root, "cgroup.controllers"), `${controllers}\n`);
  await writeFile(join(root, "cgroup.subtree_control"), "");
  return root;
}

const read = (path: string) => readFile(path, "utf8");

/** The group directory ahead of `ensure`, with the burst file a kernel of 5.14 or later puts in every group. */
async function withBurstFile(group: string, file: string): Promise<void> {
  await mkdir(group, { recursive: true });
  await writeFile(join(group, file), "0\n");
}

describe("cgroups adapter on a v1 layout", () => {
  it("creates the group in every controller with the limits written, and returns one procs file each", async () => {
    const root = await v1Tree();
    const cg = createCgroups({ root });
    expect(cg.version).toBe(1);
    const rel = "mvm/acme/web/i-0123abcd";
    // cgroupfs makes a group's control files with it; of those only the burst is never created by a write.
    await withBurstFile(join(root, "cpu", rel), "cpu.cfs_burst_us");
    const { procsFiles } = await cg.ensure(key, limits);
    expect(procsFiles).toEqual(["memory", "cpu", "pids", "cpuacct"].map((c) => join(root, c, rel, "cgroup.procs")));
    expect(await read(join(root, "memory", rel, "memory.limit_in_bytes"))).toBe(String(limits.memoryBytes));
    expect(await read(join(root, "cpu", rel, "cpu.cfs_period_us"))).toBe("100000");
    expect(await read(join(root, "cpu", rel, "cpu.cfs_quota_us"))).toBe("200000");
    expect(await read(join(root, "cpu", rel, "cpu.cfs_burst_us"))).toBe("200000");
    expect(await read(join(root, "pids", rel, "pids.max"))).toBe("64");
    // Controllers mvm does not use are left alone.
    expect(await readdir(join(root, "cpuset"))).toEqual([]);
    expect(await cg.limits(key)).toEqual(limits);
  });

  it("leaves out the burst where the kernel has no file for it (before 5.14) and reads it back as none", async () => {
    const root = await v1Tree();
    const cg = createCgroups({ root });
    await cg.ensure(key, limits);
    const cpu = join(root, "cpu", "mvm/acme/web/i-0123abcd");
    expect(existsSync(join(cpu, "cpu.cfs_burst_us"))).toBe(false);
    expect(await read(join(cpu, "cpu.cfs_quota_us"))).toBe("200000");
    expect(await cg.limits(key)).toEqual({ ...limits, cpuBurstUs: 0 });
  });

  it("uses one directory for co-mounted cpu and cpuacct", async () => {
    const root = await v1Tree({ coMountCpuacct: true });
    const { procsFiles } = await createCgroups({ root, parent: "mvm-x" }).ensure(key, limits);
    expect(procsFiles).toEqual(["memory", "cpu", "pids"].map((c) => join(root, c, "mvm-x/acme/web/i-0123abcd", "cgroup.procs")));
    expect(await read(join(root, "cpu,cpuacct", "mvm-x/acme/web/i-0123abcd", "cpu.cfs_quota_us"))).toBe("200000");
  });

  it("reads usage from cpuacct (ns → µs) and memory, and null for an unknown instance", async () => {
    const root = await v1Tree();
    const cg = createCgroups({ root });
    await cg.ensure(key, limits);
    const rel = "mvm/acme/web/i-0123abcd";
    await writeFile(join(root, "cpuacct", rel, "cpuacct.usage"), "123456789\n");
    await writeFile(join(root, "memory", rel, "memory.usage_in_bytes"), "52428800\n");
    expect(await cg.usage(key)).toEqual({ cpuUsageUs: 123456, memoryBytes: 52428800 });
    expect(await cg.usage(sibling)).toBeNull();
    expect(await cg.limits(sibling)).toBeNull();
  });

  it("falls back to cpu.stat usage_usec without a cpuacct hierarchy", async () => {
    const root = await v1Tree({ cpuacct: false });
    const cg = createCgroups({ root });
    const { procsFiles } = await cg.ensure(key, limits);
    expect(procsFiles).toHaveLength(3);
    const rel = "mvm/acme/web/i-0123abcd";
    await writeFile(join(root, "cpu", rel, "cpu.stat"), "usage_usec 777\nnr_periods 3\n");
    await writeFile(join(root, "memory", rel, "memory.usage_in_bytes"), "4096\n");
    expect(await cg.usage(key)).toEqual({ cpuUsageUs: 777, memoryBytes: 4096 });
  });

  it("says which controller is not mounted", async () => {
    const root = await tempRoot();
    await mkdir(join(root, "memory"));
    await mkdir(join(root, "cpu"));
    const err = await createCgroups({ root }).ensure(key, limits).catch((e: unknown) => e);
    expect(isMvmError(err) && err.kind).toBe("failed_precondition");
    expect((err as Error).message).toBe(`cgroup v1 controller pids is not mounted at ${join(root, "pids")}`);
  });

  it("removes the instance leaf-first and the empty pool and tenant groups with it, but keeps busy parents", async () => {
    const root = await v1Tree();
    const cg = createCgroups({ root });
    await cg.ensure(key, limits);
    await cg.ensure(sibling, limits);
    await cg.remove(key);
    for (const c of ["memory", "cpu", "pids", "cpuacct"]) {
      expect(existsSync(join(root, c, "mvm/acme/web/i-0123abcd"))).toBe(false);
      expect(existsSync(join(root, c, "mvm/acme/web/i-0000beef"))).toBe(true);
    }
    await cg.remove(sibling);
    await cg.remove(sibling);
    for (const c of ["memory", "cpu", "pids", "cpuacct"]) {
      expect(existsSync(join(root, c, "mvm/acme"))).toBe(false);
      // The parent group stays for the next tenant.
      expect(existsSync(join(root, c, "mvm"))).toBe(true);
    }
  });

  it("refuses to remove a group that still holds processes, after waiting for them", async () => {
    const root = await v1Tree();
    const cg = createCgroups({ root, removeWaitMs: 120 });
    const { procsFiles } = await cg.ensure(key, limits);
    await writeFile(procsFiles[0] as string, "4242\n");
    const started = Date.now();
    const err = await cg.remove(key).catch((e: unknown) => e);
    expect(Date.now() - started).toBeGreaterThanOrEqual(100);
    expect(isMvmError(err) && err.kind).toBe("failed_precondition");
    expect((err as Error).message).toMatch(/cgroup .*memory\/mvm\/acme\/web\/i-0123abcd still holds processes 4242; stop them/);
    expect(existsSync(join(root, "memory/mvm/acme/web/i-0123abcd"))).toBe(true);
  });
});

describe("cgroups adapter on a v2 layout", () => {
  it("enables memory, cpu and pids down the path and writes the limits into the one leaf", async () => {
    const root = await v2Tree();
    const cg = createCgroups({ root });
    expect(cg.version).toBe(2);
    const leaf = join(root, "mvm/acme/web/i-0123abcd");
    await withBurstFile(leaf, "cpu.max.burst");
    const { procsFiles } = await cg.ensure(key, limits);
    expect(procsFiles).toEqual([join(leaf, "cgroup.procs")]);
    for (const dir of ["", "mvm", "mvm/acme", "mvm/acme/web"]) {
      const enabled = (await read(join(root, dir, "cgroup.subtree_control"))).split(" ").sort();
      expect(enabled).toEqual(["+cpu", "+memory", "+pids"]);
    }
    // The leaf holds the VMM: v2 forbids processes in a group that enables controllers for children.
    expect(existsSync(join(leaf, "cgroup.subtree_control"))).toBe(false);
    expect(await read(join(leaf, "memory.max"))).toBe(String(limits.memoryBytes));
    expect(await read(join(leaf, "cpu.max"))).toBe("200000 100000");
    expect(await read(join(leaf, "cpu.max.burst"))).toBe("200000");
    expect(await read(join(leaf, "pids.max"))).toBe("64");
    expect(await cg.limits(key)).toEqual(limits);
  });

  it("leaves out the burst where the kernel has no cpu.max.burst", async () => {
    const root = await v2Tree();
    const cg = createCgroups({ root });
    await cg.ensure(key, limits);
    expect(existsSync(join(root, "mvm/acme/web/i-0123abcd", "cpu.max.burst"))).toBe(false);
    expect(await cg.limits(key)).toEqual({ ...limits, cpuBurstUs: 0 });
  });

  it("writes only the controllers a level lacks", async () => {
    const root = await v2Tree();
    await writeFile(join(root, "cgroup.subtree_control"), "cpu memory\n");
    await createCgroups({ root }).ensure(key, limits);
    expect(await read(join(root, "cgroup.subtree_control"))).toBe("+pids");
  });

  it("refuses when the root does not offer a controller", async () => {
    const root = await v2Tree("cpuset io memory");
    await expect(createCgroups({ root }).ensure(key, limits)).rejects.toThrow(
      `cgroup v2 controllers cpu, pids are not available at ${root} (cgroup.controllers: cpuset io memory)`,
    );
  });

  it("reads usage from cpu.stat and memory.current", async () => {
    const root = await v2Tree();
    const cg = createCgroups({ root });
    await cg.ensure(key, limits);
    const leaf = join(root, "mvm/acme/web/i-0123abcd");
    await writeFile(join(leaf, "cpu.stat"), "usage_usec 81234\nuser_usec 60000\nsystem_usec 21234\n");
    await writeFile(join(leaf, "memory.current"), "104857600\n");
    expect(await cg.usage(key)).toEqual({ cpuUsageUs: 81234, memoryBytes: 104857600 });
  });

  it("removes the leaf and the empty parents, idempotently", async () => {
    const root = await v2Tree();
    const cg = createCgroups({ root });
    await cg.ensure(key, limits);
    await cg.remove(key);
    await cg.remove(key);
    expect(existsSync(join(root, "mvm/acme"))).toBe(false);
    expect(existsSync(join(root, "mvm"))).toBe(true);
    expect(await cg.usage(key)).toBeNull();
  });

  it("validates keys and limits before touching the tree", async () => {
    const root = await v2Tree();
    const cg = createCgroups({ root });
    await expect(cg.ensure({ ...key, tenantId: "../../etc" }, limits)).rejects.toThrow(/tenant_id/);
    await expect(cg.ensure(key, { ...limits, pidsMax: 0 })).rejects.toThrow(/pids_max/);
    expect(await readdir(root)).toEqual(["cgroup.controllers", "cgroup.subtree_control"]);
    expect(() => createCgroups({ root, parent: "a/b" })).toThrow(/parent: must be/);
  });
});

describe("removing a run's own cgroup parent", () => {
  // On cgroupfs a group is a directory whose control files go with it; here the groups are bare directories.
  it("removes the parent and its groups in every v1 hierarchy, co-mounted ones once, and leaves other parents", async () => {
    const root = await v1Tree({ coMountCpuacct: true });
    for (const c of ["memory", "pids", "cpu,cpuacct"]) {
      await mkdir(join(root, c, "mvm-run-1", "acme", "web", "i-0123abcd"), { recursive: true });
      await mkdir(join(root, c, "mvm"), { recursive: true });
    }
    expect(removeCgroupParent("mvm-run-1", root)).toEqual([]);
    for (const c of ["memory", "pids", "cpu,cpuacct"]) {
      expect(existsSync(join(root, c, "mvm-run-1"))).toBe(false);
      expect(existsSync(join(root, c, "mvm"))).toBe(true);
    }
    // Nothing there: nothing to do.
    expect(removeCgroupParent("mvm-run-1", root)).toEqual([]);
  });

  it("reports a group that cannot go and still removes the others (v2)", async () => {
    const root = await v2Tree();
    await mkdir(join(root, "mvm-run-2", "acme", "web", "i-0123abcd"), { recursive: true });
    await mkdir(join(root, "mvm-run-2", "acme", "web", "i-0000beef"), { recursive: true });
    // Stands in for a group with a process still inside: rmdir refuses it.
    await writeFile(join(root, "mvm-run-2", "acme", "web", "i-0000beef", "cgroup.procs"), "123\n");
    const web = join(root, "mvm-run-2", "acme", "web");
    expect(removeCgroupParent("mvm-run-2", root)).toEqual([join(web, "i-0000beef"), web, join(root, "mvm-run-2", "acme"), join(root, "mvm-run-2")]);
    expect(existsSync(join(root, "mvm-run-2", "acme", "web", "i-0123abcd"))).toBe(false);
  });

  it("refuses a parent that is not one directory name", () => {
    expect(() => removeCgroupParent("../etc", "/nonexistent")).toThrow(/parent: must be 1-64 characters/);
  });
});

