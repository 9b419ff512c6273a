import { spawn } from "node:child_process";
import { mkdtemp, readFile, readdir, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import { heldFileLocks, readLockHolder, withFileLock } from "../../../src/runtime/store/file-lock.js";
import {
  bootId,
  currentProcessIdentity,
  isProcessAlive,
  parseProcStat,
  processStartTime,
} from "../../../src/runtime/store/process-identity.js";
import { delay } from "./fixtures.js";

let dir: string;
let lockPath: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-lock-"));
  lockPath = join(dir, "x.lock");
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The pid of a process that has exited and been reaped. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  await new Promise((r) => child.on("exit", r));
  return child.pid as number;
}

async function plantLock(content: object | string): Promise<void> {
  await writeFile(lockPath, typeof content === "string" ? content : JSON.stringify(content));
}

async function elapsedMs(fn: () => Promise<unknown>): Promise<number> {
  const start = Date.now();
  await fn();
  return Date.now() - start;
}

describe("parseProcStat", () => {
  it("counts fields from the last parenthesis, whatever the command name holds", () => {
    const rest = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21";
    expect(parseProcStat(`42 (a) b (c) ${rest}`)).toEqual({ state: "S", startTime: 987654 });
    expect(parseProcStat(`42 (plain) ${rest}`)).toEqual({ state: "S", startTime: 987654 });
    expect(parseProcStat("garbage")).toBeNull();
  });

  it("reads this process's start time and sees it alive, a reaped child dead", async () => {
    const me = await currentProcessIdentity();
    expect(me.startTime).toBe(await processStartTime(process.pid));
    expect(me.startTime).toBeGreaterThan(0);
    expect(await isProcessAlive(me)).toBe(true);
    expect(await isProcessAlive({ ...me, startTime: (me.startTime as number) + 1 })).toBe(false);
    expect(await isProcessAlive({ ...me, bootId: "another-boot" })).toBe(false);
    expect(await isProcessAlive({ pid: await deadPid(), startTime: null, bootId: null })).toBe(false);
  });
});

describe("withFileLock in one process", () => {
  it("holds the lock file while running and removes it afterwards", async () => {
    const holder = await withFileLock(lockPath, async () => {
      expect(heldFileLocks()).toEqual([lockPath]);
      return readLockHolder(lockPath);
    }, { label: "thing x" });
    expect(holder).toMatchObject({ pid: process.pid, label: "thing x" });
    expect(heldFileLocks()).toEqual([]);
    expect(await readdir(dir)).toEqual([]);
  });

  it("serialises concurrent tasks", async () => {
    let inside = 0;
    let maxInside = 0;
    await Promise.all(
      Array.from({ length: 8 }, () =>
        withFileLock(lockPath, async () => {
          inside++;
          maxInside = Math.max(maxInside, inside);
          await delay(3);
          inside--;
        }),
      ),
    );
    expect(maxInside).toBe(1);
  });

  it("is re-entrant within one async chain", async () => {
    const result = await withFileLock(lockPath, () => withFileLock(lockPath, async () => "nested"), { timeoutMs: 500 });
    expect(result).toBe("nested");
  });

  it("tells each chain its own locks, and none once every holder is done (context tracking switched off)", async () => {
    const other = join(dir, "other.lock");
    let released!: () => void;
    const firstReleased = new Promise<void>((resolve) => (released = resolve));
    let seenAfterRelease: readonly string[] | undefined;
    const second = withFileLock(other, async () => {
      await delay(5);
      expect(heldFileLocks()).toEqual([other]);
    });
    await withFileLock(lockPath, async () => {
      // Work this holder leaves behind, still running after the lock is given back.
      void firstReleased.then(async () => {
        await second;
        seenAfterRelease = heldFileLocks();
      });
      expect(heldFileLocks()).toEqual([lockPath]);
    });
    released();
    await second;
    await delay(1);
    expect(seenAfterRelease).toEqual([]);
    expect(await withFileLock(lockPath, async () => heldFileLocks())).toEqual([lockPath]);
  });

  it("gives up on a task of this process that holds it too long", async () => {
    let release!: () => void;
    const holding = withFileLock(lockPath, () => new Promise<void>((r) => (release = r)));
    await delay(20);
    const e = await withFileLock(lockPath, async () => 1, { timeoutMs: 50, label: "slow" }).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(MvmError);
    expect((e as MvmError).kind).toBe("unavailable");
    expect((e as MvmError).message).toMatch(/lock slow is held by another task in this process/);
    release();
    await holding;
    expect(await withFileLock(lockPath, async () => "after", { timeoutMs: 500 })).toBe("after");
  });

  it("fails with unavailable naming a live holder's pid", async () => {
    const parent = { pid: process.ppid, startTime: await processStartTime(process.ppid), bootId: await bootId() };
    await plantLock({ ...parent, token: "t", label: "other", acquiredAt: "" });
    const e = await withFileLock(lockPath, async () => 1, { timeoutMs: 150, label: "tenant acme" }).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(MvmError);
    expect((e as MvmError).kind).toBe("unavailable");
    expect((e as MvmError).message).toContain(`lock tenant acme (${lockPath}) is held by pid ${process.ppid}`);
    expect(JSON.parse(await readFile(lockPath, "utf8")).token).toBe("t");
  });

  it("takes over a lock whose holder is gone, reused its pid, ran in another boot, or left garbage", async () => {
    const boot = await bootId();
    const parentStart = await processStartTime(process.ppid);
    const stale: (object | string)[] = [
      { pid: await deadPid(), startTime: 1, bootId: boot, token: "dead" },
      { pid: process.ppid, startTime: (parentStart as number) + 1, bootId: boot, token: "reused" },
      { pid: process.ppid, startTime: parentStart, bootId: "00000000-0000-0000-0000-000000000000", token: "old-boot" },
      { ...(await currentProcessIdentity()), token: "leftover-of-this-process" },
      "not json at all",
    ];
    for (const content of stale) {
      await plantLock(content);
      const ms = await elapsedMs(() => withFileLock(lockPath, async () => undefined, { timeoutMs: 2000 }));
      expect(ms, JSON.stringify(content)).toBeLessThan(1000);
      expect(await readdir(dir)).toEqual([]);
    }
  });

  it("reports a lock file removed by someone else while held", async () => {
    const e = await withFileLock(lockPath, async () => {
      await unlink(lockPath);
      return "done";
    }).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(MvmError);
    expect((e as MvmError).kind).toBe("internal");
    expect((e as MvmError).message).toMatch(/was removed or taken over while this process held it/);
    expect(await withFileLock(lockPath, async () => "again", { timeoutMs: 500 })).toBe("again");
  });
});
