// The guest kernel: Debian's cloud kernel package, chosen with apt-cache (the newest the host's apt sources offer),
// fetched with `apt-get download`, unpacked with `dpkg-deb -x`. Its vmlinuz holds the kernel as an LZ4 legacy frame;
// decompressed, that is an ELF vmlinux with a PVH entry note, which QEMU (and Firecracker) boot directly.
//
// Cache layout under `<cacheDir>/kernel/`:
//   resolved-<key>.json          which package and version apt offered, valid while apt's lists are unchanged
//   <package>_<version>/         one unpacked package: the .deb, vmlinux, config, modules/, meta.json

import { createReadStream } from "node:fs";
import { copyFile, mkdir, open, readFile, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ensureCacheEntry } from "./cache-entry.js";
import type { CommandRunner } from "./command-runner.js";
import { hasPvhEntryNote, isElf64 } from "./elf.js";
import { cacheKey, sha256File } from "./hashing.js";

export interface KernelBundle {
  packageName: string;
  version: string;
  /** `uname -r` of the kernel, e.g. 6.1.0-56-cloud-amd64. */
  release: string;
  /** The cache entry. */
  dir: string;
  vmlinux: string;
  vmlinuxSha256: string;
  vmlinuxBytes: number;
  /** The kernel's build configuration (boot/config-<release>). */
  config: string;
  /** lib/modules/<release> of the package. */
  modulesDir: string;
}

export interface KernelFetchOptions {
  cacheDir: string;
  runner: CommandRunner;
  /**
   * Package to use: a metapackage (its linux-image dependency is taken) or a concrete image package.
   * Default `linux-image-cloud-amd64`, i.e. the newest cloud kernel of the host's apt sources.
   */
  kernelPackage?: string;
  /** apt's package lists; while they are unchanged the previous resolution is reused. Default /var/lib/apt/lists. */
  aptListsDir?: string;
  /** apt's download cache, searched before downloading. Default /var/cache/apt/archives. */
  aptArchivesDir?: string;
  onMessage?: (message: string) => void;
}

export const DEFAULT_KERNEL_PACKAGE = "linux-image-cloud-amd64";
const DEBIAN_PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]+$/;
const CONCRETE_KERNEL_PACKAGE = /^linux-image-[0-9][^\s]*-cloud-amd64$/;
const APT_QUERY_TIMEOUT_MS = 60_000;
const DOWNLOAD_TIMEOUT_MS = 15 * 60_000;
const UNPACK_TIMEOUT_MS = 5 * 60_000;
/** Bumped when the layout or content of a kernel cache entry changes. */
const KERNEL_ENTRY_FORMAT = 1;

interface ResolvedKernel {
  packageName: string;
  version: string;
  /** From apt's index; null when unknown (then the download is trusted as apt verified it). */
  sha256: string | null;
}

interface KernelEntryMeta {
  format: number;
  packageName: string;
  version: string;
  release: string;
  debFile: string;
  vmlinuxSha256: string;
  vmlinuxBytes: number;
}

/** The cached kernel bundle for the package apt offers now, fetching and unpacking it when not cached yet. */
export async function ensureKernel(options: KernelFetchOptions): Promise<KernelBundle> {
  const requested = options.kernelPackage ?? DEFAULT_KERNEL_PACKAGE;
  if (!DEBIAN_PACKAGE_NAME.test(requested)) {
    throw new Error(`kernel package ${JSON.stringify(requested)}: must be a Debian package name of [a-z0-9+.-]`);
  }
  const root = join(options.cacheDir, "kernel");
  await mkdir(root, { recursive: true });
  const resolved = await resolveKernel(options, root);
  return ensureCacheEntry(root, entryName(resolved.packageName, resolved.version), readEntry, async (work) => {
    options.onMessage?.(`fetching ${resolved.packageName} ${resolved.version}`);
    await buildEntry(options, resolved, work);
  });
}

function entryName(packageName: string, version: string): string {
  return `${packageName}_${version}`.replace(/[^A-Za-z0-9.+~_-]/g, "_");
}

async function readEntry(dir: string): Promise<KernelBundle | null> {
  let meta: KernelEntryMeta;
  try {
    meta = JSON.parse(await readFile(join(dir, "meta.json"), "utf8")) as KernelEntryMeta;
  } catch {
    return null;
  }
  if (meta.format !== KERNEL_ENTRY_FORMAT) return null;
  const vmlinux = join(dir, "vmlinux");
  const size = await stat(vmlinux).then((s) => s.size, () => -1);
  if (size !== meta.vmlinuxBytes) return null;
  return {
    packageName: meta.packageName,
    version: meta.version,
    release: meta.release,
    dir,
    vmlinux,
    vmlinuxSha256: meta.vmlinuxSha256,
    vmlinuxBytes: meta.vmlinuxBytes,
    config: join(dir, "config"),
    modulesDir: join(dir, "modules"),
  };
}

/**
 * Package and version to use. apt-cache takes about half a second per query, so its answer is kept (per requested
 * package) until apt's lists change; with no usable lists at all, the newest cached entry keeps the builder offline.
 */
async function resolveKernel(options: KernelFetchOptions, root: string): Promise<ResolvedKernel> {
  const requested = options.kernelPackage ?? DEFAULT_KERNEL_PACKAGE;
  const listsDir = options.aptListsDir ?? "/var/lib/apt/lists";
  const listsStamp = await stat(listsDir).then((s) => `${s.mtimeMs}:${s.ino}`, () => null);
  const memo = join(root, `resolved-${cacheKey([requested]).slice(0, 16)}.json`);
  if (listsStamp !== null) {
    try {
      const saved = JSON.parse(await readFile(memo, "utf8")) as { listsStamp: string; resolved: ResolvedKernel };
      if (saved.listsStamp === listsStamp) return saved.resolved;
    } catch {
      // No memo yet, or an unreadable one: ask apt.
    }
  }
  let resolved: ResolvedKernel;
  try {
    resolved = await queryApt(options.runner, requested);
  } catch (e) {
    const fallback = await newestCachedEntry(root, requested);
    if (fallback === null) throw e;
    options.onMessage?.(`apt cannot resolve ${requested} (${(e as Error).message}); using cached ${fallback.packageName} ${fallback.version}`);
    return fallback;
  }
  if (listsStamp !== null) {
    const tmp = `${memo}.${process.pid}.tmp`;
    await writeFile(tmp, `${JSON.stringify({ listsStamp, resolved })}\n`);
    await rename(tmp, memo);
  }
  return resolved;
}

async function queryApt(runner: CommandRunner, requested: string): Promise<ResolvedKernel> {
  let packageName = requested;
  if (!CONCRETE_KERNEL_PACKAGE.test(requested)) {
    const { stdout } = await runner("apt-cache", ["depends", requested], { timeoutMs: APT_QUERY_TIMEOUT_MS });
    const dependency = /^\s*Depends:\s*(linux-image-\S+)\s*$/m.exec(stdout)?.[1];
    if (dependency === undefined) throw new Error(`apt-cache depends ${requested}: names no linux-image package`);
    packageName = dependency;
  }
  const { stdout } = await runner("apt-cache", ["show", "--no-all-versions", packageName], { timeoutMs: APT_QUERY_TIMEOUT_MS });
  const version = /^Version:\s*(\S+)\s*$/m.exec(stdout)?.[1];
  if (version === undefined) throw new Error(`apt-cache show ${packageName}: no Version field`);
  const sha256 = /^SHA256:\s*([0-9a-f]{64})\s*$/m.exec(stdout)?.[1] ?? null;
  return { packageName, version, sha256 };
}

async function newestCachedEntry(root: string, requested: string): Promise<ResolvedKernel | null> {
  const names = await readdir(root).catch(() => [] as string[]);
  const candidates: { meta: KernelEntryMeta; mtimeMs: number }[] = [];
  for (const name of names) {
    if (name.startsWith(".") || name.endsWith(".json")) continue;
    try {
      const path = join(root, name, "meta.json");
      const meta = JSON.parse(await readFile(path, "utf8")) as KernelEntryMeta;
      if (meta.format !== KERNEL_ENTRY_FORMAT) continue;
      if (CONCRETE_KERNEL_PACKAGE.test(requested) && meta.packageName !== requested) continue;
      candidates.push({ meta, mtimeMs: (await stat(path)).mtimeMs });
    } catch {
      continue;
    }
  }
  candidates.sort((a, b) => b.mtimeMs - a.mtimeMs);
  const newest = candidates[0];
  return newest === undefined ? null : { packageName: newest.meta.packageName, version: newest.meta.version, sha256: null };
}

async function buildEntry(options: KernelFetchOptions, resolved: ResolvedKernel, work: string): Promise<void> {
  const deb = await obtainPackage(options, resolved, work);
  const tree = join(work, "tree");
  await options.runner("dpkg-deb", ["-x", deb, tree], { timeoutMs: UNPACK_TIMEOUT_MS });
  const boot = join(tree, "boot");
  const vmlinuz = (await readdir(boot)).find((f) => f.startsWith("vmlinuz-"));
  if (vmlinuz === undefined) throw new Error(`${resolved.packageName}: the package has no boot/vmlinuz-*`);
  const release = vmlinuz.slice("vmlinuz-".length);

  options.onMessage?.(`extracting vmlinux ${release}`);
  const vmlinux = join(work, "vmlinux");
  await extractVmlinux(options.runner, join(boot, vmlinuz), vmlinux);
  await copyFile(join(boot, `config-${release}`), join(work, "config"));
  await rename(join(tree, "lib", "modules", release), join(work, "modules"));
  await rm(tree, { recursive: true, force: true });

  const meta: KernelEntryMeta = {
    format: KERNEL_ENTRY_FORMAT,
    packageName: resolved.packageName,
    version: resolved.version,
    release,
    debFile: deb.slice(work.length + 1),
    vmlinuxSha256: await sha256File(vmlinux),
    vmlinuxBytes: (await stat(vmlinux)).size,
  };
  await writeFile(join(work, "meta.json"), `${JSON.stringify(meta, null, 2)}\n`);
}

/** The .deb in `work`: from apt's download cache when it holds the exact file, else downloaded. */
async function obtainPackage(options: KernelFetchOptions, resolved: ResolvedKernel, work: string): Promise<string> {
  // apt writes an epoch's colon as %3a in file names.
  const fileName = `${resolved.packageName}_${resolved.version.replace(":", "%3a")}_amd64.deb`;
  const target = join(work, fileName);
  const archived = join(options.aptArchivesDir ?? "/var/cache/apt/archives", fileName);
  if (resolved.sha256 !== null && (await stat(archived).then(() => true, () => false)) && (await sha256File(archived)) === resolved.sha256) {
    await copyFile(archived, target);
    return target;
  }
  await options.runner("apt-get", ["download", `${resolved.packageName}=${resolved.version}`], {
    timeoutMs: DOWNLOAD_TIMEOUT_MS,
    cwd: work,
  });
  const downloaded = (await readdir(work)).find((f) => f.startsWith(`${resolved.packageName}_`) && f.endsWith(".deb"));
  if (downloaded === undefined) throw new Error(`apt-get download ${resolved.packageName}=${resolved.version}: produced no .deb`);
  const path = join(work, downloaded);
  if (resolved.sha256 !== null) {
    const actual = await sha256File(path);
    if (actual !== resolved.sha256) throw new Error(`${downloaded}: sha256 ${actual} differs from apt's ${resolved.sha256}`);
  }
  return path;
}

const LZ4_LEGACY_MAGIC = Buffer.from([0x02, 0x21, 0x4c, 0x18]);
/** Legacy frames hold blocks of 8 MiB of output; a block never compresses to more than LZ4's bound for that size. */
const LZ4_LEGACY_MAX_BLOCK = 8 * 1024 * 1024 + Math.floor((8 * 1024 * 1024) / 255) + 16;

export interface Lz4LegacyFrame {
  /** Offset of the magic number. */
  start: number;
  /** Offset just past the last block. */
  end: number;
  /**
   * The little-endian 32-bit value right after the frame: the kernel build appends the decompressed size there, so
   * it checks the output; null when the file ends first.
   */
  trailingSize: number | null;
}

/**
 * Every LZ4 legacy frame candidate in `data`, with its extent. A legacy frame has no end marker: it ends where the
 * next 4 bytes cannot be a block size (zero, larger than the bound, or past the end of the data).
 */
export function findLz4LegacyFrames(data: Buffer): Lz4LegacyFrame[] {
  const frames: Lz4LegacyFrame[] = [];
  for (let start = data.indexOf(LZ4_LEGACY_MAGIC); start >= 0; start = data.indexOf(LZ4_LEGACY_MAGIC, start + 1)) {
    let at = start + 4;
    let blocks = 0;
    while (at + 4 <= data.length) {
      const size = data.readUInt32LE(at);
      if (size === 0 || size > LZ4_LEGACY_MAX_BLOCK || at + 4 + size > data.length) break;
      at += 4 + size;
      blocks++;
    }
    if (blocks === 0) continue;
    frames.push({ start, end: at, trailingSize: at + 4 <= data.length ? data.readUInt32LE(at) : null });
  }
  return frames;
}

/** Writes the ELF kernel inside `vmlinuzPath` to `outPath`; throws unless it is an ELF64 with a PVH entry note. */
export async function extractVmlinux(runner: CommandRunner, vmlinuzPath: string, outPath: string): Promise<void> {
  const failures: string[] = [];
  for (const frame of findLz4LegacyFrames(await readFile(vmlinuzPath))) {
    const problem = await decompressFrame(runner, vmlinuzPath, frame, outPath).catch((e: unknown) => (e as Error).message);
    if (problem !== null) {
      failures.push(`frame at ${frame.start}: ${problem}`);
      continue;
    }
    if (!(await hasPvhEntryNote(outPath))) throw new Error(`${vmlinuzPath}: the ELF kernel has no PVH entry note (Xen note type 18)`);
    return;
  }
  await rm(outPath, { force: true });
  throw new Error(`${vmlinuzPath}: no LZ4 legacy frame holding an ELF kernel${failures.length > 0 ? ` (${failures.join("; ")})` : ""}`);
}

/** Null when `frame` decompressed to a complete ELF64 file at `outPath`, else why not. */
async function decompressFrame(runner: CommandRunner, vmlinuzPath: string, frame: Lz4LegacyFrame, outPath: string): Promise<string | null> {
  await runner("lz4", ["-dc"], {
    timeoutMs: UNPACK_TIMEOUT_MS,
    input: createReadStream(vmlinuzPath, { start: frame.start, end: frame.end - 1 }),
    stdoutFile: outPath,
  });
  const size = (await stat(outPath)).size;
  if (frame.trailingSize !== null && frame.trailingSize !== size) return `${size} bytes out, the kernel says ${frame.trailingSize}`;
  const head = Buffer.alloc(64);
  const handle = await open(outPath, "r");
  try {
    await handle.read(head, 0, 64, 0);
  } finally {
    await handle.close();
  }
  return isElf64(head) ? null : "not an ELF64 file";
}
