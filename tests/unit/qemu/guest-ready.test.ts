import { appendFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { parseGuestReport, waitForGuestReady } from "../../../src/runtime/qemu/guest-ready.js";

const ID = "i-0123abcd";
let dir: string;
let log: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-ready-"));
  log = join(dir, "serial.log");
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const later = (ms: number, fn: () => Promise<void>): void => {
  setTimeout(() => void fn(), ms);
};

describe("parseGuestReport", () => {
  it("recognises the ready line of this instance only", () => {
    expect(parseGuestReport(`MVM-READY ${ID}`, ID)).toEqual({ kind: "ready" });
    expect(parseGuestReport(`MVM-READY ${ID}\r`, ID)).toEqual({ kind: "ready" });
    expect(parseGuestReport(`[    1.234] random: crng init done MVM-READY ${ID}`, ID)).toEqual({ kind: "ready" });
    expect(parseGuestReport("MVM-READY i-99999999", ID)).toBeNull();
    expect(parseGuestReport(`MVM-READY ${ID}x`, ID)).toBeNull();
    expect(parseGuestReport("MVM-READY", ID)).toBeNull();
    expect(parseGuestReport("[    0.5] Run /init as init process", ID)).toBeNull();
  });

  it("recognises a failure and keeps its reason", () => {
    expect(parseGuestReport("init: MVM-FAILED cannot mount /dev/vdb: no such device\r", ID)).toEqual({
      kind: "failed",
      line: "MVM-FAILED cannot mount /dev/vdb: no such device",
    });
  });
});

describe("waitForGuestReady", () => {
  it("waits for the log to appear and for a line written in pieces", async () => {
    later(60, () => writeFile(log, "[    0.1] booting\nMVM-REA"));
    later(160, () => appendFile(log, `DY ${ID}\nafter\n`));
    const t0 = Date.now();
    expect(await waitForGuestReady(log, ID, { deadline: Date.now() + 5_000, pollMs: 10 })).toEqual({ kind: "ready" });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(140);
  });

  it("does not take a half-written id for the whole one", async () => {
    await writeFile(log, `MVM-READY ${ID.slice(0, -1)}`);
    expect(await waitForGuestReady(log, ID.slice(0, -1), { deadline: Date.now() + 150, pollMs: 10 })).toEqual({ kind: "timeout" });
  });

  it("reports the failure line", async () => {
    later(50, () => writeFile(log, "MVM-FAILED no root disk\n"));
    expect(await waitForGuestReady(log, ID, { deadline: Date.now() + 5_000, pollMs: 10 })).toEqual({
      kind: "failed",
      line: "MVM-FAILED no root disk",
    });
  });

  it("times out when only other instances report", async () => {
    await writeFile(log, "MVM-READY i-00000001\n");
    const t0 = Date.now();
    expect(await waitForGuestReady(log, ID, { deadline: Date.now() + 200, pollMs: 10 })).toEqual({ kind: "timeout" });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
  });

  it("stops when aborted, but still honours a report that is already there", async () => {
    const controller = new AbortController();
    later(50, async () => controller.abort());
    expect(await waitForGuestReady(log, ID, { deadline: Date.now() + 5_000, signal: controller.signal })).toEqual({
      kind: "aborted",
    });
    await writeFile(log, `MVM-READY ${ID}\n`);
    expect(await waitForGuestReady(log, ID, { deadline: Date.now() + 5_000, signal: controller.signal })).toEqual({
      kind: "ready",
    });
  });
});
