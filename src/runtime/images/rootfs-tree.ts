// Writing into an unpacked root filesystem on the host. The tree comes from Debian packages (and the pool's packages),
// so its symlinks are guest paths: `/etc/x -> /run/y` means the guest's /run/y, never the host's. Every path is
// therefore resolved inside the tree, as a chroot would, and a write can never land outside it.

import { lstat, mkdir, readdir, readlink, rm, symlink, writeFile, chmod } from "node:fs/promises";
import { join } from "node:path";

/** Linux gives up after 40 symlinks in one lookup; so does this. */
const MAX_SYMLINK_HOPS = 40;

function segmentsOf(guestPath: string): string[] {
  return guestPath.split("/").filter((s) => s !== "" && s !== ".");
}

function errnoCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * Host path of guest directory `segments` in the tree at `root`, with symlinks followed the way the guest will follow
 * them; `..` never climbs above the root. Missing directories are created (0755) when `create`, else the answer is
 * null.
 */
async function resolveDirInTree(root: string, segments: readonly string[], guestPath: string, create: boolean): Promise<string | null> {
  const resolved: string[] = [];
  const pending = [...segments];
  let hops = 0;
  while (pending.length > 0) {
    const segment = pending.shift() as string;
    if (segment === "..") {
      resolved.pop();
      continue;
    }
    const hostPath = join(root, ...resolved, segment);
    let info;
    try {
      info = await lstat(hostPath);
    } catch (e) {
      if (errnoCode(e) !== "ENOENT") throw e;
      if (!create) return null;
      await mkdir(hostPath, { mode: 0o755 });
      await chmod(hostPath, 0o755);
      resolved.push(segment);
      continue;
    }
    if (info.isSymbolicLink()) {
      if (++hops > MAX_SYMLINK_HOPS) throw new Error(`${guestPath}: too many levels of symbolic links in the image`);
      const target = await readlink(hostPath);
      if (target.startsWith("/")) resolved.length = 0;
      pending.unshift(...segmentsOf(target));
    } else if (info.isDirectory()) {
      resolved.push(segment);
    } else {
      throw new Error(`${guestPath}: /${[...resolved, segment].join("/")} is not a directory in the image`);
    }
  }
  return join(root, ...resolved);
}

/** Host directory holding `guestPath` (created when missing) and the final name, which is not followed. */
export async function resolveParentInTree(root: string, guestPath: string): Promise<{ dir: string; name: string }> {
  const segments = segmentsOf(guestPath);
  const name = segments.pop();
  if (name === undefined || name === "..") throw new Error(`${JSON.stringify(guestPath)} does not name a file`);
  return { dir: (await resolveDirInTree(root, segments, guestPath, true)) as string, name };
}

/** Removes what is at the final path (a file or symlink, never followed); a directory there is an error. */
async function clearEntry(hostPath: string, guestPath: string): Promise<void> {
  try {
    const info = await lstat(hostPath);
    if (info.isDirectory()) throw new Error(`${guestPath}: is a directory in the image`);
    await rm(hostPath);
  } catch (e) {
    if (errnoCode(e) !== "ENOENT") throw e;
  }
}

/** Writes a regular file owned by the builder (root) with exactly `mode`, replacing a file or symlink there. */
export async function writeFileInTree(root: string, guestPath: string, content: Uint8Array | string, mode: number): Promise<void> {
  const { dir, name } = await resolveParentInTree(root, guestPath);
  const hostPath = join(dir, name);
  await clearEntry(hostPath, guestPath);
  // `wx`: had something been put back in between, fail rather than write through it.
  await writeFile(hostPath, content, { mode, flag: "wx" });
  await chmod(hostPath, mode);
}

export async function symlinkInTree(root: string, guestPath: string, target: string): Promise<void> {
  const { dir, name } = await resolveParentInTree(root, guestPath);
  const hostPath = join(dir, name);
  await clearEntry(hostPath, guestPath);
  await symlink(target, hostPath);
}

/** Creates guest directory `guestPath` and any missing parent (0755); an existing directory is kept as it is. */
export async function mkdirInTree(root: string, guestPath: string): Promise<void> {
  await resolveDirInTree(root, segmentsOf(guestPath), guestPath, true);
}

/** Removes the files matching `pattern` directly inside guest directory `guestDir`; returns their guest paths. */
export async function removeMatchingInTree(root: string, guestDir: string, pattern: RegExp): Promise<string[]> {
  const dir = await resolveDirInTree(root, segmentsOf(guestDir), guestDir, false);
  if (dir === null) return [];
  const removed: string[] = [];
  for (const entry of await readdir(dir)) {
    if (!pattern.test(entry)) continue;
    await rm(join(dir, entry), { force: true });
    removed.push(`${guestDir}/${entry}`);
  }
  return removed;
}

export interface TreeUsage {
  /** Bytes allocated on the host's file system (st_blocks × 512): a fair estimate of what ext4 will need. */
  allocatedBytes: number;
  entries: number;
}

export async function measureTree(root: string): Promise<TreeUsage> {
  let allocatedBytes = 0;
  let entries = 0;
  const entriesOf = await readdir(root, { recursive: true, withFileTypes: true });
  for (const entry of entriesOf) {
    const info = await lstat(join(entry.parentPath, entry.name));
    allocatedBytes += info.blocks * 512;
    entries++;
  }
  return { allocatedBytes, entries };
}
