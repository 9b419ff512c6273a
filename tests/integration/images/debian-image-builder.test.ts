// The debian image builder for real: Debian's cloud kernel, busybox-static, mmdebstrap and mkfs.ext4. The cache
// lives in .cache/test-images/ and is kept between runs (the first run downloads and bootstraps: a minute or two).
// Revision directories go to a fresh temporary directory per run.

import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, open, readFile, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { gunzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BuildProgressEvent, BuiltImage } from "../../../src/core/data-plane-ports.js";
import { MvmError } from "../../../src/core/errors.js";
import type { ImageSource } from "../../../src/core/model.js";
import { execaCommandRunner } from "../../../src/runtime/images/command-runner.js";
import type { CommandRunner } from "../../../src/runtime/images/command-runner.js";
import { createDebianImageBuilder } from "../../../src/runtime/images/debian-image-builder.js";
import type { RevisionManifest } from "../../../src/runtime/images/debian-image-builder.js";
import { hasPvhEntryNote } from "../../../src/runtime/images/elf.js";
import { DEFAULT_TEST_IMAGE_SOURCE, TEST_IMAGE_CACHE_DIR } from "../../helpers/default-image.js";

const exec = promisify(execFile);
const COLD_BUILD_MS = 20 * 60_000;

async function hasTools(): Promise<string | null> {
  if (process.getuid?.() !== 0) return "needs root (mmdebstrap in root mode, ownership in the image)";
  for (const tool of ["mmdebstrap", "mkfs.ext4", "debugfs", "lz4", "dpkg-deb", "apt-get"]) {
    try {
      await exec("sh", ["-c", `command -v ${tool}`]);
    } catch {
      return `${tool} is not installed`;
    }
  }
  return null;
}

const skipReason = await hasTools();
if (skipReason !== null) console.warn(`skipping debian image builder integration: ${skipReason}`);

async function sha256Of(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Runs commands for real and remembers which programs it ran. */
function recordingRunner(): { runner: CommandRunner; programs: string[] } {
  const programs: string[] = [];
  return {
    programs,
    runner: (file, args, options) => {
      programs.push(file);
      return execaCommandRunner(file, args, options);
    },
  };
}

/** `debugfs -R <request>` against an ext4 image, read-only. */
async function debugfs(image: string, request: string): Promise<string> {
  const { stdout } = await exec("debugfs", ["-R", request, image], { maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

/** Names and modes of the entries of a newc cpio archive. */
function cpioEntries(archive: Buffer): Map<string, { mode: number; data: Buffer }> {
  const entries = new Map<string, { mode: number; data: Buffer }>();
  let at = 0;
  for (;;) {
    expect(archive.toString("latin1", at, at + 6)).toBe("070701");
    const field = (i: number): number => parseInt(archive.toString("latin1", at + 6 + i * 8, at + 14 + i * 8), 16);
    const mode = field(1);
    const fileSize = field(6);
    const nameSize = field(11);
    const name = archive.toString("utf8", at + 110, at + 110 + nameSize - 1);
    const dataAt = (at + 110 + nameSize + 3) & ~3;
    if (name === "TRAILER!!!") return entries;
    entries.set(name, { mode, data: archive.subarray(dataAt, dataAt + fileSize) });
    at = (dataAt + fileSize + 3) & ~3;
  }
}

describe.skipIf(skipReason !== null)("debian image builder (real tools)", () => {
  let revisionsDir: string;
  let first: BuiltImage;
  let firstMs: number;
  const events: BuildProgressEvent[] = [];

  beforeAll(async () => {
    revisionsDir = await mkdtemp(join(tmpdir(), "mvm-revisions-"));
    const builder = createDebianImageBuilder({ cacheDir: TEST_IMAGE_CACHE_DIR });
    const t0 = performance.now();
    first = await builder.build({ ...DEFAULT_TEST_IMAGE_SOURCE } as ImageSource, revisionsDir, (e) => events.push(e));
    firstMs = performance.now() - t0;
    console.log(`debian default image: first build in this run ${Math.round(firstMs)} ms, revision ${first.revision}`);
  }, COLD_BUILD_MS);

  afterAll(async () => {
    if (revisionsDir) await rm(revisionsDir, { recursive: true, force: true });
  });

  it("writes the three artifacts and a manifest whose digests match the files", async () => {
    const dir = join(revisionsDir, first.revision);
    expect(first.revision).toMatch(/^[0-9a-f]{16}$/);
    expect(first.builder).toBe("debian/1");
    expect(first.initrd).not.toBeNull();
    const manifest = JSON.parse(await readFile(join(dir, "manifest.json"), "utf8")) as RevisionManifest;
    expect(manifest.revision).toBe(first.revision);
    expect(manifest.revisionSha256.startsWith(first.revision)).toBe(true);

    for (const artifact of [first.kernel, first.initrd!, first.rootfs]) {
      const path = join(dir, artifact.path);
      expect((await stat(path)).size).toBe(artifact.sizeBytes);
      expect(await sha256Of(path)).toBe(artifact.sha256);
    }
    expect([manifest.kernel.sha256, manifest.initrd.sha256, manifest.rootfs.sha256]).toEqual([
      first.kernel.sha256,
      first.initrd!.sha256,
      first.rootfs.sha256,
    ]);
    // The revision is the digest of the artifacts' digests, as documented.
    const lines = `vmlinux ${first.kernel.sha256}\ninitramfs.cpio.gz ${first.initrd!.sha256}\nrootfs.ext4 ${first.rootfs.sha256}\n`;
    expect(createHash("sha256").update(lines).digest("hex")).toBe(manifest.revisionSha256);
    expect(manifest.kernel.package).toMatch(/^linux-image-.*-cloud-amd64$/);
  });

  it("extracts an ELF vmlinux with a PVH entry note", async () => {
    const kernel = join(revisionsDir, first.revision, first.kernel.path);
    const handle = await open(kernel, "r");
    const head = Buffer.alloc(4);
    await handle.read(head, 0, 4, 0);
    await handle.close();
    expect(head).toEqual(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    expect(await hasPvhEntryNote(kernel)).toBe(true);
  });

  it("packs busybox, the init script and the virtio modules in dependency order into the initramfs", async () => {
    const archive = gunzipSync(await readFile(join(revisionsDir, first.revision, first.initrd!.path)));
    const entries = cpioEntries(archive);
    expect(entries.get("init")?.data.toString()).toBe(await readFile(join(import.meta.dirname, "../../../guest/initramfs/init"), "utf8"));
    expect((entries.get("init")?.mode ?? 0) & 0o777).toBe(0o755);
    expect(entries.get("bin/busybox")?.data.subarray(0, 4)).toEqual(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    expect(entries.get("dev/console")?.mode).toBe(0o020600);
    const order = (entries.get("etc/mvm/modules")?.data.toString() ?? "").trim().split("\n");
    for (const m of ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net"]) {
      expect(order).toContain(m);
      expect(entries.has(`lib/modules/${m}.ko`)).toBe(true);
    }
    const before = (a: string, b: string): boolean => order.indexOf(a) < order.indexOf(b);
    expect(before("virtio", "virtio_mmio") && before("virtio_ring", "virtio_mmio")).toBe(true);
    expect(before("virtio_ring", "virtio_blk") && before("net_failover", "virtio_net") && before("failover", "net_failover")).toBe(true);
  });

  it("puts busybox init, dropbear, the guest scripts and no host keys into the ext4 root image", async () => {
    const image = join(revisionsDir, first.revision, first.rootfs.path);
    const { stdout: fsck } = await exec("e2fsck", ["-fn", image]);
    expect(fsck).toContain("root");
    expect(await debugfs(image, "cat /etc/inittab")).toContain("::sysinit:/usr/lib/mvm/sysinit");
    expect(await debugfs(image, "stat /usr/sbin/dropbear")).toMatch(/Type: regular/);
    expect(await debugfs(image, "stat /usr/sbin/init")).toMatch(/Fast link dest: "\/bin\/busybox"/);
    for (const hook of ["ready", "sleep-prep", "wake"]) {
      expect(await debugfs(image, `stat /usr/lib/mvm/hooks/${hook}`)).toMatch(/Mode:\s+0755/);
    }
    expect(await debugfs(image, "ls /etc/dropbear")).not.toMatch(/host_key/);
    // The build host's resolver and name do not leak into the image.
    expect(await debugfs(image, "cat /etc/hostname")).toBe("localhost\n");
    expect(await debugfs(image, "cat /etc/resolv.conf")).not.toMatch(/nameserver/);
  });

  it("reports progress through every phase, monotonically, ending at 100", () => {
    const phases = [...new Set(events.map((e) => e.phase))];
    expect(phases).toEqual(["kernel", "initramfs", "rootfs", "ext4", "hashing"]);
    const percents = events.map((e) => e.percent);
    expect(percents).toEqual([...percents].sort((a, b) => a - b));
    expect(percents.at(-1)).toBe(100);
  });

  it("rebuilds the same source from the cache: same revision, no commands, well under a second", async () => {
    const { runner, programs } = recordingRunner();
    const builder = createDebianImageBuilder({ cacheDir: TEST_IMAGE_CACHE_DIR, runner });
    const otherRevisions = await mkdtemp(join(tmpdir(), "mvm-revisions-"));
    try {
      const t0 = performance.now();
      const again = await builder.build({ ...DEFAULT_TEST_IMAGE_SOURCE } as ImageSource, otherRevisions, () => undefined);
      const ms = performance.now() - t0;
      console.log(`debian default image: cached build ${Math.round(ms)} ms`);
      expect(again.revision).toBe(first.revision);
      expect(again.rootfs.sha256).toBe(first.rootfs.sha256);
      expect(programs).toEqual([]);
      expect(ms).toBeLessThan(1000);
      const manifest = JSON.parse(await readFile(join(otherRevisions, again.revision, "manifest.json"), "utf8")) as RevisionManifest;
      expect(manifest.rootfs.sha256).toBe(first.rootfs.sha256);
    } finally {
      await rm(otherRevisions, { recursive: true, force: true });
    }
  });

  it("gives a new revision when the packages change, with the package in the image", async () => {
    const { runner, programs } = recordingRunner();
    const builder = createDebianImageBuilder({ cacheDir: TEST_IMAGE_CACHE_DIR, runner });
    const built = await builder.build({ kind: "debian", suite: "bookworm", packages: ["less"], extraFiles: {} }, revisionsDir, () => undefined);
    expect(built.revision).not.toBe(first.revision);
    expect(built.kernel.sha256).toBe(first.kernel.sha256);
    expect(built.initrd?.sha256).toBe(first.initrd?.sha256);
    expect(built.rootfs.sha256).not.toBe(first.rootfs.sha256);
    expect(programs).not.toContain("apt-get");
    expect(await debugfs(join(revisionsDir, built.revision, built.rootfs.path), "stat /usr/bin/less")).toMatch(/Type: regular/);
  }, COLD_BUILD_MS);

  it("gives a new revision for extra files without bootstrapping again, and writes them inside the image", async () => {
    const { runner, programs } = recordingRunner();
    const builder = createDebianImageBuilder({ cacheDir: TEST_IMAGE_CACHE_DIR, runner });
    const extraFiles = {
      "/etc/motd": "hello from an extra file\n",
      "/usr/local/bin/greet": "#!/bin/sh\necho hi\n",
      // /etc/mtab is a symlink to /proc/self/mounts in Debian: the write must replace the link inside the image, not
      // follow it to the build host's /proc.
      "/etc/mtab": "not a link any more\n",
    };
    const built = await builder.build({ kind: "debian", suite: "bookworm", packages: [], extraFiles }, revisionsDir, () => undefined);
    expect(built.revision).not.toBe(first.revision);
    // The base tree of the default image serves: only the root image step may run (on a cold cache).
    expect(programs.filter((p) => p !== "tar" && p !== "mkfs.ext4")).toEqual([]);
    const image = join(revisionsDir, built.revision, built.rootfs.path);
    expect(await debugfs(image, "cat /etc/motd")).toBe(extraFiles["/etc/motd"]);
    expect(await debugfs(image, "stat /usr/local/bin/greet")).toMatch(/Mode:\s+0755/);
    expect(await debugfs(image, "cat /etc/mtab")).toBe(extraFiles["/etc/mtab"]);
  }, COLD_BUILD_MS);

  it("rejects an invalid source with field paths before running anything", async () => {
    const { runner, programs } = recordingRunner();
    const builder = createDebianImageBuilder({ cacheDir: TEST_IMAGE_CACHE_DIR, runner });
    const error = await builder
      .build({ kind: "debian", suite: "bookworm", packages: ["Not A Package"], extraFiles: { "etc/relative": "x" } }, revisionsDir, () => undefined)
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MvmError);
    expect((error as MvmError).kind).toBe("invalid");
    expect((error as MvmError).violations.map((v) => v.field)).toEqual(["image.packages[0]", 'image.extra_files["etc/relative"]']);
    expect(programs).toEqual([]);
  });

  it("names the phase when a step fails", async () => {
    const emptyCache = await mkdtemp(join(tmpdir(), "mvm-image-cache-"));
    try {
      const failing: CommandRunner = async (file) => {
        throw new Error(`${file}: no network in this test`);
      };
      const builder = createDebianImageBuilder({ cacheDir: emptyCache, runner: failing, aptListsDir: join(emptyCache, "no-lists") });
      const error = await builder.build({ ...DEFAULT_TEST_IMAGE_SOURCE } as ImageSource, revisionsDir, () => undefined).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(MvmError);
      expect((error as MvmError).kind).toBe("unavailable");
      expect((error as MvmError).message).toMatch(/^building debian image \(kernel\): apt-cache: no network in this test/);
    } finally {
      await rm(emptyCache, { recursive: true, force: true });
    }
  });

  it("builds a step once when two builds of the same source run at the same time", async () => {
    const { runner, programs } = recordingRunner();
    const builder = createDebianImageBuilder({ cacheDir: TEST_IMAGE_CACHE_DIR, runner });
    // A fresh extra file each run, so that the root image is not cached yet.
    const source: ImageSource = { kind: "debian", suite: "bookworm", packages: [], extraFiles: { "/etc/mvm-test-run": `${Date.now()}-${process.pid}\n` } };
    const [a, b] = await Promise.all([
      builder.build(source, revisionsDir, () => undefined),
      createDebianImageBuilder({ cacheDir: TEST_IMAGE_CACHE_DIR, runner }).build(source, revisionsDir, () => undefined),
    ]);
    expect(a.revision).toBe(b.revision);
    expect(programs.filter((p) => p === "mkfs.ext4")).toHaveLength(1);
    const rootImages = (await readdir(join(TEST_IMAGE_CACHE_DIR, "rootfs"))).filter((n) => n.startsWith(".tmp-"));
    expect(rootImages).toEqual([]);
    // The one-off root image is of no use to later runs: its cache entry is the one sharing the revision's inode.
    const inode = (await stat(join(revisionsDir, a.revision, a.rootfs.path))).ino;
    for (const entry of await readdir(join(TEST_IMAGE_CACHE_DIR, "rootfs"))) {
      const cached = join(TEST_IMAGE_CACHE_DIR, "rootfs", entry);
      if ((await stat(join(cached, "rootfs.ext4")).catch(() => null))?.ino === inode) await rm(cached, { recursive: true, force: true });
    }
    await rm(join(revisionsDir, a.revision), { recursive: true, force: true });
  }, COLD_BUILD_MS);
});
