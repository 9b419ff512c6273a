// `mvm agent serve --desired FILE --interval S` through the built binary: the agent applies the document at start
// and keeps converging on its own, so a change made behind its back is undone by the next periodic pass. Records
// only (no pool wants instances): nothing boots and no network is touched.

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT, runMvm, tempDataDir, type CliResult } from "../../helpers/mvm-cli.js";

const data = tempDataDir();
const docs = tempDataDir();
let agent: ChildProcess | null = null;
let agentLog = "";

function ok(r: CliResult): CliResult {
  expect(r.code, r.stderr).toBe(0);
  return r;
}

const labelsOf = () => JSON.parse(ok(runMvm(["tenant", "info", "acme", "-o", "json"], { dataDir: data.path })).stdout).labels;

async function until(what: string, predicate: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; agent log:\n${agentLog}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

beforeAll(async () => {
  const nodeId = JSON.parse(ok(runMvm(["node", "info", "-o", "json"], { dataDir: data.path })).stdout).nodeId;
  const desired = join(docs.path, "desired.yaml");
  writeFileSync(desired, `schemaVersion: 1\nnodeId: ${nodeId}\ntenants:\n  - tenant_id: acme\n    labels: {team: ci}\n`);
  agent = spawn(
    process.execPath,
    [join(REPO_ROOT, "bin/mvm"), "--data-dir", data.path, "agent", "serve", "--listen", "none", "--metrics-listen", "none", "--desired", desired, "--interval", "1", "--idle-interval", "0"],
    { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, MVM_LOG_LEVEL: "warn" } },
  );
  agent.stderr?.setEncoding("utf8").on("data", (t: string) => (agentLog += t));
  await until("the agent's socket", () => existsSync(join(data.path, "agent.sock")) || agent?.exitCode !== null);
  expect(agent.exitCode, agentLog).toBeNull();
});

afterAll(async () => {
  if (agent !== null && agent.exitCode === null) {
    const exited = new Promise((r) => agent!.once("exit", r));
    agent.kill("SIGTERM");
    await exited;
  }
  data.cleanup();
  docs.cleanup();
});

describe("mvm agent serve --desired --interval", () => {
  it("applies the document at start and undoes a change made behind its back on a later pass", async () => {
    await until("the tenant of the document", () => runMvm(["tenant", "info", "acme"], { dataDir: data.path }).code === 0);
    expect(labelsOf()).toEqual({ team: "ci" });

    // The drift is written (the update answers with it), and a later periodic pass puts the document's label back:
    // the tenant's audit log shows the CLI's update and then the agent's own.
    const drifted = JSON.parse(ok(runMvm(["tenant", "update", "acme", "--label", "team=drifted", "-o", "json"], { dataDir: data.path })).stdout);
    expect(drifted.labels).toEqual({ team: "drifted" });
    await until("the label set back to the document's", () => labelsOf().team === "ci");
    const audit = JSON.parse(ok(runMvm(["audit", "tail", "acme", "-o", "json"], { dataDir: data.path })).stdout) as { action: string }[];
    expect(audit.filter((e) => e.action === "tenant_update").length).toBeGreaterThanOrEqual(2);

    // Converged: against the document the agent stored, a pass would take no step.
    expect(ok(runMvm(["agent", "reconcile", "--plan"], { dataDir: data.path })).stdout).toMatch(/ 0 step\(s\)/);
  });
});
