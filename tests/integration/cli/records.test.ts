import { statSync, readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { parse as parseYaml } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fingerprint, runMvm, tempDataDir, type CliResult } from "../../helpers/mvm-cli.js";

let data: ReturnType<typeof tempDataDir>;
/** A refusal by quota is audited (SPEC §10.3); everything else must stay as it was. */
const withoutAuditLogs = (f: Record<string, string>) =>
  Object.fromEntries(Object.entries(f).filter(([path]) => !/audit\.log(\.lock)?$/.test(path)));
const mvm = (...args: string[]): CliResult => runMvm(args, { dataDir: data.path });
const json = <T>(r: CliResult): T => {
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout) as T;
};

beforeAll(() => {
  data = tempDataDir();
});
afterAll(() => data.cleanup());

describe("tenant → pool → instance round trip", () => {
  it("creates a tenant with a generated SSH key and an allocated network", () => {
    const tenant = json<any>(mvm("tenant", "create", "acme", "--label", "team=ci", "-o", "json"));
    expect(tenant.tenantId).toBe("acme");
    expect(tenant.network.ipv4Subnet).toMatch(/^10\.(24[0-9]|25[0-5])\.\d+\.0\/24$/);
    expect(tenant.network.gatewayIp).toBe(tenant.network.ipv4Subnet.replace(/\.0\/24$/, ".1"));
    expect(Buffer.byteLength(tenant.network.bridgeName)).toBeLessThanOrEqual(15);
    expect(tenant.labels).toEqual({ team: "ci" });
    expect(tenant.quotas.maxPools).toBe(4);
    expect(tenant.sshPublicKey).toMatch(/^ssh-ed25519 /);

    const keyDir = join(data.path, "tenants/acme/ssh");
    const privateKey = join(keyDir, "id_ed25519");
    expect(statSync(privateKey).mode & 0o777).toBe(0o600);
    expect(readFileSync(privateKey, "utf8")).toContain("BEGIN OPENSSH PRIVATE KEY");
    expect(readFileSync(join(keyDir, "id_ed25519.pub"), "utf8").trim()).toBe(tenant.sshPublicKey);
  });

  it("gives a second tenant a different, non-overlapping network", () => {
    const a = json<any>(mvm("tenant", "info", "acme", "-o", "json"));
    const b = json<any>(mvm("tenant", "create", "beta", "-o", "json"));
    expect(b.network.netId).not.toBe(a.network.netId);
    expect(b.network.ipv4Subnet).not.toBe(a.network.ipv4Subnet);
  });

  it("takes a given network and lists tenants in every format", () => {
    json(mvm("tenant", "create", "gamma", "--net-id", "77", "--subnet", "10.99.0.0/16", "-o", "json"));
    const table = mvm("tenant", "list");
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/TENANT/);
    expect(table.stdout).toMatch(/gamma.*77.*10\.99\.0\.0\/16.*10\.99\.0\.1/);
    const asJson = json<any[]>(mvm("tenant", "list", "-o", "json"));
    expect(asJson.map((t) => t.tenantId)).toEqual(["acme", "beta", "gamma"]);
    const asYaml = parseYaml(mvm("tenant", "list", "-o", "yaml").stdout) as any[];
    expect(asYaml).toEqual(asJson);
  });

  it("creates, scales and updates a pool", () => {
    const pool = json<any>(mvm("pool", "create", "acme/web", "--vcpus", "2", "--mem-mib", "512", "--data-disk-mib", "64", "-o", "json"));
    expect(pool).toMatchObject({ tenantId: "acme", poolId: "web", resources: { vcpus: 2, memMib: 512, dataDiskMib: 64 } });
    expect(pool.image).toEqual({ kind: "debian", suite: "bookworm", packages: [], extraFiles: {} });
    const scaled = json<any>(mvm("pool", "scale", "acme/web", "--running", "2", "--warm", "1", "-o", "json"));
    expect(scaled.desiredCounts).toEqual({ running: 2, warm: 1, sleeping: 0 });
    const updated = json<any>(mvm("pool", "update", "acme/web", "--package", "curl", "--pinned", "-o", "json"));
    expect(updated.image.packages).toEqual(["curl"]);
    expect(updated.pinned).toBe(true);
    expect(updated.resources.vcpus).toBe(2);
    const info = parseYaml(mvm("pool", "info", "acme/web", "-o", "yaml").stdout);
    expect(info).toEqual(updated);
    const table = mvm("pool", "list", "acme");
    expect(table.stdout).toMatch(/acme\/web.*debian:bookworm.*2.*512.*64.*2\/1\/0/);
  });

  it("creates instances with distinct IPs, TAPs and MACs, and reuses a destroyed one's IP", () => {
    const tenant = json<any>(mvm("tenant", "info", "acme", "-o", "json"));
    const prefix = tenant.network.ipv4Subnet.replace(/\.0\/24$/, "");
    const first = json<any>(mvm("instance", "create", "acme/web", "-o", "json"));
    const second = json<any>(mvm("instance", "create", "acme/web", "-o", "json"));
    expect(first.instanceId).toMatch(/^i-[0-9a-f]{8}$/);
    expect(first.status).toBe("created");
    // .1 is the gateway, .2 is reserved for the builder VM.
    expect(first.net.guestIp).toBe(`${prefix}.3`);
    expect(second.net.guestIp).toBe(`${prefix}.4`);
    expect(first.net.tapName).not.toBe(second.net.tapName);
    expect(first.net.mac).not.toBe(second.net.mac);
    expect(first.net.mac).toMatch(/^02:fc(:[0-9a-f]{2}){4}$/);

    const listed = json<any[]>(mvm("instance", "list", "--tenant", "acme", "-o", "json"));
    expect(listed.map((i) => i.instanceId).sort()).toEqual([first.instanceId, second.instanceId].sort());
    const table = mvm("instance", "list");
    expect(table.stdout).toContain(`acme/web/${first.instanceId}`);
    const yamlInfo = parseYaml(mvm("instance", "info", `acme/web/${first.instanceId}`, "-o", "yaml").stdout);
    expect(yamlInfo).toEqual(first);
    const tableInfo = mvm("instance", "info", `acme/web/${first.instanceId}`);
    expect(tableInfo.stdout).toMatch(/net\.guestIp\s*│\s*10\./);

    const destroyed = mvm("instance", "destroy", `acme/web/${first.instanceId}`);
    expect(destroyed.code).toBe(0);
    expect(mvm("instance", "info", `acme/web/${first.instanceId}`).code).toBe(3);
    const third = json<any>(mvm("instance", "create", "acme/web", "-o", "json"));
    expect(third.net.guestIp).toBe(first.net.guestIp);
  });

  it("reports the node", () => {
    const node = json<any>(mvm("node", "info", "-o", "json"));
    expect(node.nodeId).toMatch(/^n-[0-9a-f]{12}$/);
    expect(node.dataRoot).toBe(data.path);
    expect(node.vcpus).toBeGreaterThan(0);
    expect(node.brokenRecords).toEqual([]);
    // The node ID persists across invocations.
    expect(json<any>(mvm("node", "info", "-o", "json")).nodeId).toBe(node.nodeId);
  });
});

describe("quotas", () => {
  it("enforces max_pools at pool create", () => {
    json(mvm("tenant", "create", "small", "--max-pools", "1", "--max-instances-per-pool", "2", "-o", "json"));
    json(mvm("pool", "create", "small/one", "-o", "json"));
    const before = fingerprint(data.path);
    const r = mvm("pool", "create", "small/two");
    expect(r.code).toBe(6);
    expect(r.stderr.trim()).toMatch(/^mvm: .*max_pools.*1/);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(withoutAuditLogs(fingerprint(data.path))).toEqual(withoutAuditLogs(before));
    const audit = JSON.parse(mvm("audit", "tail", "small", "-o", "json").stdout) as Array<{ action: string; outcome: string }>;
    expect(audit.slice(-2).map((e) => [e.action, e.outcome])).toEqual([
      ["pool_create", "failure"],
      ["quota_reject", "denied"],
    ]);
  });

  it("enforces max_instances_per_pool at instance create", () => {
    json(mvm("instance", "create", "small/one", "-o", "json"));
    json(mvm("instance", "create", "small/one", "-o", "json"));
    const before = fingerprint(data.path);
    const r = mvm("instance", "create", "small/one");
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/max_instances_per_pool/);
    expect(withoutAuditLogs(fingerprint(data.path))).toEqual(withoutAuditLogs(before));
  });

  it("refuses desired counts above the quota", () => {
    const r = mvm("pool", "scale", "small/one", "--running", "9");
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/desired_counts: .*max_running/);
  });

  it("refuses to destroy a tenant with pools unless forced, then removes everything", () => {
    const r = mvm("tenant", "destroy", "small");
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/still has pools/);
    expect(mvm("tenant", "destroy", "small", "--force").code).toBe(0);
    expect(existsSync(join(data.path, "tenants/small"))).toBe(false);
    expect(mvm("tenant", "info", "small").code).toBe(3);
  });
});
