// The `mvm audit` commands through a yargs parser of their own (the lead mounts them in run-cli.ts), mapping errors
// to exit codes with the CLI's table.

import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import yargs, { type Argv } from "yargs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { AuditRecord } from "../../../src/core/observability-ports.js";
import type { NodeRuntime } from "../../../src/agent/node-runtime-types.js";
import { auditTail, formatFollowedEntry, registerAuditCommands } from "../../../src/cli/commands/audit.js";
import type { CliContext, GlobalOptions } from "../../../src/cli/context.js";
import { EXIT_CODES } from "../../../src/cli/exit-codes.js";
import { isMvmError } from "../../../src/core/errors.js";
import { FsAuditLog } from "../../../src/runtime/audit/fs-audit-log.js";

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "mvm-audit-cli-"));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

function record(tenantId: string, n: number): AuditRecord {
  return {
    tenantId,
    actor: { kind: "local", id: "local:root" },
    action: "pool_scale",
    target: `${tenantId}/web`,
    outcome: n % 2 ? "success" : "denied",
    reason: n % 2 ? "" : "quota max_running",
    details: { running: String(n) },
  };
}

async function run(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const ctx: CliContext = {
    deps: async () => ({ store: { dataRoot: root } }) as unknown as NodeRuntime,
    write: (t) => (stdout += t),
    warn: (t) => (stderr += t),
    env: process.env,
  };
  const parser = registerAuditCommands(
    yargs(argv)
      .option("output", { alias: "o", type: "string", default: "table" })
      .option("debug", { type: "boolean", default: false })
      .parserConfiguration({ "populate--": true })
      .strict()
      .fail((message, error) => {
        throw error ?? new Error(message);
      }) as unknown as Argv<GlobalOptions>,
    ctx,
  );
  try {
    await parser.parseAsync();
    return { code: 0, stdout, stderr };
  } catch (error) {
    if (!isMvmError(error)) throw error;
    return { code: EXIT_CODES[error.kind], stdout, stderr: `${stderr}mvm: ${error.message}` };
  }
}

describe("mvm audit verify", () => {
  it("exits 0 for an intact log and 5 naming the first bad seq for a broken one", async () => {
    const log = new FsAuditLog(root);
    for (let n = 1; n <= 4; n++) await log.append(record("acme", n));
    const ok = await run(["audit", "verify", "acme", "--output", "json"]);
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toEqual({ log: "audit log of tenant acme", path: log.logPath("acme"), ok: true, entries: 4 });

    const text = await readFile(log.logPath("acme"), "utf8");
    await writeFile(log.logPath("acme"), text.replace('"running":"3"', '"running":"30"'));
    const broken = await run(["audit", "verify", "acme"]);
    expect(broken.code).toBe(5);
    expect(broken.stderr).toBe(
      "mvm: audit log of tenant acme: chain broken at seq 3: hash does not match the entry's content (the entry was changed)",
    );
    expect(broken.stdout).toMatch(/firstBadSeq\s+│?\s*3/);
  });

  it("checks the node-level log with --node-log and refuses a bad tenant ID", async () => {
    await new FsAuditLog(root).append({ ...record("", 1), action: "certificate_rotate", target: "node" });
    const node = await run(["audit", "verify", "--node-log", "-o", "json"]);
    expect(node.code).toBe(0);
    expect(JSON.parse(node.stdout)).toMatchObject({ log: "node audit log", entries: 1 });
    const bad = await run(["audit", "verify", "Bad_Tenant"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^mvm: invalid input: tenant: must be 1-63 characters/);
    expect((await run(["audit", "verify"])).stderr).toMatch(/tenant: is required/);
  });
});

describe("mvm audit tail", () => {
  it("prints the last n entries as a table or JSON", async () => {
    const log = new FsAuditLog(root);
    for (let n = 1; n <= 5; n++) await log.append(record("acme", n));
    const json = await run(["audit", "tail", "acme", "-n", "2", "-o", "json"]);
    expect(json.code).toBe(0);
    expect((JSON.parse(json.stdout) as Array<{ seq: number }>).map((e) => e.seq)).toEqual([4, 5]);
    const table = await run(["audit", "tail", "acme"]);
    expect(table.stdout).toMatch(/SEQ.*ACTION.*OUTCOME/);
    expect(table.stdout).toMatch(/quota max_running/);
    expect(table.stdout.match(/pool_scale/g)).toHaveLength(5);
    expect((await run(["audit", "tail", "acme", "-n", "-3"])).code).toBe(2);
  });

  it("--follow prints the backlog and then new entries as lines until stopped", async () => {
    const log = new FsAuditLog(root);
    for (let n = 1; n <= 3; n++) await log.append(record("acme", n));
    const controller = new AbortController();
    const out: string[] = [];
    const following = auditTail(log, { tenantId: "acme", n: 1, follow: true, output: "json", signal: controller.signal }, (t) => {
      out.push(t);
      if (out.length === 3) controller.abort();
    });
    await new Promise((r) => setTimeout(r, 50));
    await log.append(record("acme", 4));
    await log.append(record("acme", 5));
    await following;
    expect(out.map((l) => (JSON.parse(l) as { seq: number }).seq)).toEqual([3, 4, 5]);
    expect(out.every((l) => l.endsWith("\n") && !l.slice(0, -1).includes("\n"))).toBe(true);
  });

  it("formats followed entries as text lines and YAML documents", async () => {
    const entry = await new FsAuditLog(root).append(record("acme", 2));
    expect(formatFollowedEntry(entry, "table")).toBe(
      `1  ${entry.at}  local:root  pool_scale  acme/web  denied  quota max_running  running=2\n`,
    );
    expect(formatFollowedEntry(entry, "yaml")).toMatch(/^---\nseq: 1\n/);
  });
});
