// `mvm agent reconcile` through the built binary, on a data root of the test's own (records only: no pool has
// desired instances, so nothing boots and no network is touched).

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { fingerprint, runMvm, tempDataDir } from "../../helpers/mvm-cli.js";

let data: { path: string; cleanup: () => void };
let docs: { path: string; cleanup: () => void };
let nodeId: string;

beforeEach(() => {
  data = tempDataDir();
  docs = tempDataDir();
  const info = runMvm(["node", "info", "-o", "json"], { dataDir: data.path });
  expect(info.code, info.stderr).toBe(0);
  nodeId = JSON.parse(info.stdout).nodeId;
});
afterEach(() => {
  data.cleanup();
  docs.cleanup();
});

function writeDoc(name: string, text: string): string {
  const path = join(docs.path, name);
  writeFileSync(path, text);
  return path;
}

describe("mvm agent reconcile", () => {
  it("plans without changing anything, applies and converges, and takes no step the second time", () => {
    const file = writeDoc(
      "desired.yaml",
      `schemaVersion: 1\nnodeId: ${nodeId}\ntenants:\n  - tenant_id: acme\n    labels: {team: ci}\n    quotas: {maxRunning: 3}\n`,
    );
    const before = fingerprint(data.path);
    const plan = runMvm(["agent", "reconcile", "--desired", file, "--plan"], { dataDir: data.path });
    expect(plan.code, plan.stderr).toBe(0);
    expect(plan.stdout).toMatch(/1 step\(s\)\n  create tenant acme \(tenant is in the desired state but not on this node; network allocated on this node\)/);
    expect(fingerprint(data.path)).toEqual(before);

    const first = runMvm(["agent", "reconcile", "--desired", file, "-o", "json"], { dataDir: data.path });
    expect(first.code, first.stderr).toBe(0);
    const report = JSON.parse(first.stdout);
    expect(report).toMatchObject({ converged: true, generation: 1, trigger: "manual" });
    expect(report.results.map((r: { step: { kind: string } }) => r.step.kind)).toEqual(["create_tenant"]);
    const tenant = JSON.parse(runMvm(["tenant", "info", "acme", "-o", "json"], { dataDir: data.path }).stdout);
    expect(tenant).toMatchObject({ labels: { team: "ci" }, quotas: { maxRunning: 3 } });

    // Against the persisted document, as after a restart.
    const second = runMvm(["agent", "reconcile"], { dataDir: data.path });
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toMatch(/converged, 0 step\(s\)/);
  });

  it("refuses an invalid document with every fault and its path, writing nothing", () => {
    const file = writeDoc(
      "bad.json",
      JSON.stringify({ schema_version: 2, node_id: nodeId, tenants: [{ tenant_id: "a", pools: [{ pool_id: "p", image: { debian: { suite: "bookworm" } }, resources: { vcpus: 1, mem_mib: 256 }, desired_counts: { running: -1 } }] }, { tenant_id: "a" }] }),
    );
    const before = fingerprint(data.path);
    const r = runMvm(["agent", "reconcile", "--desired", file], { dataDir: data.path });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/schema_version: must be 1/);
    expect(r.stderr).toMatch(/tenants\[0\]\.pools\[0\]\.desired_counts\.running/);
    expect(r.stderr).toMatch(/tenants\[1\]\.tenant_id: duplicate/);
    expect(fingerprint(data.path)).toEqual(before);
  });

  it("refuses a document meant for another node", () => {
    const file = writeDoc("other.json", JSON.stringify({ schema_version: 1, node_id: "n-000000000000", tenants: [] }));
    const r = runMvm(["agent", "reconcile", "--desired", file], { dataDir: data.path });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/node_id: must be this node's ID .*another node/);
  });
});
