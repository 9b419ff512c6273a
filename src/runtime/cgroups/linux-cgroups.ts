// The `Cgroups` port on cgroupfs, v1 or v2, found by looking at the root: a v2 tree has `cgroup.controllers` there.
// Works against any directory laid out like cgroupfs, which is how v2 is tested on a v1 host: on an ordinary
// filesystem the control files are plain files, so removal clears them before rmdir (cgroupfs needs no such step).
//
// Limits are written when the group is made, before any process joins: a VMM must never run unconstrained, and
// v1 refuses to lower a memory limit below what is already in use.

import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmdirSync, statSync, writeFileSync } from "node:fs";
import { readdir, readFile, rmdir, stat, unlink } from "node:fs/promises";
import { basename, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { CgroupKey, CgroupLimits, CgroupUsage, Cgroups } from "../../core/data-plane-ports.js";
import { failedPrecondition, invalid, MvmError } from "../../core/errors.js";
import { isValidId, isValidInstanceId } from "../../core/ids.js";
import {
  V1_ACCOUNTING_CONTROLLER,
  V1_CPU_BURST_FILE,
  V1_REQUIRED_CONTROLLERS,
  V2_CONTROLLERS,
  V2_CPU_BURST_FILE,
  cgroupSegments,
  checkLimits,
  missingControllers,
  parentViolations,
  parseCpuMax,
  parseCpuStatUsageUs,
  parseCpuacctUsageUs,
  parseLimitValue,
  parseProcs,
  v1LimitWrites,
  v2LimitWrites,
  type LimitFileWrite,
  type V1Controller,
} from "./cgroup-files.js";

export interface CgroupsOptions {
  /** Where cgroupfs is mounted: the v2 tree, or the directory holding one hierarchy per v1 controller. Default `/sys/fs/cgroup`. */
  root?: string;
  /** Group all of mvm's groups are nested under (`<parent>/<tenant>/<pool>/<instance>`). Default `mvm`. */
  parent?: string;
  /** How long `remove` waits for processes to leave a group before it gives up, ms. Default 2000. */
  removeWaitMs?: number;
}

export const DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup";
export const DEFAULT_CGROUP_PARENT = "mvm";
const DEFAULT_REMOVE_WAIT_MS = 2000;
const REMOVE_POLL_MS = 50;

/** One v1 hierarchy the instance is placed in. Co-mounted controllers (`cpu,cpuacct`) share one. */
interface V1Hierarchy {
  controllers: V1Controller[];
  base: string;
}

function errorCode(e: unknown): string | undefined {
  return typeof e === "object" && e !== null && "code" in e ? String((e as { code: unknown }).code) : undefined;
}

function ioError(action: string, path: string, e: unknown): MvmError {
  const why = e instanceof Error ? e.message : String(e);
  return new MvmError("unavailable", `${action} ${path}: ${why}`, [], { cause: e });
}

// Reads, writes and mkdirs in the cgroup file system are synchronous: they are kernel bookkeeping that never touches
// a disk and returns in microseconds, while each asynchronous call waits its turn in the thread pool behind whatever
// else a start or wake is doing at the same time (network, disks, the snapshot hash): ~30 ms for one ensure.

async function readText(path: string): Promise<string> {
  try {
    return readFileSync(path, "utf8");
  } catch (e) {
    throw ioError("reading", path, e);
  }
}

async function writeText(path: string, value: string): Promise<void> {
  try {
    writeFileSync(path, value);
  } catch (e) {
    const hint = errorCode(e) === "EBUSY" ? " (a memory limit below current usage is refused)" : "";
    throw new MvmError("unavailable", `writing "${value}" to ${path}: ${e instanceof Error ? e.message : String(e)}${hint}`, [], { cause: e });
  }
}

/** Writes one limit file; one the kernel may lack (`optional`) is left alone where it does not exist. */
async function writeLimit(path: string, write: LimitFileWrite): Promise<void> {
  if (write.optional !== true) return writeText(path, write.value);
  try {
    // r+: never create the file (a real cgroupfs refuses to anyway; a directory laid out like one would not).
    writeFileSync(path, write.value, { flag: "r+" });
  } catch (e) {
    if (errorCode(e) === "ENOENT") return;
    throw new MvmError("unavailable", `writing "${write.value}" to ${path}: ${e instanceof Error ? e.message : String(e)}`, [], { cause: e });
  }
}

/** An optional limit file's value, or `absent` where the kernel does not have the file. */
async function readOptionalLimit(path: string, absent: number): Promise<number> {
  try {
    return parseLimitValue(await readFile(path, "utf8"), basename(path));
  } catch (e) {
    if (errorCode(e) === "ENOENT") return absent;
    throw ioError("reading", path, e);
  }
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch (e) {
    if (errorCode(e) === "ENOENT") return false;
    throw ioError("inspecting", path, e);
  }
}

async function subdirectories(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  return entries.filter((e) => e.isDirectory()).map((e) => e.name);
}

/** Only a stand-in tree on an ordinary filesystem refuses rmdir for its control files: clear them. */
async function clearStandInFiles(dir: string): Promise<void> {
  const entries = await readdir(dir, { withFileTypes: true });
  for (const e of entries) if (e.isFile()) await unlink(join(dir, e.name));
}

/** Processes in a group; none when the group or its procs file (in a stand-in tree) is absent. */
async function groupProcesses(dir: string): Promise<number[]> {
  try {
    return parseProcs(await readFile(join(dir, "cgroup.procs"), "utf8"));
  } catch (e) {
    if (errorCode(e) === "ENOENT") return [];
    throw ioError("reading", join(dir, "cgroup.procs"), e);
  }
}

/** Removes a leaf group once it is empty; waits up to `waitMs` for its processes to go. Idempotent. */
async function removeLeaf(dir: string, waitMs: number): Promise<void> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    if (!(await isDirectory(dir))) return;
    const pids = await groupProcesses(dir);
    const children = await subdirectories(dir);
    if (children.length > 0) {
      throw failedPrecondition(`cgroup ${dir} has child groups (${children.join(", ")}); it is not an instance group`);
    }
    if (pids.length === 0) {
      try {
        await rmdir(dir);
        return;
      } catch (e) {
        const code = errorCode(e);
        if (code === "ENOENT") return;
        if (code === "ENOTEMPTY") {
          await clearStandInFiles(dir);
          continue;
        }
        // EBUSY: a process is still leaving (exiting, not yet reaped); wait like for a listed one.
        if (code !== "EBUSY") throw ioError("removing", dir, e);
      }
    }
    if (Date.now() >= deadline) {
      const who = pids.length > 0 ? `processes ${pids.join(", ")}` : "a process that is still exiting";
      throw failedPrecondition(`cgroup ${dir} still holds ${who}; stop them before removing the group`);
    }
    await sleep(REMOVE_POLL_MS);
  }
}

/** Removes a tenant or pool group when no other group is left in it; a busy or repopulated one is left alone. */
async function pruneParent(dir: string): Promise<void> {
  for (let attempt = 0; attempt < 2; attempt++) {
    if (!(await isDirectory(dir))) return;
    if ((await subdirectories(dir)).length > 0) return;
    try {
      await rmdir(dir);
      return;
    } catch (e) {
      const code = errorCode(e);
      if (code === "ENOENT" || code === "EBUSY") return;
      if (code !== "ENOTEMPTY") throw ioError("removing", dir, e);
      await clearStandInFiles(dir);
    }
  }
}

async function makeDirectory(path: string): Promise<void> {
  try {
    mkdirSync(path, { recursive: true });
  } catch (e) {
    throw ioError("creating", path, e);
  }
}

/**
 * The v1 hierarchies holding mvm's controllers (required and accounting) that are mounted under `root`; co-mounted
 * controllers (cpu and cpuacct as links to `cpu,cpuacct`) share one.
 */
function mountedV1Hierarchies(root: string): V1Hierarchy[] {
  const byRealPath = new Map<string, V1Hierarchy>();
  const controllers: V1Controller[] = [...V1_REQUIRED_CONTROLLERS, V1_ACCOUNTING_CONTROLLER];
  for (const controller of controllers) {
    const base = join(root, controller);
    let real: string;
    try {
      if (!statSync(base).isDirectory()) continue;
      real = realpathSync(base);
    } catch {
      continue;
    }
    const shared = byRealPath.get(real);
    if (shared) shared.controllers.push(controller);
    else byRealPath.set(real, { controllers: [controller], base });
  }
  return [...byRealPath.values()];
}

export function createCgroups(options: CgroupsOptions = {}): Cgroups {
  const root = options.root ?? DEFAULT_CGROUP_ROOT;
  const parent = options.parent ?? DEFAULT_CGROUP_PARENT;
  const waitMs = options.removeWaitMs ?? DEFAULT_REMOVE_WAIT_MS;
  const parentProblems = parentViolations(parent);
  if (parentProblems.length > 0) throw invalid(parentProblems);
  const version: 1 | 2 = existsSync(join(root, "cgroup.controllers")) ? 2 : 1;

  let hierarchies: Promise<V1Hierarchy[]> | null = null;
  const v1Hierarchies = (): Promise<V1Hierarchy[]> => {
    hierarchies ??= (async () => {
      const mounted = mountedV1Hierarchies(root);
      const missing = V1_REQUIRED_CONTROLLERS.find((c) => !mounted.some((h) => h.controllers.includes(c)));
      if (missing !== undefined) throw failedPrecondition(`cgroup v1 controller ${missing} is not mounted at ${join(root, missing)}`);
      return mounted;
    })();
    hierarchies.catch(() => {
      hierarchies = null;
    });
    return hierarchies;
  };

  const hierarchyOf = (all: V1Hierarchy[], controller: V1Controller) => all.find((h) => h.controllers.includes(controller));

  /** Group directories of an instance, one per hierarchy (v1) or the one (v2), from the parent down to the leaf. */
  async function levels(key: CgroupKey): Promise<{ base: string; dirs: string[] }[]> {
    const segs = cgroupSegments(parent, key);
    const bases = version === 2 ? [root] : (await v1Hierarchies()).map((h) => h.base);
    return bases.map((base) => ({ base, dirs: segs.map((_, i) => join(base, ...segs.slice(0, i + 1))) }));
  }

  const leafOf = (key: CgroupKey, base: string) => join(base, ...cgroupSegments(parent, key));

  /** v2 only lets a group use a controller its parent has enabled for its children, from the root down. */
  async function enableV2Controllers(dir: string): Promise<void> {
    const file = join(dir, "cgroup.subtree_control");
    let current = "";
    try {
      current = await readFile(file, "utf8");
    } catch (e) {
      if (errorCode(e) !== "ENOENT") throw ioError("reading", file, e);
    }
    const missing = missingControllers(current, V2_CONTROLLERS);
    if (missing.length > 0) await writeText(file, missing.map((c) => `+${c}`).join(" "));
  }

  async function ensureV2(key: CgroupKey, limits: CgroupLimits): Promise<string[]> {
    const available = await readText(join(root, "cgroup.controllers"));
    const unavailable = missingControllers(available, V2_CONTROLLERS);
    if (unavailable.length > 0) {
      throw failedPrecondition(`cgroup v2 controllers ${unavailable.join(", ")} are not available at ${root} (cgroup.controllers: ${available.trim() || "none"})`);
    }
    const [{ dirs }] = (await levels(key)) as [{ base: string; dirs: string[] }];
    const leaf = dirs[dirs.length - 1] as string;
    await enableV2Controllers(root);
    for (const dir of dirs.slice(0, -1)) {
      await makeDirectory(dir);
      await enableV2Controllers(dir);
    }
    await makeDirectory(leaf);
    for (const w of v2LimitWrites(limits)) await writeLimit(join(leaf, w.file), w);
    return [join(leaf, "cgroup.procs")];
  }

  async function ensureV1(key: CgroupKey, limits: CgroupLimits): Promise<string[]> {
    const all = await v1Hierarchies();
    const leaves = new Map(all.map((h) => [h, leafOf(key, h.base)] as const));
    for (const leaf of leaves.values()) await makeDirectory(leaf);
    for (const w of v1LimitWrites(limits)) {
      const h = hierarchyOf(all, w.controller) as V1Hierarchy;
      await writeLimit(join(leaves.get(h) as string, w.file), w);
    }
    return [...leaves.values()].map((leaf) => join(leaf, "cgroup.procs"));
  }

  async function ensure(key: CgroupKey, limits: CgroupLimits): Promise<{ procsFiles: string[] }> {
    checkLimits(limits);
    cgroupSegments(parent, key);
    return { procsFiles: version === 2 ? await ensureV2(key, limits) : await ensureV1(key, limits) };
  }

  async function remove(key: CgroupKey): Promise<void> {
    for (const { dirs } of await levels(key)) {
      const [, tenantDir, poolDir, leaf] = dirs as [string, string, string, string];
      await removeLeaf(leaf, waitMs);
      await pruneParent(poolDir);
      await pruneParent(tenantDir);
    }
  }

  async function usage(key: CgroupKey): Promise<CgroupUsage | null> {
    if (version === 2) {
      const leaf = leafOf(key, root);
      if (!(await isDirectory(leaf))) return null;
      const cpu = parseCpuStatUsageUs(await readText(join(leaf, "cpu.stat")));
      if (cpu === null) throw new MvmError("unavailable", `${join(leaf, "cpu.stat")}: no usage_usec line`);
      return { cpuUsageUs: cpu, memoryBytes: parseLimitValue(await readText(join(leaf, "memory.current")), "memory.current") };
    }
    const all = await v1Hierarchies();
    const memoryLeaf = leafOf(key, (hierarchyOf(all, "memory") as V1Hierarchy).base);
    if (!(await isDirectory(memoryLeaf))) return null;
    const memoryBytes = parseLimitValue(await readText(join(memoryLeaf, "memory.usage_in_bytes")), "memory.usage_in_bytes");
    const accounting = hierarchyOf(all, V1_ACCOUNTING_CONTROLLER);
    let cpuUsageUs: number | null;
    if (accounting !== undefined) {
      cpuUsageUs = parseCpuacctUsageUs(await readText(join(leafOf(key, accounting.base), "cpuacct.usage")));
    } else {
      const cpuLeaf = leafOf(key, (hierarchyOf(all, "cpu") as V1Hierarchy).base);
      cpuUsageUs = parseCpuStatUsageUs(await readText(join(cpuLeaf, "cpu.stat")));
    }
    if (cpuUsageUs === null) throw failedPrecondition(`cgroup v1 at ${root} reports no cpu usage (no cpuacct hierarchy, no usage_usec in cpu.stat)`);
    return { cpuUsageUs, memoryBytes };
  }

  async function limits(key: CgroupKey): Promise<CgroupLimits | null> {
    if (version === 2) {
      const leaf = leafOf(key, root);
      if (!(await isDirectory(leaf))) return null;
      const cpu = parseCpuMax(await readText(join(leaf, "cpu.max")));
      return {
        memoryBytes: parseLimitValue(await readText(join(leaf, "memory.max")), "memory.max"),
        cpuQuotaUs: cpu.quotaUs,
        cpuPeriodUs: cpu.periodUs,
        cpuBurstUs: await readOptionalLimit(join(leaf, V2_CPU_BURST_FILE), 0),
        pidsMax: parseLimitValue(await readText(join(leaf, "pids.max")), "pids.max"),
      };
    }
    const all = await v1Hierarchies();
    const leaf = (c: V1Controller) => leafOf(key, (hierarchyOf(all, c) as V1Hierarchy).base);
    if (!(await isDirectory(leaf("memory")))) return null;
    const read = async (c: V1Controller, file: string) => parseLimitValue(await readText(join(leaf(c), file)), file);
    return {
      memoryBytes: await read("memory", "memory.limit_in_bytes"),
      cpuQuotaUs: await read("cpu", "cpu.cfs_quota_us"),
      cpuPeriodUs: await read("cpu", "cpu.cfs_period_us"),
      cpuBurstUs: await readOptionalLimit(join(leaf("cpu"), V1_CPU_BURST_FILE), 0),
      pidsMax: await read("pids", "pids.max"),
    };
  }

  const bases = async (): Promise<string[]> => (version === 2 ? [root] : (await v1Hierarchies()).map((h) => h.base));

  async function list(): Promise<CgroupKey[]> {
    const found = new Map<string, CgroupKey>();
    const children = async (dir: string) => ((await isDirectory(dir)) ? subdirectories(dir) : []);
    for (const base of await bases()) {
      const top = join(base, parent);
      for (const tenantId of (await children(top)).filter((n) => isValidId(n))) {
        for (const poolId of (await children(join(top, tenantId))).filter((n) => isValidId(n))) {
          for (const instanceId of (await children(join(top, tenantId, poolId))).filter((n) => isValidInstanceId(n))) {
            found.set(`${tenantId}/${poolId}/${instanceId}`, { tenantId, poolId, instanceId });
          }
        }
      }
    }
    return [...found.values()];
  }

  async function processes(key: CgroupKey): Promise<number[]> {
    cgroupSegments(parent, key);
    const pids = new Set<number>();
    for (const base of await bases()) for (const pid of await groupProcesses(leafOf(key, base))) pids.add(pid);
    return [...pids].sort((a, b) => a - b);
  }

  async function killProcesses(key: CgroupKey, timeoutMs: number): Promise<number[]> {
    const killed = new Set<number>();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      // Read again each round: a process that forked before its KILL leaves a child in the group.
      const left = await processes(key);
      if (left.length === 0) return [...killed].sort((a, b) => a - b);
      if (Date.now() >= deadline) throw failedPrecondition(`processes ${left.join(", ")} are still in the cgroups of ${key.tenantId}/${key.poolId}/${key.instanceId} after a KILL`);
      for (const pid of left) {
        try {
          process.kill(pid, "SIGKILL");
          killed.add(pid);
        } catch (e) {
          if (errorCode(e) !== "ESRCH") throw ioError("killing process", String(pid), e);
        }
      }
      await sleep(REMOVE_POLL_MS);
    }
  }

  return { version, ensure, remove, usage, limits, list, processes, killProcesses };
}

/**
 * Removes the group `parent` and every group below it, deepest first, in the v2 tree or in each v1 hierarchy mvm
 * uses; returns the groups that stay because processes are still in them. For a test run or a benchmark that gave its
 * runtimes a parent of its own (MVM_CGROUP_PARENT) and must leave no group behind; an agent keeps its parent.
 */
export function removeCgroupParent(parent: string, root: string = DEFAULT_CGROUP_ROOT): string[] {
  const problems = parentViolations(parent);
  if (problems.length > 0) throw invalid(problems);
  const bases = existsSync(join(root, "cgroup.controllers")) ? [root] : mountedV1Hierarchies(root).map((h) => h.base);
  const left: string[] = [];
  const remove = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) if (entry.isDirectory()) remove(join(dir, entry.name));
    try {
      rmdirSync(dir);
    } catch {
      left.push(dir);
    }
  };
  for (const base of bases) {
    const top = join(base, parent);
    if (existsSync(top)) remove(top);
  }
  return left;
}
