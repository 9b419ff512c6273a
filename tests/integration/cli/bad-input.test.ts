import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fingerprint, runMvm, tempDataDir } from "../../helpers/mvm-cli.js";

let data: ReturnType<typeof tempDataDir>;
// Input files live beside the data dir, not in it, so that writing them does not change its fingerprint.
let inputDir: string;
const mvm = (...args: string[]) => runMvm(args, { dataDir: data.path });

beforeAll(() => {
  data = tempDataDir();
  inputDir = mkdtempSync(join(tmpdir(), "mvm-bad-input-"));
  expect(mvm("tenant", "create", "acme", "--subnet", "10.50.0.0/24").code).toBe(0);
  expect(mvm("pool", "create", "acme/web").code).toBe(0);
});
afterAll(() => {
  data.cleanup();
  rmSync(inputDir, { recursive: true, force: true });
});

interface BadCase {
  name: string;
  args: () => string[];
  /** The message must name the field… */
  field: string | RegExp;
  /** …and the rule. */
  rule: RegExp;
}

const LONG_ID = "a".repeat(64);

const cases: BadCase[] = [
  { name: "tenant ID with ..", args: () => ["tenant", "create", ".."], field: "tenant_id", rule: /\[a-z0-9-\]/ },
  { name: "tenant ID with /", args: () => ["tenant", "create", "a/b"], field: "tenant_id", rule: /\[a-z0-9-\]/ },
  { name: "tenant ID in upper case", args: () => ["tenant", "create", "Acme"], field: "tenant_id", rule: /\[a-z0-9-\]/ },
  { name: "tenant ID with a leading hyphen", args: () => ["tenant", "create", "--", "-acme"], field: "tenant_id", rule: /hyphen/ },
  { name: "tenant ID of 64 characters", args: () => ["tenant", "create", LONG_ID], field: "tenant_id", rule: /1-63/ },
  { name: "empty tenant ID", args: () => ["tenant", "create", ""], field: "tenant_id", rule: /1-63/ },
  { name: "pool ID with ..", args: () => ["pool", "create", "acme/.."], field: /path|pool_id/, rule: /\[a-z0-9-\]|empty|segment/ },
  { name: "pool ID in upper case", args: () => ["pool", "create", "acme/Web"], field: /pool_id/, rule: /\[a-z0-9-\]/ },
  {
    name: "a subnet overlapping another tenant's",
    args: () => ["tenant", "create", "other", "--subnet", "10.50.0.0/16"],
    field: "network.ipv4_subnet",
    rule: /overlap.*10\.50\.0\.0\/24.*acme/,
  },
  { name: "a /30 subnet", args: () => ["tenant", "create", "other", "--subnet", "10.60.0.0/30"], field: "network.ipv4_subnet", rule: /\/16.*\/29/ },
  { name: "a /8 subnet", args: () => ["tenant", "create", "other", "--subnet", "10.0.0.0/8"], field: "network.ipv4_subnet", rule: /\/16.*\/29/ },
  { name: "a net ID out of range", args: () => ["tenant", "create", "other", "--net-id", "4096"], field: "network.net_id", rule: /0 to 4095/ },
  { name: "0 vCPUs", args: () => ["pool", "create", "acme/p0", "--vcpus", "0"], field: "resources.vcpus", rule: /1.*32/ },
  { name: "33 vCPUs", args: () => ["pool", "create", "acme/p0", "--vcpus", "33"], field: "resources.vcpus", rule: /1.*32/ },
  { name: "memory under 128 MiB", args: () => ["pool", "create", "acme/p0", "--mem-mib", "64"], field: "resources.mem_mib", rule: /128/ },
  { name: "an unknown --output", args: () => ["tenant", "list", "--output", "xml"], field: "--output", rule: /table, json, yaml/ },
  { name: "an unknown hypervisor", args: () => ["pool", "create", "acme/p0", "--hypervisor", "kvmtool"], field: "hypervisor", rule: /auto.*firecracker.*qemu/ },
  { name: "a malformed label", args: () => ["tenant", "create", "other", "--label", "novalue"], field: "--label", rule: /key=value/ },
  {
    name: "an instance path with a missing segment",
    args: () => ["instance", "info", "acme/web"],
    field: "path",
    rule: /<tenant>\/<pool>\/<instance>/,
  },
  {
    name: "an instance path with an extra segment",
    args: () => ["instance", "info", "acme/web/i-00000000/x"],
    field: "path",
    rule: /<tenant>\/<pool>\/<instance>/,
  },
  { name: "an instance path with an empty segment", args: () => ["instance", "destroy", "acme//i-00000000"], field: "path", rule: /empty|<tenant>\/<pool>\/<instance>/ },
  { name: "a malformed instance ID", args: () => ["instance", "info", "acme/web/i-XYZ"], field: /instance_id/, rule: /8 lowercase hex/ },
  { name: "a pool path with an extra segment", args: () => ["instance", "create", "acme/web/extra"], field: "path", rule: /<tenant>\/<pool>/ },
  {
    name: "a malformed desired-state JSON file",
    args: () => ["desired", "validate", join(inputDir, "desired.json")],
    field: /desired|json|line|position/i,
    rule: /JSON/,
  },
  { name: "an unknown command", args: () => ["tenant", "explode"], field: /explode|Unknown/i, rule: /Unknown|unknown/ },
  { name: "a missing argument", args: () => ["pool", "create"], field: "path", rule: /is required \(<tenant>\/<pool>/ },
];

describe("bad input: one clear line, a non-zero exit code, nothing written", () => {
  beforeAll(() => {
    writeFileSync(join(inputDir, "desired.json"), '{"schema_version": 1, "tenants": [');
  });

  for (const c of cases) {
    it(`refuses ${c.name}`, () => {
      const before = fingerprint(data.path);
      const r = mvm(...c.args());
      expect(r.code, r.stderr).not.toBe(0);
      expect(r.code).not.toBe(1); // 1 is reserved for internal errors
      const lines = r.stderr.trim().split("\n");
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/^mvm: /);
      if (typeof c.field === "string") expect(lines[0]).toContain(c.field);
      else expect(lines[0]).toMatch(c.field);
      expect(lines[0]).toMatch(c.rule);
      expect(r.stdout).toBe("");
      expect(fingerprint(data.path)).toEqual(before);
    });
  }

  it("reports every violation of one command at once", () => {
    const r = mvm("pool", "create", "acme/p1", "--vcpus", "0", "--mem-mib", "1", "--compression", "rar");
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("resources.vcpus");
    expect(r.stderr).toContain("resources.mem_mib");
    expect(r.stderr).toContain("snapshot_compression");
  });

  it("prints no stack trace unless --debug", () => {
    const quiet = mvm("tenant", "info", "nope");
    expect(quiet.code).toBe(3);
    expect(quiet.stderr.trim()).toBe("mvm: tenant nope not found");
  });
});
