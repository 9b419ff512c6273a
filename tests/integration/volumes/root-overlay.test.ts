// The qcow2 root overlay QEMU instances boot from: its backing file is read from the qcow2 header, and must agree
// with what qemu-img itself reports for overlays qemu-img made.

import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createLinuxVolumes, overlayBackingFile } from "../../../src/runtime/volumes/linux-volumes.js";

const dir = mkdtempSync(join(tmpdir(), "mvm-root-overlay-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function qemuImgBacking(path: string): string | null {
  const info = JSON.parse(execFileSync("qemu-img", ["info", "--output=json", "-U", path], { encoding: "utf8" }));
  return info["backing-filename"] ?? null;
}

describe("overlayBackingFile", () => {
  it("reads the backing file qemu-img wrote, for any name, and null for a file without one", async () => {
    const base = join(dir, "rootfs, with spaces and ünïcode.ext4");
    writeFileSync(base, Buffer.alloc(1 << 20));
    const overlay = join(dir, "overlay.qcow2");
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, overlay]);
    expect(await overlayBackingFile(overlay)).toBe(base);
    expect(await overlayBackingFile(overlay)).toBe(qemuImgBacking(overlay));

    const standalone = join(dir, "standalone.qcow2");
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", standalone, "1M"]);
    expect(await overlayBackingFile(standalone)).toBeNull();
    expect(await overlayBackingFile(base)).toBeNull();
  });

  it("refuses a header whose backing name lies beyond the file", async () => {
    const broken = join(dir, "broken.qcow2");
    const header = Buffer.alloc(64);
    header.writeUInt32BE(0x514649fb, 0);
    header.writeUInt32BE(3, 4);
    header.writeBigUInt64BE(4096n, 8);
    header.writeUInt32BE(10, 16);
    writeFileSync(broken, header);
    await expect(overlayBackingFile(broken)).rejects.toThrow(/beyond the end of the file/);
  });
});

describe("createRootOverlay", () => {
  it("keeps an overlay on the same base and replaces it for another", async () => {
    const volumes = createLinuxVolumes();
    const baseA = join(dir, "a.ext4");
    const baseB = join(dir, "b.ext4");
    writeFileSync(baseA, Buffer.alloc(1 << 20));
    writeFileSync(baseB, Buffer.alloc(1 << 20));
    const overlay = join(dir, "instance", "root.qcow2");
    await volumes.createRootOverlay(baseA, overlay);
    expect(qemuImgBacking(overlay)).toBe(baseA);
    // The guest's writes land in the overlay; a restart on the same base keeps them.
    execFileSync("qemu-io", ["-f", "qcow2", "-c", "write -P 0x5a 0 4k", overlay], { stdio: "ignore" });
    const kept = execFileSync("qemu-img", ["check", "--output=json", overlay], { encoding: "utf8" });
    await volumes.createRootOverlay(baseA, overlay);
    expect(execFileSync("qemu-img", ["check", "--output=json", overlay], { encoding: "utf8" })).toBe(kept);
    expect(execFileSync("qemu-io", ["-f", "qcow2", "-c", "read -P 0x5a 0 4k", overlay], { encoding: "utf8" })).not.toMatch(/Pattern verification failed/);
    await volumes.createRootOverlay(baseB, overlay);
    expect(qemuImgBacking(overlay)).toBe(baseB);
    expect(execFileSync("qemu-io", ["-f", "qcow2", "-c", "read -P 0 0 4k", overlay], { encoding: "utf8" })).not.toMatch(/Pattern verification failed/);
  });
});
