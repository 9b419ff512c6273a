// Several processes appending to one audit log: the file lock must serialise them into one gapless chain, a watcher
// in another process must see every entry (by polling), and a writer killed with SIGKILL must not wedge the log.

import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AuditEntry } from "../../../src/core/observability-ports.js";
import { FsAuditLog } from "../../../src/runtime/audit/fs-audit-log.js";
import { transpileModules } from "../../helpers/transpile.js";
import type { TranspiledModules } from "../../helpers/transpile.js";

let modules: TranspiledModules;
let writerScript: string;

beforeAll(async () => {
  modules = await transpileModules(["src/runtime/audit/fs-audit-log.ts"]);
  writerScript = join(modules.outDir, "audit-writer.mjs");
  // argv: dataRoot tenant writerId count goFile ("forever" as count appends until killed)
  await writeFile(
    writerScript,
    `import { existsSync } from "node:fs";
import { FsAuditLog } from ${JSON.stringify(modules.urlOf("src/runtime/audit/fs-audit-log.ts"))};
const [dataRoot, tenantId, writer, countText, goFile, waitForOther] = process.argv.slice(2);
process.stdout.write("ready\\n");
while (!existsSync(goFile)) await new Promise((r) => setTimeout(r, 5));
const log = new FsAuditLog(dataRoot);
const count = countText === "forever" ? Infinity : Number(countText);
for (let n = 1; n <= count; n++) {
  await log.append({
    tenantId, actor: { kind: "system", id: "system:" + writer }, action: "instance_start",
    target: tenantId + "/web/i-00000001", outcome: "success", reason: "", details: { writer, n: String(n) },
  });
  if (n === 1) process.stdout.write("first\\n");
  // With another writer: no second entry before the other's first, so the two cannot simply run one after the other.
  while (n === 1 && waitForOther === "wait" && !(await log.read(tenantId, { limit: 10000 })).some((e) => e.details.writer !== writer)) {
    await new Promise((r) => setTimeout(r, 5));
  }
}
`,
  );
});

afterAll(async () => {
  await rm(modules.outDir, { recursive: true, force: true });
});

interface Writer {
  child: ChildProcess;
  exited: Promise<number | null>;
  /** Resolves once the writer printed `line` ("ready": waiting for the go file; "first": one entry appended). */
  said(line: string): Promise<void>;
}

function startWriter(dataRoot: string, writer: string, count: string, goFile: string, waitForOther = false): Writer {
  const args = [writerScript, dataRoot, "acme", writer, count, goFile, ...(waitForOther ? ["wait"] : [])];
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  let output = "";
  const waiters: Array<{ line: string; resolve: () => void }> = [];
  child.stdout?.setEncoding("utf8").on("data", (text: string) => {
    output += text;
    for (const w of waiters.splice(0)) {
      if (output.split("\n").includes(w.line)) w.resolve();
      else waiters.push(w);
    }
  });
  const said = (line: string) =>
    new Promise<void>((resolve) => {
      if (output.split("\n").includes(line)) resolve();
      else waiters.push({ line, resolve });
    });
  return { child, exited, said };
}

describe("audit log across processes", () => {
  it("two processes appending concurrently produce seqs 1..2N in one intact chain, all seen by a polling watcher", async () => {
    const root = await mkdtemp(join(tmpdir(), "mvm-audit-int-"));
    try {
      const N = 60;
      const goFile = join(root, "go");
      const log = new FsAuditLog(root, { pollIntervalMs: 25 });
      const controller = new AbortController();
      const watched: AuditEntry[] = [];
      const watching = (async () => {
        for await (const e of log.watch("acme", { signal: controller.signal })) {
          watched.push(e);
          if (watched.length === 2 * N) controller.abort();
        }
      })();
      const a = startWriter(root, "a", String(N), goFile, true);
      const b = startWriter(root, "b", String(N), goFile, true);
      // Both must be running before either may append, or a slow start lets one finish alone (nothing contended).
      await Promise.all([a.said("ready"), b.said("ready")]);
      await writeFile(goFile, "");
      expect(await a.exited).toBe(0);
      expect(await b.exited).toBe(0);

      const entries = await log.read("acme", { limit: 10_000 });
      expect(entries.map((e) => e.seq)).toEqual(Array.from({ length: 2 * N }, (_, i) => i + 1));
      expect(await log.verify("acme")).toEqual({ ok: true, entries: 2 * N });
      for (const writer of ["a", "b"]) {
        const ns = entries.filter((e) => e.details.writer === writer).map((e) => Number(e.details.n));
        expect(ns).toEqual(Array.from({ length: N }, (_, i) => i + 1));
      }
      // Both writers really interleaved (otherwise the lock was never contended).
      const switches = entries.slice(1).filter((e, i) => e.details.writer !== entries[i]?.details.writer).length;
      expect(switches).toBeGreaterThan(1);

      await Promise.race([watching, new Promise((_, reject) => setTimeout(() => reject(new Error("watcher did not see every entry")), 20_000))]);
      expect(watched.map((e) => e.seq)).toEqual(entries.map((e) => e.seq));
      expect(watched).toEqual(entries);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it("a writer killed with SIGKILL mid-stream leaves a log that verifies and accepts the next append", async () => {
    const root = await mkdtemp(join(tmpdir(), "mvm-audit-kill-"));
    try {
      const goFile = join(root, "go");
      await writeFile(goFile, "");
      const w = startWriter(root, "doomed", "forever", goFile);
      await w.said("first");
      await new Promise((r) => setTimeout(r, 150));
      w.child.kill("SIGKILL");
      await w.exited;
      const log = new FsAuditLog(root, { lockTimeoutMs: 10_000 });
      const before = await log.verify("acme");
      expect(before.ok).toBe(true);
      expect(before.entries).toBeGreaterThan(0);
      const next = await log.append({
        tenantId: "acme",
        actor: { kind: "local", id: "local:test" },
        action: "instance_stop",
        target: "acme/web/i-00000001",
        outcome: "success",
        reason: "",
        details: {},
      });
      expect(next.seq).toBe(before.entries + 1);
      expect(await log.verify("acme")).toEqual({ ok: true, entries: before.entries + 1 });
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
