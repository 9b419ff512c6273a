// The secrets disk, built in memory (ext4-image.ts), read back with e2fsprogs: e2fsck must find nothing to fix and
// debugfs must see every file with its bytes and mode. The guest's own mount of it is covered by the e2e boots.

import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { truncate } from "node:fs/promises";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { buildExt4Image, Ext4ImageError, type Ext4ImageOptions } from "../../../src/runtime/volumes/ext4-image.js";
import { isMvmError } from "../../../src/core/errors.js";
import { MAX_SECRET_BYTES, MAX_SECRET_FILES } from "../../../src/core/tenant-secrets.js";
import { createLinuxVolumes, SECRETS_DISK_BYTES } from "../../../src/runtime/volumes/linux-volumes.js";
import { seededRandom } from "../../helpers/seeded-random.js";

const dir = mkdtempSync(join(tmpdir(), "mvm-secrets-disk-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** e2fsck's verdict in read-only mode: exit status and what it printed. */
function fsck(image: string): { status: number; output: string } {
  const r = spawnSync("e2fsck", ["-fn", image], { encoding: "utf8" });
  return { status: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

function debugfs(image: string, request: string, encoding: BufferEncoding = "utf8"): string {
  return execFileSync("debugfs", ["-R", request, image], { encoding, stdio: ["ignore", "pipe", "ignore"] });
}

/** Every regular file under `root`, relative path → { content, mode }. */
function treeOf(root: string): Map<string, { content: Buffer; mode: number }> {
  const found = new Map<string, { content: Buffer; mode: number }>();
  const visit = (path: string) => {
    for (const entry of readdirSync(path, { withFileTypes: true })) {
      const full = join(path, entry.name);
      if (entry.isDirectory()) visit(full);
      else found.set(relative(root, full), { content: readFileSync(full), mode: statSync(full).mode & 0o7777 });
    }
  };
  visit(root);
  return found;
}

function writeImage(name: string, options: Partial<Ext4ImageOptions> & Pick<Ext4ImageOptions, "files">): string {
  const image = buildExt4Image({
    sizeBytes: 2 * 1024 * 1024,
    label: "secrets",
    rootMode: 0o700,
    directoryMode: 0o700,
    fileMode: 0o600,
    nowSeconds: 1_790_000_000,
    uuid: Buffer.alloc(16, 0x11),
    hashSeed: Buffer.alloc(16, 0x22),
    ...options,
  });
  const path = join(dir, name);
  writeFileSync(path, image.head);
  execFileSync("truncate", ["-s", String(image.sizeBytes), path]);
  return path;
}

describe("buildSecretsDisk", () => {
  it("writes an ext4 file system e2fsck finds clean, labelled secrets, with each file 0600 under a 0700 root", async () => {
    const volumes = createLinuxVolumes();
    const path = join(dir, "instance", "run", "secrets.ext4");
    const files = { authorized_keys: "ssh-ed25519 AAAAC3Nza test@host\n", "identity.json": '{"instance_id":"i-1"}\n', "user-secrets/db/password": "hunter2" };
    await volumes.buildSecretsDisk(path, files);

    expect(fsck(path)).toMatchObject({ status: 0 });
    // One fixed size, sparse.
    expect(statSync(path).size).toBe(SECRETS_DISK_BYTES);
    expect(statSync(path).blocks * 512).toBeLessThan(256 * 1024);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const header = execFileSync("dumpe2fs", ["-h", path], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    expect(header).toMatch(/Filesystem volume name:\s+secrets\n/);
    expect(header).toMatch(/Filesystem features:\s+filetype extent sparse_super extra_isize\n/);
    for (const [name, content] of Object.entries(files)) expect(debugfs(path, `cat /${name}`)).toBe(content);
    expect(debugfs(path, "stat /")).toMatch(/Mode:\s+0700/);
    expect(debugfs(path, "stat /authorized_keys")).toMatch(/Mode:\s+0600/);
    expect(debugfs(path, "stat /user-secrets/db")).toMatch(/Mode:\s+0700/);
    // Nothing but the disk is left beside it.
    expect(readdirSync(join(dir, "instance", "run"))).toEqual(["secrets.ext4"]);
  });

  it("holds the largest secret set a tenant may have (256 files, 1 MiB) at its fixed size, and replaces the disk it rebuilds", async () => {
    const volumes = createLinuxVolumes();
    const path = join(dir, "largest", "secrets.ext4");
    await volumes.buildSecretsDisk(path, { "identity.json": '{"secrets_epoch":1}' });
    const largest: Record<string, Uint8Array> = { authorized_keys: "ssh-ed25519 AAAA k\n".repeat(20), "identity.json": "{}".padEnd(400, " ") } as never;
    for (let i = 0; i < MAX_SECRET_FILES; i++) largest[`user-secrets/${"s".repeat(200)}-${i}`] = randomBytes(MAX_SECRET_BYTES / MAX_SECRET_FILES);
    await volumes.buildSecretsDisk(path, largest);
    expect(statSync(path).size).toBe(SECRETS_DISK_BYTES);
    expect(fsck(path).status).toBe(0);
    expect(Buffer.from(debugfs(path, `cat /user-secrets/${"s".repeat(200)}-255`, "latin1"), "latin1")).toEqual(Buffer.from(largest[`user-secrets/${"s".repeat(200)}-255`]!));
  });

  it("keeps the size of the disk already there on a wake, and refuses content that no longer fits it", async () => {
    const volumes = createLinuxVolumes();
    const path = join(dir, "kept", "secrets.ext4");
    // A disk as an older version sized it for a guest that is now asleep.
    await volumes.buildSecretsDisk(path, { "identity.json": "{}" });
    await truncate(path, 3 * 1024 * 1024);
    await volumes.buildSecretsDisk(path, { "identity.json": '{"secrets_epoch":2}' }, { keepSize: true });
    expect(statSync(path).size).toBe(3 * 1024 * 1024);
    expect(fsck(path).status).toBe(0);
    expect(debugfs(path, "cat /identity.json")).toBe('{"secrets_epoch":2}');
    const refused = await volumes.buildSecretsDisk(path, { big: randomBytes(3 * 1024 * 1024) }, { keepSize: true }).catch((e: unknown) => e);
    expect(isMvmError(refused) && refused.kind).toBe("failed_precondition");
    expect((refused as Error).message).toMatch(/no longer fit the 3145728-byte disk this instance booted with/);
    expect(debugfs(path, "cat /identity.json")).toBe('{"secrets_epoch":2}');
    // Without a disk there (a first wake of an instance whose disk was removed), the standard size.
    await volumes.buildSecretsDisk(join(dir, "kept", "none.ext4"), { "identity.json": "{}" }, { keepSize: true });
    expect(statSync(join(dir, "kept", "none.ext4")).size).toBe(SECRETS_DISK_BYTES);
  });

  it("refuses a name that leaves the disk, and leaves no file behind", async () => {
    const volumes = createLinuxVolumes();
    const path = join(dir, "refused", "secrets.ext4");
    for (const name of ["../escape", "/etc/shadow", "a//b", "a/./b", "lost+found/x", `${"n".repeat(256)}`]) {
      await expect(volumes.buildSecretsDisk(path, { [name]: "x" })).rejects.toThrow(/^secrets disk: file name /);
    }
    expect(() => statSync(join(dir, "refused"))).toThrow(/ENOENT/);
  });
});

describe("buildExt4Image", () => {
  it("round-trips random trees through e2fsck and debugfs rdump (seeded)", () => {
    for (let seed = 1; seed <= 12; seed += 1) {
      const random = seededRandom(seed);
      const pick = (n: number) => Math.floor(random() * n);
      const files: Record<string, Buffer> = {};
      const directories = ["", "a", "a/b", "c", "deep/er/still/deeper"];
      const count = 1 + pick(seed % 4 === 0 ? 400 : 30);
      for (let i = 0; i < count; i += 1) {
        const name = `${["f", "secret-", "ünïcödé-", "x".repeat(100)][pick(4)]}${i}`;
        const under = directories[pick(directories.length)]!;
        const size = [0, 1, 4095, 4096, 4097, pick(20_000)][pick(6)]!;
        files[under ? `${under}/${name}` : name] = Buffer.from(Array.from({ length: size }, () => pick(256)));
      }
      const total = Object.values(files).reduce((n, b) => n + Math.ceil(b.length / 4096) * 4096 + 4096, 0);
      const image = writeImage(`random-${seed}.ext4`, { files, sizeBytes: Math.ceil((total + 2 * 1024 * 1024) / 4096) * 4096 });

      const verdict = fsck(image);
      expect(verdict.status, `seed ${seed}: ${verdict.output}`).toBe(0);
      const out = mkdtempSync(join(dir, `rdump-${seed}-`));
      debugfs(image, `rdump / ${out}`);
      const dumped = treeOf(out);
      expect([...dumped.keys()].sort(), `seed ${seed}`).toEqual(Object.keys(files).sort());
      for (const [name, content] of Object.entries(files)) {
        expect(dumped.get(name)!.content.equals(content), `seed ${seed}: ${name}`).toBe(true);
        expect(dumped.get(name)!.mode, `seed ${seed}: ${name}`).toBe(0o600);
      }
    }
  });

  it("spreads a directory with many entries over several blocks", () => {
    const files = Object.fromEntries(Array.from({ length: 500 }, (_, i) => [`d/${"e".repeat(60)}-${i}`, String(i)]));
    const image = writeImage("many.ext4", { files, sizeBytes: 8 * 1024 * 1024 });
    expect(fsck(image).status).toBe(0);
    // 500 entries of 72 bytes: nine 4 KiB blocks of 56 entries at most (an entry never crosses a block's end).
    expect(debugfs(image, "stat /d")).toMatch(/Size: 36864\b/);
    expect(debugfs(image, "ls -p /d").trim().split("\n")).toHaveLength(502);
    expect(debugfs(image, `cat /d/${"e".repeat(60)}-499`)).toBe("499");
  });

  it("names what does not fit, and the rule", () => {
    const base: Ext4ImageOptions = {
      sizeBytes: 1024 * 1024,
      label: "secrets",
      files: {},
      rootMode: 0o700,
      directoryMode: 0o700,
      fileMode: 0o600,
      nowSeconds: 0,
      uuid: Buffer.alloc(16),
      hashSeed: Buffer.alloc(16),
    };
    const refusal = (options: Partial<Ext4ImageOptions>) => {
      try {
        buildExt4Image({ ...base, ...options });
      } catch (e) {
        expect(e).toBeInstanceOf(Ext4ImageError);
        return (e as Error).message;
      }
      throw new Error("accepted");
    };
    expect(refusal({ sizeBytes: 1000 })).toMatch(/size 1000 must be a positive multiple of 4096/);
    expect(refusal({ sizeBytes: 256 * 1024 * 1024 })).toMatch(/over 134217728 bytes \(one block group\)/);
    expect(refusal({ label: "a-label-over-16-bytes" })).toMatch(/label .* is over 16 bytes/);
    expect(refusal({ files: { big: Buffer.alloc(1024 * 1024) } })).toMatch(/the files need \d+ bytes .* over the size 1048576/);
    expect(refusal({ files: { a: "file", "a/b": "under a file" } })).toMatch(/"a\/b" runs through a file/);
    expect(refusal({ files: { "a/b": "x", a: "x" } })).toMatch(/"a" is also a directory/);
    expect(refusal({ files: { "a\0b": "x" } })).toMatch(/NUL/);
    expect(refusal({ files: { "": "x" } })).toMatch(/empty or "\." component/);
  });
});
