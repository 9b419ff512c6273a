// The initramfs: busybox-static, the kernel modules the guest needs (virtio, ext4 when modular, the ACPI power
// button), the module load order and mvm's /init (guest/initramfs/init). A gzip-compressed newc cpio archive,
// reproducible for the same kernel, busybox and init script.
//
// Cached under `<cacheDir>/initramfs/<key>/` by a hash of exactly those inputs.

import { mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { ensureCacheEntry } from "./cache-entry.js";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import type { CommandRunner } from "./command-runner.js";
import { writeCpioNewc } from "./cpio-newc.js";
import type { CpioEntry } from "./cpio-newc.js";
import { isStaticExecutable } from "./elf.js";
import { cacheKey, sha256Hex } from "./hashing.js";
import type { KernelBundle } from "./kernel-fetch.js";
import { GUEST_MODULES, indexModules, moduleMetadata, modulesToLoad, orderModules, parseKernelConfig, readModuleImage } from "./kernel-modules.js";

export const INITRAMFS_FILE = "initramfs.cpio.gz";
/** Bumped when the archive's layout changes in a way its inputs do not show. */
const INITRAMFS_FORMAT = 1;
const DECOMPRESS_TIMEOUT_MS = 60_000;

export interface InitramfsOptions {
  cacheDir: string;
  runner: CommandRunner;
  kernel: KernelBundle;
  /** Content of guest/initramfs/init. */
  initScript: Buffer;
  /** A statically linked busybox (Debian's busybox-static installs /bin/busybox). */
  busyboxPath: string;
}

export interface InitramfsArtifact {
  path: string;
  sha256: string;
  sizeBytes: number;
  /** Module names in load order. */
  modules: string[];
}

interface InitramfsMeta {
  sha256: string;
  sizeBytes: number;
  modules: string[];
}

export async function ensureInitramfs(options: InitramfsOptions): Promise<InitramfsArtifact> {
  const busybox = await readFile(options.busyboxPath);
  const key = cacheKey([
    "initramfs",
    String(INITRAMFS_FORMAT),
    options.kernel.vmlinuxSha256,
    options.kernel.packageName,
    options.kernel.version,
    sha256Hex(options.initScript),
    sha256Hex(busybox),
    // Which modules the guest needs is part of the recipe: a change to the list must not reuse an older archive.
    GUEST_MODULES.map((m) => `${m.module}:${m.required ? "required" : "optional"}`).join(","),
  ]).slice(0, 32);
  if (!(await isStaticExecutable(options.busyboxPath))) {
    throw new Error(`${options.busyboxPath} is dynamically linked; the initramfs needs busybox-static`);
  }
  return ensureCacheEntry(join(options.cacheDir, "initramfs"), key, readEntry, async (work) => {
    const { archive, modules } = await buildArchive(options, busybox, work);
    await rm(join(work, "modules"), { recursive: true, force: true });
    const compressed = gzipSync(archive, { level: 9 });
    await writeFile(join(work, INITRAMFS_FILE), compressed, { mode: 0o444 });
    const meta: InitramfsMeta = { sha256: sha256Hex(compressed), sizeBytes: compressed.length, modules };
    await writeFile(join(work, "meta.json"), `${JSON.stringify(meta, null, 2)}\n`);
  });
}

async function readEntry(dir: string): Promise<InitramfsArtifact | null> {
  try {
    const meta = JSON.parse(await readFile(join(dir, "meta.json"), "utf8")) as InitramfsMeta;
    const path = join(dir, INITRAMFS_FILE);
    if ((await stat(path)).size !== meta.sizeBytes) return null;
    return { path, sha256: meta.sha256, sizeBytes: meta.sizeBytes, modules: meta.modules };
  } catch {
    return null;
  }
}

async function buildArchive(options: InitramfsOptions, busybox: Buffer, work: string): Promise<{ archive: Buffer; modules: string[] }> {
  const config = parseKernelConfig(await readFile(options.kernel.config, "utf8"));
  const index = await indexModules(options.kernel.modulesDir);
  await mkdir(join(work, "modules"));
  const images = new Map<string, Buffer>();
  const imageOf = async (path: string): Promise<Buffer> => {
    let image = images.get(path);
    if (image === undefined) {
      image = await readModuleImage(path, (p) => decompressModule(options.runner, p, join(work, "modules", `${images.size}.ko`)));
      images.set(path, image);
    }
    return image;
  };
  const ordered = await orderModules(modulesToLoad(config), index, async (file) => moduleMetadata(await imageOf(file.path)));

  const entries: CpioEntry[] = [
    ...["bin", "dev", "etc", "etc/mvm", "lib", "lib/modules", "newroot", "proc", "sys"].map(
      (path): CpioEntry => ({ kind: "dir", path, mode: 0o755 }),
    ),
    // The kernel opens /dev/console for /init's standard streams before /init could mount devtmpfs.
    { kind: "char", path: "dev/console", mode: 0o600, major: 5, minor: 1 },
    { kind: "file", path: "bin/busybox", mode: 0o755, data: busybox },
    { kind: "file", path: "init", mode: 0o755, data: options.initScript },
    { kind: "file", path: "etc/mvm/modules", mode: 0o644, data: Buffer.from(ordered.map((m) => `${m.name}\n`).join("")) },
  ];
  for (const module of ordered) {
    entries.push({ kind: "file", path: `lib/modules/${module.name}.ko`, mode: 0o644, data: await imageOf(module.path) });
  }
  return { archive: writeCpioNewc(entries), modules: ordered.map((m) => m.name) };
}

async function decompressModule(runner: CommandRunner, path: string, outPath: string): Promise<Buffer> {
  const program = path.endsWith(".xz") ? "xz" : path.endsWith(".zst") ? "zstd" : null;
  if (program === null) throw new Error(`${path}: unknown module compression`);
  await runner(program, ["-dc", path], { timeoutMs: DECOMPRESS_TIMEOUT_MS, stdoutFile: outPath });
  return readFile(outPath);
}

