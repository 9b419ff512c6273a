// Facts about the host that `node info` reports. Each probe has a timeout and reports what it could not read
// instead of failing the whole report.

import { access, constants, readFile, statfs } from "node:fs/promises";
import os from "node:os";
import { delimiter, join } from "node:path";
import { execa } from "execa";

export interface BinaryFact {
  name: string;
  /** Absolute path when found on PATH, else null. */
  path: string | null;
  /** First line of `<binary> --version`, or null when not found or it did not answer. */
  version: string | null;
}

export interface HostFacts {
  hostname: string;
  arch: string;
  kernel: string;
  vcpus: number;
  memMib: number;
  cgroupVersion: 1 | 2 | null;
  dataRootFreeBytes: number | null;
  binaries: BinaryFact[];
}

const PROBE_TIMEOUT_MS = 5_000;

export async function findOnPath(name: string, pathEnv = process.env.PATH ?? ""): Promise<string | null> {
  const dirs = [...pathEnv.split(delimiter), "/usr/sbin", "/sbin"].filter(Boolean);
  for (const dir of dirs) {
    const candidate = join(dir, name);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return null;
}

async function probeBinary(name: string, versionArgs: string[]): Promise<BinaryFact> {
  const path = await findOnPath(name);
  if (!path) return { name, path: null, version: null };
  try {
    const result = await execa(path, versionArgs, { timeout: PROBE_TIMEOUT_MS, reject: false });
    const text = `${result.stdout}\n${result.stderr}`.trim();
    return { name, path, version: result.exitCode === 0 ? (text.split("\n")[0] ?? null) : null };
  } catch {
    return { name, path, version: null };
  }
}

/** cgroup v2 mounts a single hierarchy with `cgroup.controllers` at its root; v1 mounts one directory per controller. */
export async function detectCgroupVersion(root = "/sys/fs/cgroup"): Promise<1 | 2 | null> {
  try {
    await access(join(root, "cgroup.controllers"));
    return 2;
  } catch {
    // not v2
  }
  try {
    await access(join(root, "memory"));
    return 1;
  } catch {
    return null;
  }
}

async function kernelRelease(): Promise<string> {
  try {
    return (await readFile("/proc/sys/kernel/osrelease", "utf8")).trim();
  } catch {
    return os.release();
  }
}

export async function readHostFacts(dataRoot: string): Promise<HostFacts> {
  const [kernel, cgroupVersion, free, binaries] = await Promise.all([
    kernelRelease(),
    detectCgroupVersion(),
    statfs(dataRoot).then((s) => s.bavail * s.bsize, () => null),
    Promise.all([
      probeBinary("qemu-system-x86_64", ["--version"]),
      probeBinary("firecracker", ["--version"]),
      probeBinary("jailer", ["--version"]),
      probeBinary("nft", ["--version"]),
      probeBinary("mmdebstrap", ["--version"]),
    ]),
  ]);
  return {
    hostname: os.hostname(),
    arch: os.arch(),
    kernel,
    vcpus: os.cpus().length,
    memMib: Math.floor(os.totalmem() / 1024 / 1024),
    cgroupVersion,
    dataRootFreeBytes: free,
    binaries,
  };
}
