// The raw root disk Firecracker instances boot from: a copy of the revision's image, kept while the base is the same.

import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createLinuxVolumes } from "../../../src/runtime/volumes/linux-volumes.js";

const dir = mkdtempSync(join(tmpdir(), "mvm-root-copy-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("createRootCopy", () => {
  it("copies the base (0600), keeps the copy across calls, and replaces it for another base", async () => {
    const volumes = createLinuxVolumes();
    const base = join(dir, "rootfs.ext4");
    const copy = join(dir, "instance", "volumes", "root.raw");
    writeFileSync(base, Buffer.alloc(1 << 20, 7));
    await volumes.createRootCopy(base, copy);
    expect(statSync(copy).size).toBe(1 << 20);
    expect(statSync(copy).mode & 0o777).toBe(0o600);
    expect(readFileSync(copy).equals(readFileSync(base))).toBe(true);

    // The guest wrote to its disk; a restart must not throw that away.
    writeFileSync(copy, "guest wrote this");
    await volumes.createRootCopy(base, copy);
    expect(readFileSync(copy, "utf8")).toBe("guest wrote this");

    const newRevision = join(dir, "rootfs-2.ext4");
    writeFileSync(newRevision, "revision two");
    await volumes.createRootCopy(newRevision, copy);
    expect(readFileSync(copy, "utf8")).toBe("revision two");
  });
});
