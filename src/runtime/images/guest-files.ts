// The files mvm puts into every debian guest, kept as plain files in the repository's guest/ directory:
//   guest/initramfs/init   the initramfs's PID 1
//   guest/rootfs/...       copied over the root filesystem (inittab, /usr/lib/mvm scripts and hooks, ...)
// Their content is part of the cache keys, so editing a script gives a new initramfs or root image and revision.

import { access, readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { readTree, sha256Hex, treeDigest } from "./hashing.js";
import type { TreeEntry } from "./hashing.js";

export interface GuestFiles {
  dir: string;
  initramfsInit: Buffer;
  /** Everything under guest/rootfs, sorted by path. */
  rootfs: TreeEntry[];
  /** Digest of the initramfs init script. */
  initramfsDigest: string;
  /** Digest of the rootfs tree (paths, kinds, contents). */
  rootfsDigest: string;
}

/**
 * Mode of a guest or extra file in the image: scripts (starting with `#!`) are executable, everything else is not.
 * Taken from the content rather than the checkout, so that a checkout's umask or a lost executable bit cannot change
 * the image.
 */
export function guestFileMode(content: Uint8Array): number {
  return content[0] === 0x23 && content[1] === 0x21 ? 0o755 : 0o644;
}

/** The guest/ directory next to the code: found by walking up from this module (src/ or dist/src/ alike). */
export async function findGuestDir(from: string = dirname(fileURLToPath(import.meta.url))): Promise<string> {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, "guest");
    if (await access(join(candidate, "initramfs", "init")).then(() => true, () => false)) return candidate;
    if (dirname(dir) === dir) throw new Error(`guest files: no guest/initramfs/init in ${from} or any directory above it`);
  }
}

export async function loadGuestFiles(dir: string): Promise<GuestFiles> {
  const initramfsInit = await readFile(join(dir, "initramfs", "init"));
  const rootfs = await readTree(join(dir, "rootfs"));
  return {
    dir,
    initramfsInit,
    rootfs,
    initramfsDigest: sha256Hex(initramfsInit),
    rootfsDigest: treeDigest(rootfs),
  };
}
