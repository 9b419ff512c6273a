// Instance disks with qemu-img and mkfs.ext4, and the secrets disk built in memory (no loop mounts, no root needed
// for the images themselves).
// Every file is produced under a temporary name and renamed into place, so a crash never leaves a half disk that a
// later start would take for a good one.

import { randomBytes } from "node:crypto";
import { mkdir, readFile, rename, rm, stat, truncate, writeFile, chmod, open } from "node:fs/promises";
import { dirname } from "node:path";
import { execa } from "execa";
import type { Volumes } from "../../core/data-plane-ports.js";
import { MvmError } from "../../core/errors.js";
import { buildExt4Image, Ext4ImageError, type Ext4Image } from "./ext4-image.js";

const COMMAND_TIMEOUT_MS = 120_000;
/** Blank stand-in for a missing data disk, so the secrets disk keeps its device slot. */
const PLACEHOLDER_BYTES = 1024 * 1024;
/** Holds the largest secret set (1 MiB in at most 256 files, tenant-secrets.ts) beside the host's own files. */
export const SECRETS_DISK_BYTES = 5 * 1024 * 1024;

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function run(file: string, args: string[]): Promise<string> {
  const result = await execa(file, args, { timeout: COMMAND_TIMEOUT_MS, reject: false });
  if (result.exitCode !== 0 || result.timedOut) {
    const why = result.timedOut ? `timed out after ${COMMAND_TIMEOUT_MS} ms` : `exit code ${result.exitCode}`;
    throw new Error(`${file} ${args.join(" ")}: ${why}: ${String(result.stderr).trim()}`);
  }
  return String(result.stdout);
}

function temporaryName(path: string): string {
  return `${path}.tmp-${process.pid}-${Date.now()}`;
}

const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
/** qcow2 header: magic, version, backing_file_offset (u64), backing_file_size (u32), all big-endian. */
const QCOW2_HEADER_BYTES = 20;
/** QEMU refuses backing file names longer than this. */
const QCOW2_MAX_BACKING_NAME_BYTES = 1023;

/**
 * The backing file a qcow2 overlay names, read from its header (docs/interop/qcow2.txt in QEMU), or null when the
 * file is not qcow2 or has no backing file. Read directly rather than through `qemu-img info`: every start and wake
 * asks, and a process spawned from the agent costs ~6 ms of its CPU (fork copies its page tables).
 */
export async function overlayBackingFile(overlay: string): Promise<string | null> {
  const handle = await open(overlay, "r");
  try {
    const header = Buffer.alloc(QCOW2_HEADER_BYTES);
    const { bytesRead } = await handle.read(header, 0, QCOW2_HEADER_BYTES, 0);
    if (bytesRead < QCOW2_HEADER_BYTES || header.readUInt32BE(0) !== QCOW2_MAGIC) return null;
    const offset = header.readBigUInt64BE(8);
    const size = header.readUInt32BE(16);
    if (offset === 0n || size === 0) return null;
    if (size > QCOW2_MAX_BACKING_NAME_BYTES || offset > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new Error(`${overlay}: qcow2 header names a backing file of ${size} bytes at ${offset}, which QEMU would not write`);
    }
    const name = Buffer.alloc(size);
    const read = await handle.read(name, 0, size, Number(offset));
    if (read.bytesRead !== size) throw new Error(`${overlay}: qcow2 header names a backing file beyond the end of the file`);
    return name.toString("utf8");
  } finally {
    await handle.close();
  }
}

export function createLinuxVolumes(): Volumes {
  return {
    async createRootOverlay(baseImage, overlayPath) {
      // Kept across stop/start while the base is the same; a new revision gets a fresh overlay.
      if ((await exists(overlayPath)) && (await overlayBackingFile(overlayPath)) === baseImage) return;
      await mkdir(dirname(overlayPath), { recursive: true, mode: 0o700 });
      const tmp = temporaryName(overlayPath);
      try {
        await run("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", baseImage, tmp]);
        await rename(tmp, overlayPath);
      } finally {
        await rm(tmp, { force: true });
      }
    },

    async createRootCopy(baseImage, copyPath) {
      const baseRecord = `${copyPath}.base`;
      const recorded = await readFile(baseRecord, "utf8").catch(() => null);
      if (recorded === baseImage && (await exists(copyPath))) return;
      await mkdir(dirname(copyPath), { recursive: true, mode: 0o700 });
      const tmp = temporaryName(copyPath);
      try {
        await run("cp", ["--reflink=auto", "--sparse=always", baseImage, tmp]);
        await chmod(tmp, 0o600);
        await rename(tmp, copyPath);
        await writeFile(baseRecord, baseImage, { mode: 0o600 });
      } finally {
        await rm(tmp, { force: true });
      }
    },

    async ensureDataDisk(path, sizeMib) {
      if (await exists(path)) return;
      await mkdir(dirname(path), { recursive: true, mode: 0o700 });
      const tmp = temporaryName(path);
      try {
        const handle = await open(tmp, "w", 0o600);
        await handle.close();
        if (sizeMib === 0) {
          await truncate(tmp, PLACEHOLDER_BYTES);
        } else {
          await truncate(tmp, sizeMib * 1024 * 1024);
          await run("mkfs.ext4", ["-q", "-F", "-L", "data", tmp]);
        }
        await rename(tmp, path);
      } finally {
        await rm(tmp, { force: true });
      }
    },

    async buildSecretsDisk(path, files, options = {}) {
      // Built in memory (ext4-image.ts): no staging directory, no mkfs process, no journal to write on the path a
      // start or wake waits for.
      // One size for every start, large enough for the largest secret set: a set rotated while the instance sleeps
      // must still fit the disk its guest saw at boot. A wake keeps the size of the disk already there (older
      // versions sized it by content). The file is sparse: the size costs no space.
      let sizeBytes = SECRETS_DISK_BYTES;
      if (options.keepSize) {
        const existing = await stat(path).catch(() => null);
        if (existing !== null) sizeBytes = existing.size;
      }
      let image: Ext4Image;
      try {
        image = buildExt4Image({
          sizeBytes,
          label: "secrets",
          files,
          rootMode: 0o700,
          directoryMode: 0o700,
          fileMode: 0o600,
          nowSeconds: Math.floor(Date.now() / 1000),
          uuid: randomBytes(16),
          hashSeed: randomBytes(16),
        });
      } catch (e) {
        if (e instanceof Ext4ImageError) {
          if (options.keepSize) {
            throw new MvmError("failed_precondition", `secrets disk: the secrets no longer fit the ${sizeBytes}-byte disk this instance booted with (${e.message}): stop it and start it again`);
          }
          throw new Error(`secrets disk: ${e.message}`);
        }
        throw e;
      }
      await mkdir(dirname(path), { recursive: true, mode: 0o700 });
      const tmp = temporaryName(path);
      try {
        const handle = await open(tmp, "wx", 0o600);
        try {
          await handle.write(image.head, 0, image.head.length, 0);
          // The rest is zeros: left as a hole.
          await handle.truncate(image.sizeBytes);
        } finally {
          await handle.close();
        }
        await rename(tmp, path);
      } finally {
        await rm(tmp, { force: true });
      }
    },

    async preserveDataDisk(path, destination) {
      if (!(await exists(path))) return;
      await mkdir(dirname(destination), { recursive: true, mode: 0o700 });
      await rename(path, destination);
    },
  };
}
