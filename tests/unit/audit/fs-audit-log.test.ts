import { appendFile, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import type { AuditEntry, AuditRecord } from "../../../src/core/observability-ports.js";
import { GENESIS_PREV_HASH, entryHash } from "../../../src/runtime/audit/audit-chain.js";
import { FsAuditLog } from "../../../src/runtime/audit/fs-audit-log.js";
import type { TornTailReport } from "../../../src/runtime/audit/fs-audit-log.js";

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "mvm-audit-"));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

function record(tenantId: string, n: number, overrides: Partial<AuditRecord> = {}): AuditRecord {
  return {
    tenantId,
    actor: { kind: "admin", id: "spiffe://mvm.test/admin" },
    action: "instance_start",
    target: `${tenantId || "node"}/web/i-0000000${n % 10}`,
    outcome: "success",
    reason: "",
    details: { n: String(n) },
    ...overrides,
  };
}

async function appendMany(log: FsAuditLog, tenantId: string, count: number): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  for (let n = 1; n <= count; n++) out.push(await log.append(record(tenantId, n)));
  return out;
}

async function lines(path: string): Promise<string[]> {
  return (await readFile(path, "utf8")).split("\n").filter((l) => l !== "");
}

async function rewrite(path: string, edit: (lines: string[]) => string[]): Promise<void> {
  await writeFile(path, edit(await lines(path)).map((l) => `${l}\n`).join(""));
}

describe("FsAuditLog: append", () => {
  it("numbers entries from 1 without gaps and chains each to the previous", async () => {
    let now = Date.parse("2025-03-04T05:06:07.089Z");
    const appended: number[] = [];
    const log = new FsAuditLog(root, { clock: { nowMs: () => now++ }, onAppend: (e) => appended.push(e.seq) });
    const entries = await appendMany(log, "acme", 5);
    expect(appended).toEqual([1, 2, 3, 4, 5]);
    expect(entries.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(entries[0]?.prevHash).toBe(GENESIS_PREV_HASH);
    expect(entries[0]?.at).toBe("2025-03-04T05:06:07.089Z");
    for (let i = 1; i < entries.length; i++) expect(entries[i]?.prevHash).toBe(entries[i - 1]?.hash);
    for (const e of entries) expect(e.hash).toBe(entryHash(e as unknown as Record<string, unknown>));
    const path = join(root, "tenants", "acme", "audit.log");
    expect(log.logPath("acme")).toBe(path);
    const onDisk = (await lines(path)).map((l) => JSON.parse(l) as AuditEntry);
    expect(onDisk).toEqual(entries);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
  });

  it("keeps one chain per tenant and a node-level log for tenant ''", async () => {
    const log = new FsAuditLog(root);
    await appendMany(log, "acme", 2);
    const beta = await log.append(record("beta", 1));
    const node = await log.append(record("", 1, { action: "certificate_issue", actor: { kind: "local", id: "local:root" } }));
    expect(beta.seq).toBe(1);
    expect(node.seq).toBe(1);
    expect(log.logPath("")).toBe(join(root, "audit", "node.log"));
    expect(await log.logs()).toEqual(["", "acme", "beta"]);
    expect((await log.verify("")).entries).toBe(1);
  });

  it("resumes the chain in a new instance (another process) from the file's tail", async () => {
    await appendMany(new FsAuditLog(root), "acme", 3);
    const next = await new FsAuditLog(root).append(record("acme", 4));
    expect(next.seq).toBe(4);
    expect(await new FsAuditLog(root).verify("acme")).toEqual({ ok: true, entries: 4 });
  });

  it("serialises concurrent appends within one process", async () => {
    const a = new FsAuditLog(root);
    const b = new FsAuditLog(root);
    const all = await Promise.all(Array.from({ length: 40 }, (_, n) => (n % 2 ? a : b).append(record("acme", n))));
    expect(all.map((e) => e.seq).sort((x, y) => x - y)).toEqual(Array.from({ length: 40 }, (_, n) => n + 1));
    expect(await a.verify("acme")).toEqual({ ok: true, entries: 40 });
  });

  it("rejects invalid records with field paths, before writing anything", async () => {
    const log = new FsAuditLog(root);
    const bad = { ...record("Acme!", 1), action: "nope", outcome: "meh", details: { x: 1 } } as unknown as AuditRecord;
    const error = await log.append(bad).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MvmError);
    expect((error as MvmError).violations.map((v) => v.field)).toEqual(["tenant_id", "action", "outcome", "details.x"]);
    const huge = record("acme", 1, { details: { blob: "x".repeat(70_000) } });
    await expect(log.append(huge)).rejects.toMatchObject({ kind: "invalid", message: expect.stringMatching(/at most 65536 bytes/) });
    expect(await readdir(root)).toEqual(["tenants"]);
    expect((await log.verify("acme")).entries).toBe(0);
  });

  it("refuses to write through a symlinked tenant directory", async () => {
    await mkdir(join(root, "elsewhere"));
    await mkdir(join(root, "tenants"));
    await symlink(join(root, "elsewhere"), join(root, "tenants", "acme"));
    await expect(new FsAuditLog(root).append(record("acme", 1))).rejects.toMatchObject({ kind: "failed_precondition" });
    expect(await readdir(join(root, "elsewhere"))).toEqual([]);
  });
});

describe("FsAuditLog: verify", () => {
  const path = () => join(root, "tenants", "acme", "audit.log");

  it("an intact or missing log verifies", async () => {
    const log = new FsAuditLog(root);
    expect(await log.verify("acme")).toEqual({ ok: true, entries: 0 });
    await appendMany(log, "acme", 6);
    expect(await log.verify("acme")).toEqual({ ok: true, entries: 6 });
  });

  it("a changed field is caught at its seq", async () => {
    const log = new FsAuditLog(root);
    await appendMany(log, "acme", 6);
    await rewrite(path(), (ls) => ls.map((l, i) => (i === 3 ? l.replace('"outcome":"success"', '"outcome":"failure"') : l)));
    expect(await log.verify("acme")).toEqual({
      ok: false,
      entries: 3,
      firstBadSeq: 4,
      reason: "hash does not match the entry's content (the entry was changed)",
    });
  });

  it("a change with a recomputed hash is caught at the next entry", async () => {
    const log = new FsAuditLog(root);
    await appendMany(log, "acme", 6);
    await rewrite(path(), (ls) =>
      ls.map((l, i) => {
        if (i !== 2) return l;
        const e = { ...(JSON.parse(l) as Record<string, unknown>), target: "acme/forged" };
        return JSON.stringify({ ...e, hash: entryHash(e) });
      }),
    );
    const result = await log.verify("acme");
    expect(result).toMatchObject({ ok: false, entries: 3, firstBadSeq: 4 });
    expect(result.reason).toMatch(/prev_hash does not match the hash of seq 3/);
  });

  it("a deleted line is caught where it is missing", async () => {
    const log = new FsAuditLog(root);
    await appendMany(log, "acme", 6);
    await rewrite(path(), (ls) => ls.filter((_, i) => i !== 1));
    expect(await log.verify("acme")).toMatchObject({ ok: false, entries: 1, firstBadSeq: 2, reason: expect.stringMatching(/found seq 3 where seq 2 belongs/) });
  });

  it("two swapped lines are caught at the first of them", async () => {
    const log = new FsAuditLog(root);
    await appendMany(log, "acme", 6);
    await rewrite(path(), (ls) => [ls[0], ls[1], ls[3], ls[2], ls[4], ls[5]] as string[]);
    expect(await log.verify("acme")).toMatchObject({ ok: false, entries: 2, firstBadSeq: 3 });
  });

  it("a removed first line is caught at seq 1", async () => {
    const log = new FsAuditLog(root);
    await appendMany(log, "acme", 3);
    await rewrite(path(), (ls) => ls.slice(1));
    expect(await log.verify("acme")).toMatchObject({ ok: false, entries: 0, firstBadSeq: 1 });
  });
});

describe("FsAuditLog: crash recovery", () => {
  const path = () => join(root, "tenants", "acme", "audit.log");

  it("moves a torn last line aside, keeps the valid prefix, reports it, and continues the chain", async () => {
    const reports: TornTailReport[] = [];
    const log = new FsAuditLog(root, { onTornTail: (r) => reports.push(r) });
    const before = await appendMany(log, "acme", 3);
    const sizeBefore = (await stat(path())).size;
    const fragment = '{"action":"instance_stop","actor":{"ki';
    await appendFile(path(), fragment);
    expect(await log.verify("acme")).toMatchObject({ ok: false, entries: 3, firstBadSeq: 4, reason: expect.stringMatching(/torn/) });

    const fresh = new FsAuditLog(root, { onTornTail: (r) => reports.push(r) });
    const next = await fresh.append(record("acme", 4));
    expect(next.seq).toBe(4);
    expect(next.prevHash).toBe(before[2]?.hash);
    expect(reports).toHaveLength(1);
    expect(reports[0]).toMatchObject({ logPath: path(), bytes: fragment.length, reason: expect.stringMatching(/incomplete/) });
    expect(await readFile(reports[0]?.asidePath as string, "utf8")).toBe(fragment);
    expect((reports[0]?.asidePath as string).startsWith(`${path()}.torn-`)).toBe(true);
    expect((await stat(path())).size).toBeGreaterThan(sizeBefore);
    expect(await fresh.verify("acme")).toEqual({ ok: true, entries: 4 });
  });

  it("treats a terminated line of garbage (unwritten blocks after a power loss) as torn too", async () => {
    const reports: TornTailReport[] = [];
    const log = new FsAuditLog(root, { onTornTail: (r) => reports.push(r) });
    await appendMany(log, "acme", 2);
    await appendFile(path(), `${"\0".repeat(40)}\n`);
    expect((await new FsAuditLog(root, { onTornTail: (r) => reports.push(r) }).append(record("acme", 3))).seq).toBe(3);
    expect(reports).toHaveLength(1);
    expect(reports[0]?.bytes).toBe(41);
    expect(await log.verify("acme")).toEqual({ ok: true, entries: 3 });
  });

  it("a log holding only a torn fragment starts again at seq 1", async () => {
    const reports: TornTailReport[] = [];
    await mkdir(join(root, "tenants", "acme"), { recursive: true });
    await writeFile(path(), '{"seq":1,"at"');
    const entry = await new FsAuditLog(root, { onTornTail: (r) => reports.push(r) }).append(record("acme", 1));
    expect(entry).toMatchObject({ seq: 1, prevHash: GENESIS_PREV_HASH });
    expect(reports).toHaveLength(1);
  });

  it("refuses to append after a last entry that was altered rather than torn", async () => {
    const log = new FsAuditLog(root);
    await appendMany(log, "acme", 3);
    await rewrite(path(), (ls) => ls.map((l, i) => (i === 2 ? l.replace('"reason":""', '"reason":"edited"') : l)));
    const error = await new FsAuditLog(root).append(record("acme", 4)).catch((e: unknown) => e);
    expect(error).toMatchObject({ kind: "failed_precondition", message: expect.stringMatching(/damaged at its end: hash does not match/) });
    expect(await lines(path())).toHaveLength(3);
  });
});

describe("FsAuditLog: tail, read, watch", () => {
  it("tail returns the newest entries oldest first, and pages backwards", async () => {
    const log = new FsAuditLog(root);
    await appendMany(log, "acme", 10);
    expect((await log.tail("acme", 3)).map((e) => e.seq)).toEqual([8, 9, 10]);
    expect((await log.tail("acme", 3, { beforeSeq: 5 })).map((e) => e.seq)).toEqual([2, 3, 4]);
    expect((await log.tail("acme", 50)).map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(await log.tail("acme", 0)).toEqual([]);
    expect(await log.tail("nobody", 5)).toEqual([]);
    await expect(log.tail("acme", -1)).rejects.toMatchObject({ kind: "invalid" });
  });

  it("read returns entries after a seq, bounded by a limit", async () => {
    const log = new FsAuditLog(root);
    await appendMany(log, "acme", 10);
    expect((await log.read("acme", { afterSeq: 6 })).map((e) => e.seq)).toEqual([7, 8, 9, 10]);
    expect((await log.read("acme", { afterSeq: 2, limit: 2 })).map((e) => e.seq)).toEqual([3, 4]);
    expect(await log.read("acme", { afterSeq: 10 })).toEqual([]);
  });

  it("watch yields the backlog, then entries as they are appended, until aborted", async () => {
    const log = new FsAuditLog(root, { pollIntervalMs: 10_000 });
    await appendMany(log, "acme", 4);
    const controller = new AbortController();
    const seen: number[] = [];
    const done = (async () => {
      for await (const e of log.watch("acme", { backlog: 2, signal: controller.signal })) {
        seen.push(e.seq);
        if (seen.length === 5) controller.abort();
      }
    })();
    await new Promise((r) => setTimeout(r, 50));
    // A long poll interval: only the in-process notification can deliver these promptly.
    for (let n = 5; n <= 7; n++) await log.append(record("acme", n));
    await log.append(record("beta", 1));
    await done;
    expect(seen).toEqual([3, 4, 5, 6, 7]);
  });

  it("watch(null) follows every log, including one created after it started, and sees foreign writes by polling", async () => {
    const log = new FsAuditLog(root, { pollIntervalMs: 20 });
    await log.append(record("acme", 1));
    const controller = new AbortController();
    const seen: string[] = [];
    const done = (async () => {
      for await (const e of log.watch(null, { signal: controller.signal })) {
        seen.push(`${e.tenantId || "node"}#${e.seq}`);
        if (seen.length === 3) controller.abort();
      }
    })();
    await new Promise((r) => setTimeout(r, 50));
    await log.append(record("acme", 2));
    await log.append(record("", 1, { action: "certificate_rotate" }));
    // An entry written by "another process": bytes appear in the file with no in-process notification.
    const other = (await readFile(join(root, "tenants", "acme", "audit.log"), "utf8")).split("\n");
    const last = JSON.parse(other[1] as string) as Record<string, unknown>;
    const base = { ...last, seq: 3, prevHash: last.hash, details: { by: "other" } };
    delete (base as { hash?: unknown }).hash;
    const line = JSON.stringify({ ...base, hash: entryHash(base) });
    await new Promise((r) => setTimeout(r, 50));
    await appendFile(join(root, "tenants", "acme", "audit.log"), `${line}\n`);
    await done;
    expect(seen.sort()).toEqual(["acme#2", "acme#3", "node#1"]);
  });

  it("a watcher delivers the entry that replaces a torn line exactly once", async () => {
    const log = new FsAuditLog(root, { pollIntervalMs: 20, onTornTail: () => undefined });
    await appendMany(log, "acme", 2);
    const controller = new AbortController();
    const seen: AuditEntry[] = [];
    const done = (async () => {
      for await (const e of log.watch("acme", { signal: controller.signal })) {
        seen.push(e);
        if (e.details.n === "4") controller.abort();
      }
    })();
    await new Promise((r) => setTimeout(r, 50));
    await appendFile(log.logPath("acme"), '{"seq":3,"at":"2025');
    await new Promise((r) => setTimeout(r, 60));
    await appendFile(log.logPath("acme"), `${"\0".repeat(10)}\n`);
    await new Promise((r) => setTimeout(r, 60));
    await log.append(record("acme", 3));
    await log.append(record("acme", 4));
    await done;
    expect(seen.map((e) => [e.seq, e.details.n])).toEqual([
      [3, "3"],
      [4, "4"],
    ]);
  });

  it("after the log is cut below a watcher's position, it follows from the new end without repeating entries", async () => {
    const log = new FsAuditLog(root, { pollIntervalMs: 20 });
    await appendMany(log, "acme", 5);
    const controller = new AbortController();
    const seen: number[] = [];
    const done = (async () => {
      for await (const e of log.watch("acme", { signal: controller.signal })) {
        seen.push(e.seq);
        controller.abort();
      }
    })();
    await new Promise((r) => setTimeout(r, 50));
    await rewrite(log.logPath("acme"), (ls) => ls.slice(0, 2));
    await new Promise((r) => setTimeout(r, 80));
    await log.append(record("acme", 3));
    await done;
    expect(seen).toEqual([3]);
  });

  it("an aborted watch ends even while waiting for entries", async () => {
    const log = new FsAuditLog(root, { pollIntervalMs: 60_000 });
    const controller = new AbortController();
    const started = Date.now();
    const done = (async () => {
      for await (const _ of log.watch("acme", { signal: controller.signal })) break;
    })();
    await new Promise((r) => setTimeout(r, 30));
    controller.abort();
    await done;
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});
