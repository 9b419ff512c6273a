// The image builder's parts that need no network: the cpio writer (checked against cpio(1)), the LZ4 legacy frame
// finder (against lz4(1)), module ordering, writes that must stay inside an unpacked image, and the hashing rules.

import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { lstat, mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execaCommandRunner } from "../../../src/runtime/images/command-runner.js";
import { writeCpioNewc } from "../../../src/runtime/images/cpio-newc.js";
import { guestFileMode } from "../../../src/runtime/images/guest-files.js";
import { cacheKey, revisionDigest } from "../../../src/runtime/images/hashing.js";
import { extractVmlinux, findLz4LegacyFrames } from "../../../src/runtime/images/kernel-fetch.js";
import { modulesToLoad, orderModules, parseKernelConfig, parseModinfo } from "../../../src/runtime/images/kernel-modules.js";
import type { ModuleFile, ModuleMetadata } from "../../../src/runtime/images/kernel-modules.js";
import { debianSources, imagePackages } from "../../../src/runtime/images/rootfs.js";
import { writeFileInTree, symlinkInTree } from "../../../src/runtime/images/rootfs-tree.js";

const exec = promisify(execFile);
const isRoot = process.getuid?.() === 0;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "mvm-image-pieces-"));
});
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe("newc cpio writer", () => {
  it.skipIf(!isRoot)("writes an archive that cpio(1) unpacks: directories, files with modes, symlinks, device nodes", async () => {
    const archive = writeCpioNewc([
      { kind: "dir", path: "bin", mode: 0o755 },
      { kind: "dir", path: "dev", mode: 0o755 },
      { kind: "file", path: "bin/tool", mode: 0o750, data: Buffer.from("#!/bin/sh\necho odd length\n") },
      { kind: "file", path: "empty", mode: 0o600, data: Buffer.alloc(0) },
      { kind: "symlink", path: "bin/alias", target: "tool" },
      { kind: "char", path: "dev/console", mode: 0o600, major: 5, minor: 1 },
    ]);
    const out = join(work, "cpio-out");
    await mkdir(out);
    await writeFile(join(work, "a.cpio"), archive);
    await exec("sh", ["-c", 'cpio -idm --quiet --no-absolute-filenames < "$1"', "sh", join(work, "a.cpio")], { cwd: out });
    expect(await readFile(join(out, "bin/tool"), "utf8")).toBe("#!/bin/sh\necho odd length\n");
    expect((await lstat(join(out, "bin/tool"))).mode & 0o7777).toBe(0o750);
    expect((await lstat(join(out, "empty"))).size).toBe(0);
    expect(await readlink(join(out, "bin/alias"))).toBe("tool");
    const console = await lstat(join(out, "dev/console"));
    expect(console.isCharacterDevice()).toBe(true);
    expect(console.rdev).toBe((5 << 8) | 1);
  });

  it("is byte-for-byte reproducible and refuses paths that leave the archive or repeat", () => {
    const entries = [{ kind: "file" as const, path: "init", mode: 0o755, data: Buffer.from("x") }];
    expect(writeCpioNewc(entries).equals(writeCpioNewc(entries))).toBe(true);
    expect(() => writeCpioNewc([{ kind: "dir", path: "../up", mode: 0o755 }])).toThrow(/stay inside/);
    expect(() => writeCpioNewc([{ kind: "dir", path: "/abs", mode: 0o755 }])).toThrow(/relative/);
    expect(() => writeCpioNewc([...entries, ...entries])).toThrow(/duplicate entry init/);
  });
});

describe("lz4 legacy frames in a kernel image", () => {
  it("finds the frame's extent and the size the kernel build appends after it", async () => {
    // More than one 8 MiB block, so the walk over block sizes is exercised.
    const payload = Buffer.concat([randomBytes(3 * 1024 * 1024), Buffer.alloc(7 * 1024 * 1024, 0x41)]);
    await writeFile(join(work, "payload"), payload);
    await exec("lz4", ["-l", "-q", "-f", join(work, "payload"), join(work, "payload.lz4")]);
    const frame = await readFile(join(work, "payload.lz4"));
    const sizeTrailer = Buffer.alloc(4);
    sizeTrailer.writeUInt32LE(payload.length);
    const image = Buffer.concat([randomBytes(5000).fill(0x90), frame, sizeTrailer, Buffer.alloc(3000, 0xff)]);
    const found = findLz4LegacyFrames(image).filter((f) => f.trailingSize === payload.length);
    expect(found).toEqual([{ start: 5000, end: 5000 + frame.length, trailingSize: payload.length }]);
  });

  it("refuses a vmlinuz whose frames hold no ELF kernel", async () => {
    await writeFile(join(work, "not-elf"), Buffer.alloc(4096, 0x42));
    await exec("lz4", ["-l", "-q", "-f", join(work, "not-elf"), join(work, "not-elf.lz4")]);
    const vmlinuz = join(work, "vmlinuz");
    await writeFile(vmlinuz, Buffer.concat([Buffer.alloc(100), await readFile(join(work, "not-elf.lz4"))]));
    await expect(extractVmlinux(execaCommandRunner, vmlinuz, join(work, "vmlinux"))).rejects.toThrow(
      /no LZ4 legacy frame holding an ELF kernel \(frame at 100: not an ELF64 file\)/,
    );
  });
});

describe("kernel modules", () => {
  it("loads only what the kernel builds as modules and insists on the required drivers", () => {
    const config = parseKernelConfig(
      "CONFIG_VIRTIO_MMIO=m\nCONFIG_VIRTIO_BLK=m\nCONFIG_VIRTIO_NET=m\nCONFIG_EXT4_FS=y\n# CONFIG_ACPI_BUTTON is not set\nCONFIG_INPUT_EVDEV=m\n",
    );
    expect(modulesToLoad(config)).toEqual(["virtio_mmio", "virtio_blk", "virtio_net", "evdev"]);
    config.set("CONFIG_EXT4_FS", "m");
    expect(modulesToLoad(config)).toContain("ext4");
    config.delete("CONFIG_VIRTIO_BLK");
    expect(() => modulesToLoad(config)).toThrow(/CONFIG_VIRTIO_BLK must be built in or built as a module/);
  });

  it("reads name, dependencies and soft pre-dependencies from .modinfo", () => {
    const section = Buffer.from("license=GPL\0depends=jbd2,mbcache,crc16\0softdep=pre: crc32c post: foo\0name=ext4\0", "latin1");
    expect(parseModinfo(section)).toEqual({ name: "ext4", depends: ["jbd2", "mbcache", "crc16"], softPre: ["crc32c"] });
  });

  const meta: Record<string, ModuleMetadata> = {
    virtio_net: { name: "virtio_net", depends: ["net_failover", "virtio", "virtio_ring"], softPre: [] },
    net_failover: { name: "net_failover", depends: ["failover"], softPre: [] },
    failover: { name: "failover", depends: [], softPre: [] },
    virtio: { name: "virtio", depends: ["virtio_ring"], softPre: [] },
    virtio_ring: { name: "virtio_ring", depends: [], softPre: [] },
    ext4: { name: "ext4", depends: ["jbd2"], softPre: ["crc32c", "crc32c_generic"] },
    jbd2: { name: "jbd2", depends: [], softPre: [] },
    crc32c_generic: { name: "crc32c_generic", depends: [], softPre: [] },
    loop_a: { name: "loop_a", depends: ["loop_b"], softPre: [] },
    loop_b: { name: "loop_b", depends: ["loop_a"], softPre: [] },
    broken: { name: "broken", depends: ["absent"], softPre: [] },
  };
  const index = new Map<string, ModuleFile>(Object.keys(meta).map((name) => [name, { name, path: `/m/${name}.ko` }]));
  const metadataOf = async (file: ModuleFile): Promise<ModuleMetadata> => meta[file.name] as ModuleMetadata;

  it("orders modules after their dependencies, each once, following soft dependencies that are real modules", async () => {
    const ordered = (await orderModules(["virtio_net", "ext4", "virtio"], index, metadataOf)).map((m) => m.name);
    expect(ordered).toEqual(["failover", "net_failover", "virtio_ring", "virtio", "virtio_net", "jbd2", "crc32c_generic", "ext4"]);
  });

  it("reports dependency cycles and missing dependencies", async () => {
    await expect(orderModules(["loop_a"], index, metadataOf)).rejects.toThrow(/dependency cycle through loop_a/);
    await expect(orderModules(["broken"], index, metadataOf)).rejects.toThrow(/no module file for absent \(needed by broken\)/);
  });
});

describe("writing into an unpacked image", () => {
  let tree: string;
  let host: string;

  beforeAll(async () => {
    tree = join(work, "tree");
    host = join(work, "host-side");
    await mkdir(join(tree, "etc"), { recursive: true });
    await mkdir(join(tree, "usr", "bin"), { recursive: true });
    await mkdir(host);
    await writeFile(join(host, "precious"), "host data\n");
    // Absolute links in an image are guest paths; followed on the host they would lead out of the tree.
    await symlink(host, join(tree, "etc", "escape-dir"));
    await symlink(join(host, "precious"), join(tree, "etc", "escape-file"));
    await symlink("usr/bin", join(tree, "bin"));
  });

  it("resolves absolute symlinks inside the image, never on the host", async () => {
    await writeFileInTree(tree, "/etc/escape-dir/new", "inside\n", 0o644);
    expect(await readFile(join(tree, host.slice(1), "new"), "utf8")).toBe("inside\n");
    await expect(lstat(join(host, "new"))).rejects.toThrow(/ENOENT/);
  });

  it("replaces a symlink at the final path instead of writing through it", async () => {
    await writeFileInTree(tree, "/etc/escape-file", "replaced\n", 0o600);
    expect(await readFile(join(host, "precious"), "utf8")).toBe("host data\n");
    const info = await lstat(join(tree, "etc", "escape-file"));
    expect(info.isFile()).toBe(true);
    expect(info.mode & 0o777).toBe(0o600);
  });

  it("keeps .. at the image root and follows relative links like the guest would", async () => {
    await writeFileInTree(tree, "/../../../etc/dotdot", "x", 0o644);
    expect(await readFile(join(tree, "etc", "dotdot"), "utf8")).toBe("x");
    await writeFileInTree(tree, "/bin/tool", "#!/bin/sh\n", 0o755);
    expect(await readFile(join(tree, "usr", "bin", "tool"), "utf8")).toBe("#!/bin/sh\n");
    await symlinkInTree(tree, "/sbin-init", "/bin/busybox");
    expect(await readlink(join(tree, "sbin-init"))).toBe("/bin/busybox");
  });

  it("refuses symlink loops", async () => {
    await symlink("/etc/loop-b", join(tree, "etc", "loop-a"));
    await symlink("/etc/loop-a", join(tree, "etc", "loop-b"));
    await expect(writeFileInTree(tree, "/etc/loop-a/x", "x", 0o644)).rejects.toThrow(/too many levels of symbolic links/);
  });
});

describe("keys, sources and modes", () => {
  it("keeps cache key parts apart and makes the revision depend on every artifact", () => {
    expect(cacheKey(["ab", "c"])).not.toBe(cacheKey(["a", "bc"]));
    const artifacts = [
      { name: "vmlinux", sha256: "a".repeat(64) },
      { name: "initramfs.cpio.gz", sha256: "b".repeat(64) },
      { name: "rootfs.ext4", sha256: "c".repeat(64) },
    ];
    const base = revisionDigest(artifacts);
    expect(base).toMatch(/^[0-9a-f]{64}$/);
    for (let i = 0; i < artifacts.length; i++) {
      const changed = artifacts.map((a, j) => (j === i ? { ...a, sha256: "d".repeat(64) } : a));
      expect(revisionDigest(changed)).not.toBe(base);
    }
  });

  it("adds -updates and -security only for release suites, and sorts and de-duplicates packages", () => {
    const mirrors = { archive: "http://a/debian", security: "http://a/debian-security" };
    expect(debianSources("bookworm", mirrors)).toEqual([
      "deb http://a/debian bookworm main",
      "deb http://a/debian bookworm-updates main",
      "deb http://a/debian-security bookworm-security main",
    ]);
    expect(debianSources("sid", mirrors)).toEqual(["deb http://a/debian sid main"]);
    expect(debianSources("bookworm-backports", mirrors)).toEqual(["deb http://a/debian bookworm-backports main"]);
    expect(imagePackages(["zsh", "busybox", "curl"])).toEqual(["busybox", "curl", "dropbear-bin", "iproute2", "zsh"]);
  });

  it("makes scripts executable by their content", () => {
    expect(guestFileMode(Buffer.from("#!/bin/sh\n"))).toBe(0o755);
    expect(guestFileMode(Buffer.from("key=value\n"))).toBe(0o644);
    expect(guestFileMode(Buffer.alloc(0))).toBe(0o644);
  });
});
