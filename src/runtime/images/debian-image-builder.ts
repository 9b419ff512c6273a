// The `debian` ImageBuilder (SPEC §6.2): Debian's cloud kernel as an ELF vmlinux, a small initramfs, and an ext4 root
// image made by mmdebstrap (busybox init + dropbear) — see docs/guest-contract.md for what the guest does with them.
//
// Every step is cached by content under `cacheDir`, so a second build of the same source only links the cached
// artifacts into a new revision directory (well under a second, no network). A revision directory is assembled in a
// temporary directory and renamed into place: it is either complete or absent.

import { chmod, copyFile, link, mkdir, mkdtemp, readFile, readdir, rename, rm, stat, utimes, writeFile } from "node:fs/promises";
import { constants as fsConstants } from "node:fs";
import { join } from "node:path";
import type { BuildProgressEvent, BuiltImage, ImageBuilder } from "../../core/data-plane-ports.js";
import { MvmError, invalid } from "../../core/errors.js";
import type { BuildArtifact, ImageSource } from "../../core/model.js";
import { debianImageViolations } from "../../core/validation.js";
import { execaCommandRunner } from "./command-runner.js";
import type { CommandRunner } from "./command-runner.js";
import { findGuestDir, loadGuestFiles } from "./guest-files.js";
import { SHORT_REVISION_HEX, revisionDigest, sha256Hex } from "./hashing.js";
import { INITRAMFS_FILE, ensureInitramfs } from "./initramfs.js";
import { ensureKernel } from "./kernel-fetch.js";
import { ROOTFS_FILE, ensureBaseTree, ensureRootImage, imagePackages } from "./rootfs.js";

/** Name and recipe version of this builder; part of the root image's cache key and of every manifest. */
export const DEBIAN_BUILDER_VERSION = "debian/1";
export const KERNEL_FILE = "vmlinux";
export const MANIFEST_FILE = "manifest.json";
const MANIFEST_FORMAT = 1;
/** Temporary directories older than this are leftovers of a build that died; younger ones may be in use. */
const STALE_TEMP_MS = 6 * 60 * 60_000;

export interface DebianImageBuilderOptions {
  /** Kernel packages, initramfs archives, mmdebstrap trees and root images, by content hash. Created when missing. */
  cacheDir: string;
  /** Runs the external programs. Default: execa. */
  runner?: CommandRunner;
  /** The guest files (initramfs init, root filesystem overlay). Default: the guest/ directory shipped with mvm. */
  guestDir?: string;
  /** Kernel package or metapackage. Default `linux-image-cloud-amd64` (the newest cloud kernel apt offers). */
  kernelPackage?: string;
  /** Statically linked busybox for the initramfs. Default /bin/busybox (Debian's busybox-static). */
  busyboxPath?: string;
  /** Debian archive for the root filesystem. Default http://deb.debian.org/debian. */
  mirror?: string;
  /** Debian security archive. Default http://deb.debian.org/debian-security. */
  securityMirror?: string;
  /** Free space in the root image beyond its content, MiB. Default 512. */
  rootfsHeadroomMib?: number;
  /** apt's package lists (kernel resolution is reused while they are unchanged). Default /var/lib/apt/lists. */
  aptListsDir?: string;
  /** apt's download cache, searched for the kernel package first. Default /var/cache/apt/archives. */
  aptArchivesDir?: string;
}

/** What `<revision>/manifest.json` holds. */
export interface RevisionManifest {
  format: number;
  /** Short revision ID: the directory's name. */
  revision: string;
  /** Full sha256 over the artifacts' digests (see revisionDigest). */
  revisionSha256: string;
  builder: string;
  source: { kind: "debian"; suite: string; packages: string[]; extraFileSha256: Record<string, string> };
  kernel: BuildArtifact & { package: string; version: string; release: string };
  initrd: BuildArtifact & { modules: string[] };
  rootfs: BuildArtifact & { packages: string[]; mmdebstrapMode: string };
}

/** Range of the whole build's percent that each phase covers; a phase reports its own progress inside its range. */
const PHASES = {
  kernel: [0, 15],
  initramfs: [15, 20],
  rootfs: [20, 75],
  ext4: [75, 95],
  hashing: [95, 100],
} as const satisfies Record<string, readonly [number, number]>;
type Phase = keyof typeof PHASES;

export function createDebianImageBuilder(options: DebianImageBuilderOptions): ImageBuilder {
  const runner = options.runner ?? execaCommandRunner;
  const mirrors = {
    archive: options.mirror ?? "http://deb.debian.org/debian",
    security: options.securityMirror ?? "http://deb.debian.org/debian-security",
  };
  const headroomMib = options.rootfsHeadroomMib ?? 512;
  if (!Number.isSafeInteger(headroomMib) || headroomMib < 0) {
    throw invalid([{ field: "rootfs_headroom_mib", rule: "must be a non-negative integer" }]);
  }
  let swept = false;

  async function build(source: ImageSource, revisionsDir: string, onProgress: (e: BuildProgressEvent) => void): Promise<BuiltImage> {
    if (source.kind !== "debian") throw invalid([{ field: "image.kind", rule: "must be debian for the debian image builder" }]);
    const violations = debianImageViolations(source, "image");
    if (violations.length > 0) throw invalid(violations);

    let phase: Phase = "kernel";
    let lastPercent = 0;
    const report = (p: Phase, fraction: number, message: string): void => {
      phase = p;
      const [from, to] = PHASES[p];
      const percent = Math.max(lastPercent, Math.round((from + (to - from) * Math.min(1, Math.max(0, fraction))) * 10) / 10);
      lastPercent = percent;
      onProgress({ phase: p, percent, message });
    };

    try {
      if (!swept) {
        swept = true;
        await sweepStaleTemps(options.cacheDir);
      }
      const guest = await loadGuestFiles(options.guestDir ?? (await findGuestDir()));

      report("kernel", 0, "resolving the kernel package");
      const kernel = await ensureKernel({
        cacheDir: options.cacheDir,
        runner,
        ...(options.kernelPackage === undefined ? {} : { kernelPackage: options.kernelPackage }),
        ...(options.aptListsDir === undefined ? {} : { aptListsDir: options.aptListsDir }),
        ...(options.aptArchivesDir === undefined ? {} : { aptArchivesDir: options.aptArchivesDir }),
        onMessage: (message) => report("kernel", 0.5, message),
      });
      report("kernel", 1, `kernel ${kernel.release} (${kernel.packageName} ${kernel.version})`);

      report("initramfs", 0, "building the initramfs");
      const initrd = await ensureInitramfs({
        cacheDir: options.cacheDir,
        runner,
        kernel,
        initScript: guest.initramfsInit,
        busyboxPath: options.busyboxPath ?? "/bin/busybox",
      });
      report("initramfs", 1, `initramfs with modules ${initrd.modules.join(", ")}`);

      report("rootfs", 0, `root filesystem from ${source.suite}`);
      const base = await ensureBaseTree({
        cacheDir: options.cacheDir,
        runner,
        suite: source.suite,
        packages: source.packages,
        mirrors,
        onProgress: (fraction, message) => report("rootfs", fraction, message),
      });
      report("rootfs", 1, "base tree ready");

      report("ext4", 0, "root image");
      const rootfs = await ensureRootImage({
        cacheDir: options.cacheDir,
        runner,
        base,
        guest,
        extraFiles: source.extraFiles,
        headroomMib,
        builderVersion: DEBIAN_BUILDER_VERSION,
        onProgress: (fraction, message) => report("ext4", fraction, message),
      });
      report("ext4", 1, `root image ${Math.round(rootfs.sizeBytes / (1024 * 1024))} MiB`);

      report("hashing", 0, "revision");
      const revisionSha256 = revisionDigest([
        { name: KERNEL_FILE, sha256: kernel.vmlinuxSha256 },
        { name: INITRAMFS_FILE, sha256: initrd.sha256 },
        { name: ROOTFS_FILE, sha256: rootfs.sha256 },
      ]);
      const revision = revisionSha256.slice(0, SHORT_REVISION_HEX);
      const manifest: RevisionManifest = {
        format: MANIFEST_FORMAT,
        revision,
        revisionSha256,
        builder: DEBIAN_BUILDER_VERSION,
        source: {
          kind: "debian",
          suite: source.suite,
          packages: [...source.packages],
          extraFileSha256: Object.fromEntries(Object.keys(source.extraFiles).sort().map((p) => [p, sha256Hex(source.extraFiles[p] as string)])),
        },
        kernel: { path: KERNEL_FILE, sha256: kernel.vmlinuxSha256, sizeBytes: kernel.vmlinuxBytes, package: kernel.packageName, version: kernel.version, release: kernel.release },
        initrd: { path: INITRAMFS_FILE, sha256: initrd.sha256, sizeBytes: initrd.sizeBytes, modules: initrd.modules },
        rootfs: { path: ROOTFS_FILE, sha256: rootfs.sha256, sizeBytes: rootfs.sizeBytes, packages: imagePackages(source.packages), mmdebstrapMode: base.mode },
      };
      await assembleRevision(revisionsDir, manifest, { [KERNEL_FILE]: kernel.vmlinux, [INITRAMFS_FILE]: initrd.path, [ROOTFS_FILE]: rootfs.path });
      report("hashing", 1, `revision ${revision}`);
      return {
        revision,
        kernel: artifact(manifest.kernel),
        initrd: artifact(manifest.initrd),
        rootfs: artifact(manifest.rootfs),
        builder: DEBIAN_BUILDER_VERSION,
        flakeLockHash: "",
      };
    } catch (e) {
      if (e instanceof MvmError) throw e;
      throw new MvmError("unavailable", `building debian image (${phase}): ${e instanceof Error ? e.message : String(e)}`, [], { cause: e });
    }
  }

  return { build };
}

function artifact(a: BuildArtifact): BuildArtifact {
  return { path: a.path, sha256: a.sha256, sizeBytes: a.sizeBytes };
}

/**
 * `<revisionsDir>/<revision>/` with the artifacts (hard links to the cache, copies across file systems) and the
 * manifest. An existing complete directory of the same revision is kept; an incomplete one is moved aside.
 */
async function assembleRevision(revisionsDir: string, manifest: RevisionManifest, files: Record<string, string>): Promise<void> {
  const final = join(revisionsDir, manifest.revision);
  if (await isCompleteRevision(final, manifest)) {
    // Fresh again: garbage collection leaves a young revision to the build that is about to record it.
    const now = new Date();
    await utimes(final, now, now);
    return;
  }
  await mkdir(revisionsDir, { recursive: true });
  if (await stat(final).then(() => true, () => false)) {
    await rename(final, join(revisionsDir, `.damaged-${manifest.revision}-${Date.now()}`));
  }
  const work = await mkdtemp(join(revisionsDir, `.tmp-${manifest.revision}-`));
  try {
    await chmod(work, 0o755);
    for (const [name, from] of Object.entries(files)) await linkOrCopy(from, join(work, name));
    await writeFile(join(work, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o444 });
    try {
      await rename(work, final);
    } catch (e) {
      // A concurrent build of the same revision got there first.
      if (!(await isCompleteRevision(final, manifest))) throw e;
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function isCompleteRevision(dir: string, manifest: RevisionManifest): Promise<boolean> {
  try {
    const existing = JSON.parse(await readFile(join(dir, MANIFEST_FILE), "utf8")) as RevisionManifest;
    if (existing.revisionSha256 !== manifest.revisionSha256) return false;
    for (const a of [manifest.kernel, manifest.initrd, manifest.rootfs]) {
      if ((await stat(join(dir, a.path))).size !== a.sizeBytes) return false;
    }
    return true;
  } catch {
    return false;
  }
}

async function linkOrCopy(from: string, to: string): Promise<void> {
  try {
    await link(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EXDEV") throw e;
    await copyFile(from, to, fsConstants.COPYFILE_FICLONE);
  }
}

/** Removes `.tmp-*` directories that builds which died left in the cache. */
async function sweepStaleTemps(cacheDir: string): Promise<void> {
  const now = Date.now();
  for (const area of ["kernel", "initramfs", "base", "rootfs"]) {
    const dir = join(cacheDir, area);
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!name.startsWith(".tmp-")) continue;
      const path = join(dir, name);
      const age = await stat(path).then((s) => now - s.mtimeMs, () => 0);
      if (age > STALE_TEMP_MS) await rm(path, { recursive: true, force: true });
    }
  }
}
