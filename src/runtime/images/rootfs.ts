// The root filesystem, in two cached steps:
//   base tree   mmdebstrap (minbase + busybox, dropbear, iproute2 + the pool's packages) → a tarball. The only step
//               that needs the network; keyed by suite, mirrors and the sorted package list.
//   root image  the tarball unpacked, mvm's guest files, links and the pool's extra files applied, then an ext4 image
//               made from the directory with `mkfs.ext4 -d` (no loop mount). Keyed by the base tree and everything
//               applied to it.
// Cache layout: `<cacheDir>/base/<key>/{base.tar,meta.json}` and `<cacheDir>/rootfs/<key>/{rootfs.ext4,meta.json}`.

import { chmod, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ensureCacheEntry } from "./cache-entry.js";
import type { CommandRunner } from "./command-runner.js";
import { CommandError } from "./command-runner.js";
import { guestFileMode } from "./guest-files.js";
import type { GuestFiles } from "./guest-files.js";
import { cacheKey, sha256File, sha256Hex } from "./hashing.js";
import { measureTree, mkdirInTree, removeMatchingInTree, symlinkInTree, writeFileInTree } from "./rootfs-tree.js";

export const ROOTFS_FILE = "rootfs.ext4";
/** Always in the image: init and shell tools, the SSH server, `ip`. */
export const BASE_PACKAGES: readonly string[] = ["busybox", "dropbear-bin", "iproute2"];
/** Bumped when the base tree's recipe changes in a way its key does not show. */
const BASE_FORMAT = 1;
/** Bumped when the root image's recipe changes in a way its key does not show. */
const ROOTFS_FORMAT = 1;
const MMDEBSTRAP_TIMEOUT_MS = 30 * 60_000;
const UNPACK_TIMEOUT_MS = 10 * 60_000;
const MKFS_TIMEOUT_MS = 10 * 60_000;
const MIB = 1024 * 1024;

/** Documentation, manual pages and translations are left out of the guest: they only make the image larger. */
const MMDEBSTRAP_DPKG_OPTIONS: readonly string[] = [
  "--dpkgopt=path-exclude=/usr/share/man/*",
  "--dpkgopt=path-exclude=/usr/share/doc/*",
  "--dpkgopt=path-include=/usr/share/doc/*/copyright",
  "--dpkgopt=path-exclude=/usr/share/locale/*",
  "--dpkgopt=path-exclude=/usr/share/info/*",
];

export interface DebianMirrors {
  /** Default http://deb.debian.org/debian. */
  archive: string;
  /** Default http://deb.debian.org/debian-security. */
  security: string;
}

/**
 * apt sources for `suite`: the suite itself and, for a release (bookworm, trixie, ...), its -updates and -security
 * suites, so that images carry security fixes. Rolling suites and suites with a dash (bookworm-backports) get only
 * themselves.
 */
export function debianSources(suite: string, mirrors: DebianMirrors): string[] {
  const sources = [`deb ${mirrors.archive} ${suite} main`];
  if (!suite.includes("-") && !["sid", "unstable", "experimental", "rc-buggy"].includes(suite)) {
    sources.push(`deb ${mirrors.archive} ${suite}-updates main`, `deb ${mirrors.security} ${suite}-security main`);
  }
  return sources;
}

/** BASE_PACKAGES and `extra`, sorted, without duplicates: the order a pool lists packages in does not matter. */
export function imagePackages(extra: readonly string[]): string[] {
  return [...new Set([...BASE_PACKAGES, ...extra])].sort();
}

export interface BaseTreeOptions {
  cacheDir: string;
  runner: CommandRunner;
  suite: string;
  packages: readonly string[];
  mirrors: DebianMirrors;
  /** Progress within this step, 0–1. */
  onProgress: (fraction: number, message: string) => void;
}

export interface BaseTree {
  key: string;
  tarball: string;
  /** How mmdebstrap ran: `auto` (root), or the fallback that worked. */
  mode: string;
}

/** mmdebstrap's own phase messages, in order, and how far along each one is. */
const MMDEBSTRAP_PHASES: readonly [RegExp, number, string][] = [
  [/running apt-get update/, 0.05, "updating package lists"],
  [/downloading packages/, 0.15, "downloading packages"],
  [/extracting archives/, 0.45, "extracting packages"],
  [/installing essential packages/, 0.55, "installing essential packages"],
  [/installing remaining packages/, 0.7, "installing packages"],
  [/cleaning package lists/, 0.85, "cleaning up"],
  [/creating tarball/, 0.9, "packing the tree"],
];

/** Failures that say mmdebstrap's chosen mode lacks privileges; another mode may work. */
const PRIVILEGE_FAILURE = /permission denied|operation not permitted|need to be root|requires root|insufficient privileges|unshare/i;

export async function ensureBaseTree(options: BaseTreeOptions): Promise<BaseTree> {
  const packages = imagePackages(options.packages);
  const sources = debianSources(options.suite, options.mirrors);
  const key = cacheKey(["base", String(BASE_FORMAT), options.suite, ...sources, ...MMDEBSTRAP_DPKG_OPTIONS, "packages", ...packages]).slice(0, 32);
  const tarball = (dir: string): string => join(dir, "base.tar");
  const read = async (dir: string): Promise<BaseTree | null> => {
    const meta = await readBaseMeta(dir);
    return meta === null ? null : { key, tarball: tarball(dir), mode: meta.mode };
  };
  return ensureCacheEntry(join(options.cacheDir, "base"), key, read, async (work) => {
    const out = tarball(work);
    const failures: string[] = [];
    let mode: string | null = null;
    for (const candidate of ["auto", "unshare", "fakechroot"]) {
      try {
        await runMmdebstrap(options, candidate, packages, sources, out);
        mode = candidate;
        break;
      } catch (e) {
        if (!(e instanceof CommandError) || !PRIVILEGE_FAILURE.test(e.stderr)) throw e;
        failures.push(`--mode=${candidate}: ${e.message}`);
        await rm(out, { force: true });
      }
    }
    if (mode === null) throw new Error(`mmdebstrap failed in every mode: ${failures.join("; ")}`);
    const meta = { format: BASE_FORMAT, suite: options.suite, packages, sources, mode, sizeBytes: (await stat(out)).size };
    await writeFile(join(work, "meta.json"), `${JSON.stringify(meta, null, 2)}\n`);
  });
}

async function readBaseMeta(dir: string): Promise<{ mode: string } | null> {
  try {
    const meta = JSON.parse(await readFile(join(dir, "meta.json"), "utf8")) as { mode: string; sizeBytes: number };
    if ((await stat(join(dir, "base.tar"))).size !== meta.sizeBytes) return null;
    return meta;
  } catch {
    return null;
  }
}

async function runMmdebstrap(
  options: BaseTreeOptions,
  mode: string,
  packages: readonly string[],
  sources: readonly string[],
  out: string,
): Promise<void> {
  let reached = 0;
  options.onProgress(0, `mmdebstrap ${options.suite} (${packages.length} packages requested)`);
  await options.runner(
    "mmdebstrap",
    [
      `--mode=${mode}`,
      "--variant=minbase",
      `--include=${packages.join(",")}`,
      ...MMDEBSTRAP_DPKG_OPTIONS,
      "--format=tar",
      options.suite,
      out,
      ...sources,
    ],
    {
      timeoutMs: MMDEBSTRAP_TIMEOUT_MS,
      onStderrLine: (line) => {
        for (const [pattern, fraction, message] of MMDEBSTRAP_PHASES) {
          if (fraction > reached && pattern.test(line)) {
            reached = fraction;
            options.onProgress(fraction, message);
          }
        }
      },
    },
  );
  options.onProgress(1, "base tree ready");
}

export interface RootImageOptions {
  cacheDir: string;
  runner: CommandRunner;
  base: BaseTree;
  guest: GuestFiles;
  /** Guest path → content, from the pool's image source. */
  extraFiles: Readonly<Record<string, string>>;
  /** Free space beyond the content, MiB. */
  headroomMib: number;
  /** Builder identity, part of the key. */
  builderVersion: string;
  onProgress: (fraction: number, message: string) => void;
}

export interface RootImage {
  key: string;
  path: string;
  sha256: string;
  sizeBytes: number;
}

interface RootImageMeta {
  format: number;
  sha256: string;
  sizeBytes: number;
  baseKey: string;
}

/** Links the guest relies on: busybox is init and does the power-off (no systemd or sysvinit in the image). */
const BUSYBOX_LINKS: readonly string[] = ["/sbin/init", "/sbin/poweroff", "/sbin/reboot", "/sbin/halt"];

export function rootImageKey(options: Pick<RootImageOptions, "base" | "guest" | "extraFiles" | "headroomMib" | "builderVersion">): string {
  const extra = Object.keys(options.extraFiles)
    .sort()
    .flatMap((path) => [path, sha256Hex(options.extraFiles[path] as string)]);
  return cacheKey([
    "rootfs",
    String(ROOTFS_FORMAT),
    options.builderVersion,
    options.base.key,
    options.guest.rootfsDigest,
    String(options.headroomMib),
    "extra",
    ...extra,
  ]).slice(0, 32);
}

export async function ensureRootImage(options: RootImageOptions): Promise<RootImage> {
  const key = rootImageKey(options);
  const image = await ensureCacheEntry(join(options.cacheDir, "rootfs"), key, (dir) => readRootMeta(dir, key), async (work) => {
    const tree = join(work, "tree");
    await mkdir(tree, { mode: 0o755 });
    options.onProgress(0, "unpacking the base tree");
    await options.runner(
      "tar",
      ["-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-f", options.base.tarball, "-C", tree],
      { timeoutMs: UNPACK_TIMEOUT_MS },
    );
    options.onProgress(0.3, "adding mvm's guest files");
    await applyGuestFiles(tree, options.guest, options.extraFiles);

    const usage = await measureTree(tree);
    // ext4 needs room for its inode tables, journal and directories beyond the files' blocks; 10 % plus 256 bytes
    // an entry covers that for trees of this kind (the minimal tree is ~145 MB in ~8,000 entries).
    const contentBytes = Math.ceil(usage.allocatedBytes * 1.1) + usage.entries * 256;
    const sizeMib = Math.max(64, Math.ceil(contentBytes / MIB) + options.headroomMib);
    const imagePath = join(work, ROOTFS_FILE);
    options.onProgress(0.4, `making a ${sizeMib} MiB ext4 image`);
    // UUID and directory hash seed from the key: the same tree gives the same file system identity.
    const uuid = uuidFromHex(key);
    await options.runner(
      "mkfs.ext4",
      ["-q", "-F", "-L", "root", "-U", uuid, "-E", `hash_seed=${uuid}`, "-d", tree, imagePath, `${sizeMib}M`],
      { timeoutMs: MKFS_TIMEOUT_MS },
    );
    await rm(tree, { recursive: true, force: true });
    options.onProgress(0.85, "hashing the root image");
    const meta: RootImageMeta = {
      format: ROOTFS_FORMAT,
      sha256: await sha256File(imagePath),
      sizeBytes: (await stat(imagePath)).size,
      baseKey: options.base.key,
    };
    await chmod(imagePath, 0o444);
    await writeFile(join(work, "meta.json"), `${JSON.stringify(meta, null, 2)}\n`);
  });
  options.onProgress(1, "root image ready");
  return image;
}

async function readRootMeta(dir: string, key: string): Promise<RootImage | null> {
  try {
    const meta = JSON.parse(await readFile(join(dir, "meta.json"), "utf8")) as RootImageMeta;
    const path = join(dir, ROOTFS_FILE);
    if (meta.format !== ROOTFS_FORMAT || (await stat(path)).size !== meta.sizeBytes) return null;
    return { key, path, sha256: meta.sha256, sizeBytes: meta.sizeBytes };
  } catch {
    return null;
  }
}

/** mvm's files over the Debian tree, then the pool's extra files (which may replace mvm's: the pool's choice). */
export async function applyGuestFiles(tree: string, guest: GuestFiles, extraFiles: Readonly<Record<string, string>>): Promise<void> {
  for (const entry of guest.rootfs) {
    const guestPath = `/${entry.path}`;
    if (entry.kind === "dir") await mkdirInTree(tree, guestPath);
    else if (entry.kind === "symlink") await symlinkInTree(tree, guestPath, entry.content.toString());
    else await writeFileInTree(tree, guestPath, entry.content, guestFileMode(entry.content));
  }
  for (const link of BUSYBOX_LINKS) await symlinkInTree(tree, link, "/bin/busybox");
  // Host keys are made per instance at first boot; whatever a package generated at build time must not be shared.
  await removeMatchingInTree(tree, "/etc/dropbear", /^dropbear_.*_host_key$/);
  await removeMatchingInTree(tree, "/etc/ssh", /^ssh_host_.*_key(\.pub)?$/);
  for (const path of Object.keys(extraFiles).sort()) {
    const content = Buffer.from(extraFiles[path] as string, "utf8");
    await writeFileInTree(tree, path, content, guestFileMode(content));
  }
}

/** A version-4-shaped UUID string made from the first 32 hex digits of `hex`. */
function uuidFromHex(hex: string): string {
  const h = hex.slice(0, 32).split("");
  h[12] = "4";
  h[16] = ((parseInt(h[16] as string, 16) & 0x3) | 0x8).toString(16);
  const s = h.join("");
  return `${s.slice(0, 8)}-${s.slice(8, 12)}-${s.slice(12, 16)}-${s.slice(16, 20)}-${s.slice(20, 32)}`;
}
