import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { createProcHostMemory, parseMeminfo, parsePsiSomeAvg10 } from "../../../src/runtime/host/proc-host-memory.js";

const MEMINFO = "MemTotal:       24684084 kB\nMemFree:        24026620 kB\nMemAvailable:   2065380 kB\nBuffers:            1684 kB\n";
const PSI = "some avg10=12.50 avg60=3.00 avg300=0.10 total=123456\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=42\n";

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function procRoot(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), "mvm-proc-"));
  dirs.push(dir);
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(join(dir, path, ".."), { recursive: true });
    writeFileSync(join(dir, path), text);
  }
  return dir;
}

describe("proc host memory", () => {
  it("parses MemTotal and MemAvailable as bytes and the PSI some avg10 share", () => {
    expect(parseMeminfo(MEMINFO)).toEqual({ totalBytes: 24684084 * 1024, availableBytes: 2065380 * 1024 });
    expect(parsePsiSomeAvg10(PSI)).toBe(12.5);
    expect(parsePsiSomeAvg10("full avg10=1.00\n")).toBeNull();
    expect(() => parseMeminfo("MemTotal: 1 kB\n")).toThrow(/no MemAvailable line/);
  });

  it("reads both files under the proc root, and no PSI where the kernel has none", async () => {
    const withPsi = await createProcHostMemory({ procRoot: procRoot({ meminfo: MEMINFO, "pressure/memory": PSI }) }).read();
    expect(withPsi).toEqual({ totalBytes: 24684084 * 1024, availableBytes: 2065380 * 1024, stallPct10s: 12.5 });
    const withoutPsi = await createProcHostMemory({ procRoot: procRoot({ meminfo: MEMINFO }) }).read();
    expect(withoutPsi.stallPct10s).toBeNull();
    await expect(createProcHostMemory({ procRoot: procRoot({}) }).read()).rejects.toThrow(/meminfo/);
  });

  it("reads this host's /proc", async () => {
    const here = await createProcHostMemory().read();
    expect(here.totalBytes).toBeGreaterThan(0);
    expect(here.availableBytes).toBeGreaterThan(0);
    expect(here.availableBytes).toBeLessThanOrEqual(here.totalBytes);
  });
});
