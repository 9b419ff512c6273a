// The file lock between real processes: mutual exclusion under contention (starting from a stale lock, so the
// takeover path is raced too), recovery after the holder is SIGKILLed, and a clear error while a live process holds it.

import { spawn } from "node:child_process";
import type { ChildProcessByStdio } from "node:child_process";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import { readLockHolder, withFileLock } from "../../../src/runtime/store/file-lock.js";
import { bootId } from "../../../src/runtime/store/process-identity.js";
import { transpileModules } from "../../helpers/transpile.js";
import type { TranspiledModules } from "../../helpers/transpile.js";

const LOCK_CHILD = join(dirname(fileURLToPath(import.meta.url)), "lock-child.mjs");

let modules: TranspiledModules;
let dir: string;
let lockPath: string;
const children: ChildProcessByStdio<null, Readable, Readable>[] = [];

beforeAll(async () => {
  modules = await transpileModules(["src/runtime/store/file-lock.ts", "src/runtime/store/atomic-file.ts"]);
});
afterAll(async () => {
  await rm(modules.outDir, { recursive: true, force: true });
});
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-lock-proc-"));
  lockPath = join(dir, "tenant-acme.lock");
});
afterEach(async () => {
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  await rm(dir, { recursive: true, force: true });
});

interface Started {
  child: ChildProcessByStdio<null, Readable, Readable>;
  /** Resolves when stdout has shown `line`. */
  printed(line: string): Promise<void>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

function startLockChild(args: string[]): Started {
  const child = spawn(
    process.execPath,
    [LOCK_CHILD, modules.urlOf("src/runtime/store/file-lock.ts"), modules.urlOf("src/runtime/store/atomic-file.ts"), ...args],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  children.push(child);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) =>
    child.on("close", (code, signal) => resolve({ code, signal, stderr })),
  );
  const printed = (line: string) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (stdout.split("\n").includes(line)) resolve();
      };
      child.stdout.on("data", check);
      check();
      void exited.then(() => {
        if (stdout.split("\n").includes(line)) resolve();
        else reject(new Error(`child exited without printing ${line}: ${stderr}`));
      });
    });
  return { child, printed, exited };
}

describe("file lock across processes", () => {
  it("two processes incrementing a counter 200 times each under the lock reach 400", async () => {
    const counter = join(dir, "counter.json");
    await writeFile(counter, JSON.stringify({ count: 0 }));
    // Start from a stale lock (a holder that no longer exists), so both processes race to take it over.
    const deadHolder = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
    await new Promise((r) => deadHolder.on("exit", r));
    await writeFile(lockPath, JSON.stringify({ pid: deadHolder.pid, startTime: 1, bootId: await bootId(), token: "stale" }));

    const workers = [startLockChild(["count", lockPath, counter, "200"]), startLockChild(["count", lockPath, counter, "200"])];
    const results = await Promise.all(workers.map((w) => w.exited));
    for (const r of results) expect(r, r.stderr).toMatchObject({ code: 0, signal: null });
    expect(JSON.parse(await readFile(counter, "utf8"))).toEqual({ count: 400 });
    expect((await readdir(dir)).sort()).toEqual(["counter.json"]);
  });

  it("keeps counting exactly while other contenders are SIGKILLed at random moments", async () => {
    const counter = join(dir, "counter.json");
    await writeFile(counter, JSON.stringify({ count: 0 }));
    const workers = [startLockChild(["count", lockPath, counter, "150"]), startLockChild(["count", lockPath, counter, "150"])];
    let done = false;
    const allExited = Promise.all(workers.map((w) => w.exited)).finally(() => (done = true));
    let kills = 0;
    // Holders that die holding the lock, while waiting for it, or while taking over a stale one.
    while (!done) {
      const victim = startLockChild(["hold", lockPath]);
      await new Promise((r) => setTimeout(r, 30 + Math.random() * 40));
      victim.child.kill("SIGKILL");
      await victim.exited;
      kills++;
    }
    const results = await allExited;
    for (const r of results) expect(r, r.stderr).toMatchObject({ code: 0, signal: null });
    expect(JSON.parse(await readFile(counter, "utf8"))).toEqual({ count: 300 });
    expect(kills).toBeGreaterThan(3);
  });

  it("is taken over quickly after its holder is SIGKILLed", async () => {
    const holder = startLockChild(["hold", lockPath]);
    await holder.printed("locked");
    expect((await readLockHolder(lockPath))?.pid).toBe(holder.child.pid);
    holder.child.kill("SIGKILL");
    expect((await holder.exited).signal).toBe("SIGKILL");
    // The dead holder's lock file is still there; only the takeover logic can get past it.
    expect((await readLockHolder(lockPath))?.pid).toBe(holder.child.pid);

    const start = Date.now();
    const got = await withFileLock(lockPath, async () => (await readLockHolder(lockPath))?.pid, { timeoutMs: 5000 });
    expect(got).toBe(process.pid);
    expect(Date.now() - start).toBeLessThan(2000);
  });

  it("waits for a live holder and then fails with unavailable naming its pid", async () => {
    const holder = startLockChild(["hold", lockPath]);
    await holder.printed("locked");
    const start = Date.now();
    const e = await withFileLock(lockPath, async () => "should not run", { timeoutMs: 300, label: "tenant acme" }).catch(
      (err: unknown) => err,
    );
    expect(Date.now() - start).toBeGreaterThanOrEqual(290);
    expect(e).toBeInstanceOf(MvmError);
    expect((e as MvmError).kind).toBe("unavailable");
    expect((e as MvmError).message).toContain(`lock tenant acme (${lockPath}) is held by pid ${holder.child.pid}`);
    expect(holder.child.exitCode).toBeNull();
  });
});
