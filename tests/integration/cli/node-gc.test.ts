// `mvm node gc` against a data root of the test's own: real revision directories on disk, the real cgroup tree (read
// under this run's own parent, where nothing of these tenants lives) and the host's network read only.

import { existsSync, mkdirSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runMvm, tempDataDir, type CliResult } from "../../helpers/mvm-cli.js";

let data: ReturnType<typeof tempDataDir>;
const mvm = (...args: string[]): CliResult => runMvm(args, { dataDir: data.path });

beforeAll(() => {
  data = tempDataDir();
});
afterAll(() => data.cleanup());

describe("mvm node gc", () => {
  it("finds nothing on an empty node and says so", () => {
    const r = mvm("node", "gc");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("(none)");
    expect(r.stdout).toContain("0 items; nothing removed (dry run: add --apply)");
  });

  it("refuses a keep count that is not a whole number of at least 0, naming the flag, with the invalid-input exit code", () => {
    for (const keep of ["-1", "1.5"]) {
      const r = mvm("node", "gc", "--apply", "--keep-revisions", keep);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/keep-revisions.*whole number/);
    }
  });

  it("lists an old revision directory no build history names, removes it with --apply and audits that; a build's own stay", () => {
    expect(mvm("tenant", "create", "acme").code).toBe(0);
    expect(mvm("pool", "create", "acme/web", "--vcpus", "1", "--mem-mib", "128").code).toBe(0);
    const revisions = join(data.path, "tenants/acme/pools/web/revisions");
    const stale = join(revisions, "0123abcd");
    const building = join(revisions, ".tmp-89abcdef-x1");
    mkdirSync(stale, { recursive: true });
    mkdirSync(building, { recursive: true });
    writeFileSync(join(stale, "vmlinux"), Buffer.alloc(64 * 1024, 1));
    const hourAgo = new Date(Date.now() - 3_600_000);
    utimesSync(stale, hourAgo, hourAgo);
    // Just renamed into place by a build that has yet to record it: not garbage (yet).
    const fresh = join(revisions, "feedf00d");
    mkdirSync(fresh);

    const dry = mvm("node", "gc", "-o", "json");
    expect(dry.code).toBe(0);
    const listed = JSON.parse(dry.stdout);
    expect(listed.applied).toBe(false);
    expect(listed.items).toEqual([
      { kind: "revision", name: stale, owner: { tenantId: "acme", poolId: "web" }, sizeBytes: expect.any(Number), removed: false, error: "" },
    ]);
    expect(listed.items[0].sizeBytes).toBeGreaterThanOrEqual(64 * 1024);
    expect(existsSync(stale)).toBe(true);

    const applied = mvm("node", "gc", "--apply");
    expect(applied.stderr).toBe("");
    expect(applied.code).toBe(0);
    expect(applied.stdout).toMatch(/revision\s.*0123abcd/);
    expect(applied.stdout).toMatch(/1 item; 1 removed, 0\.\d MiB freed/);
    expect(existsSync(stale)).toBe(false);
    expect(existsSync(building)).toBe(true);
    expect(existsSync(fresh)).toBe(true);

    const audit = mvm("audit", "tail", "acme", "-o", "json");
    const entries = JSON.parse(audit.stdout) as Array<{ action: string; outcome: string; details: Record<string, string> }>;
    expect(entries.filter((e) => e.action === "garbage_collect")).toEqual([
      expect.objectContaining({ outcome: "success", details: expect.objectContaining({ kind: "revision", name: stale }) }),
    ]);
    expect(mvm("node", "gc").stdout).toContain("0 items");
  });
});
