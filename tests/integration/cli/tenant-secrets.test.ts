// `mvm tenant rotate-secrets` on a data root of the test's own: the set on disk (0600), refusals with no side effect.

import { mkdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fingerprint, runMvm, tempDataDir, type CliResult } from "../../helpers/mvm-cli.js";

let data: ReturnType<typeof tempDataDir>;
const mvm = (...args: string[]): CliResult => runMvm(args, { dataDir: data.path });

beforeAll(() => {
  data = tempDataDir();
  expect(mvm("tenant", "create", "acme").code).toBe(0);
});
afterAll(() => data.cleanup());

describe("mvm tenant rotate-secrets", () => {
  it("takes the regular files of a directory as the set, keeps it 0600, and shows only its hash and epoch", () => {
    const dir = join(data.path, "input-secrets");
    mkdirSync(dir);
    writeFileSync(join(dir, "db-password"), "hunter2\n");
    const r = mvm("tenant", "rotate-secrets", "acme", "--from-dir", dir, "-o", "json");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const tenant = JSON.parse(r.stdout);
    expect(tenant.secretsEpoch).toBe(1);
    expect(tenant.secretsHash).toMatch(/^[0-9a-f]{64}$/);
    expect(r.stdout).not.toContain("hunter2");
    expect(statSync(join(data.path, "tenants/acme/secrets.json")).mode & 0o777).toBe(0o600);

    const kept = JSON.parse(mvm("tenant", "rotate-secrets", "acme", "-o", "json").stdout);
    expect([kept.secretsEpoch, kept.secretsHash]).toEqual([2, tenant.secretsHash]);
    const cleared = JSON.parse(mvm("tenant", "rotate-secrets", "acme", "--clear", "-o", "json").stdout);
    expect([cleared.secretsEpoch, cleared.secretsHash]).toEqual([3, undefined]);
  });

  it("refuses a directory with anything but regular files, a bad file name, or --clear with --from-dir, changing nothing", () => {
    const base = join(data.path, "input-bad");
    mkdirSync(join(base, "nested", "sub"), { recursive: true });
    mkdirSync(join(base, "badname"), { recursive: true });
    writeFileSync(join(base, "badname", "has space"), "x");
    const before = fingerprint(data.path);
    const cases: Array<[string[], RegExp]> = [
      [["--from-dir", join(base, "nested")], /--from-dir: must hold regular files only, not sub/],
      [["--from-dir", join(base, "badname")], /--from-dir\["has space"\]: must be 1 to 255 characters/],
      [["--from-dir", join(base, "missing")], /--from-dir: must be a readable directory/],
      [["--clear", "--from-dir", join(base, "nested")], /--clear: cannot be combined with --from-dir/],
    ];
    for (const [flags, message] of cases) {
      const r = mvm("tenant", "rotate-secrets", "acme", ...flags);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(message);
    }
    expect(fingerprint(data.path)).toEqual(before);
  });
});
