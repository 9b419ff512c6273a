// A writer of the "newc" cpio format the kernel unpacks an initramfs from (Documentation/driver-api/early-userspace/
// buffer-format.rst). Written here rather than with cpio(1) so that the archive is byte-for-byte reproducible (inode
// numbers, owners and times fixed) and can hold device nodes without creating them on the host.

export type CpioEntry =
  | { kind: "dir"; path: string; mode: number }
  | { kind: "file"; path: string; mode: number; data: Uint8Array }
  | { kind: "symlink"; path: string; target: string }
  | { kind: "char"; path: string; mode: number; major: number; minor: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const TRAILER = "TRAILER!!!";

function hex8(n: number): string {
  if (!Number.isSafeInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`cpio: field value ${n} does not fit 32 bits`);
  return n.toString(16).padStart(8, "0");
}

function padding(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

function record(ino: number, mode: number, nlink: number, name: string, data: Uint8Array, rdev: [number, number]): Buffer[] {
  const nameBytes = Buffer.from(`${name}\0`, "utf8");
  const header =
    "070701" +
    [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, rdev[0], rdev[1], nameBytes.length, 0].map(hex8).join("");
  const head = Buffer.concat([Buffer.from(header, "latin1"), nameBytes]);
  return [head, padding(head.length), Buffer.from(data), padding(data.length)];
}

/**
 * The archive of `entries`, in the given order (a directory must come before what it holds). Owners are root, times
 * are zero. Paths are relative, without a leading slash.
 */
export function writeCpioNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const seen = new Set<string>();
  entries.forEach((entry, i) => {
    if (entry.path === "" || entry.path.startsWith("/") || entry.path.split("/").includes("..")) {
      throw new Error(`cpio: entry path ${JSON.stringify(entry.path)} must be relative and stay inside the archive`);
    }
    if (seen.has(entry.path)) throw new Error(`cpio: duplicate entry ${entry.path}`);
    seen.add(entry.path);
    const ino = i + 1;
    switch (entry.kind) {
      case "dir":
        parts.push(...record(ino, S_IFDIR | (entry.mode & 0o7777), 2, entry.path, new Uint8Array(), [0, 0]));
        break;
      case "file":
        parts.push(...record(ino, S_IFREG | (entry.mode & 0o7777), 1, entry.path, entry.data, [0, 0]));
        break;
      case "symlink":
        parts.push(...record(ino, S_IFLNK | 0o777, 1, entry.path, Buffer.from(entry.target, "utf8"), [0, 0]));
        break;
      case "char":
        parts.push(...record(ino, S_IFCHR | (entry.mode & 0o7777), 1, entry.path, new Uint8Array(), [entry.major, entry.minor]));
        break;
    }
  });
  parts.push(...record(0, 0, 1, TRAILER, new Uint8Array(), [0, 0]));
  return Buffer.concat(parts);
}
