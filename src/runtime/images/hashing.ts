// Content hashes of the image builder: artifact digests, cache keys and the revision ID.

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readFile, readdir, lstat, readlink } from "node:fs/promises";
import { join } from "node:path";

export function sha256Hex(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Streams the file, so multi-GiB root images never sit in memory. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/**
 * Cache key of a list of labelled parts. Each part is length-prefixed, so no two different lists can produce the same
 * byte stream (["ab", "c"] and ["a", "bc"] differ).
 */
export function cacheKey(parts: readonly string[]): string {
  const hash = createHash("sha256");
  for (const part of parts) {
    hash.update(`${Buffer.byteLength(part)}:`);
    hash.update(part);
  }
  return hash.digest("hex");
}

/** Relative path (with `/`), kind, mode and content of every entry under `dir`, sorted by path. */
export interface TreeEntry {
  path: string;
  kind: "file" | "dir" | "symlink";
  mode: number;
  /** File bytes, or the link target for a symlink; empty for a directory. */
  content: Buffer;
}

export async function readTree(dir: string): Promise<TreeEntry[]> {
  const out: TreeEntry[] = [];
  async function walk(relative: string): Promise<void> {
    const entries = await readdir(join(dir, relative), { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of entries) {
      const path = relative === "" ? entry.name : `${relative}/${entry.name}`;
      const full = join(dir, path);
      const info = await lstat(full);
      if (info.isSymbolicLink()) {
        out.push({ path, kind: "symlink", mode: 0o777, content: Buffer.from(await readlink(full)) });
      } else if (info.isDirectory()) {
        out.push({ path, kind: "dir", mode: info.mode & 0o7777, content: Buffer.alloc(0) });
        await walk(path);
      } else if (info.isFile()) {
        out.push({ path, kind: "file", mode: info.mode & 0o7777, content: await readFile(full) });
      } else {
        throw new Error(`${full}: only files, directories and symlinks may be part of a tree`);
      }
    }
  }
  await walk("");
  return out;
}

/** One digest of a tree's paths, kinds and contents (not modes: see `guestFileMode`). */
export function treeDigest(entries: readonly TreeEntry[]): string {
  return cacheKey(entries.flatMap((e) => [e.path, e.kind, sha256Hex(e.content)]));
}

export interface ArtifactDigest {
  /** File name inside the revision directory. */
  name: string;
  sha256: string;
}

/**
 * The revision ID: sha256 over the lines `<name> <sha256>\n` of the artifacts in the given order (kernel, initrd,
 * rootfs). Any change to any artifact gives a new revision; the same three files always give the same one.
 */
export function revisionDigest(artifacts: readonly ArtifactDigest[]): string {
  return sha256Hex(artifacts.map((a) => `${a.name} ${a.sha256}\n`).join(""));
}

/** Length of the short revision ID: the revision directory's name and what records show. */
export const SHORT_REVISION_HEX = 16;
