import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import {
  isSameProcess,
  parseProcCmdline,
  parseProcStat,
  readProcCmdline,
  readProcNetNamespace,
  readProcStartTime,
} from "../../../src/runtime/process/proc-stat.js";

/** A /proc/PID/stat line with `comm` and `startTime` in place (fields 3-52 otherwise plausible). */
function statLine(pid: number, comm: string, startTime: number): string {
  const afterComm = ["S", "1", String(pid), String(pid), "0", "-1", "4194560", "100", "0", "0", "0", "5", "3", "0", "0"];
  afterComm.push("20", "0", "1", "0", String(startTime), "12345678", "300");
  while (afterComm.length < 50) afterComm.push("0");
  return `${pid} (${comm}) ${afterComm.join(" ")}\n`;
}

describe("parseProcStat", () => {
  it("reads the start time (field 22) after a comm holding spaces and parentheses", () => {
    expect(parseProcStat(statLine(4242, "qemu (x) ) S 1 2", 987654))).toEqual({ state: "S", startTime: 987654 });
    expect(parseProcStat(statLine(7, "a b", 42))).toEqual({ state: "S", startTime: 42 });
    expect(parseProcStat(statLine(7, ")", 43))?.startTime).toBe(43);
  });

  it("rejects text that is not a stat line", () => {
    expect(parseProcStat("garbage")).toBeNull();
    expect(parseProcStat("1 (x) S 1")).toBeNull();
  });

  it("agrees with the live stat of this process", async () => {
    const raw = await readFile("/proc/self/stat", "utf8");
    const expected = Number(raw.slice(raw.lastIndexOf(")") + 2).split(" ")[19]);
    expect(await readProcStartTime(process.pid)).toBe(expected);
  });
});

describe("isSameProcess", () => {
  it("is true only for the pid with its own start time", async () => {
    const startTime = (await readProcStartTime(process.pid)) as number;
    expect(await isSameProcess(process.pid, startTime)).toBe(true);
    expect(await isSameProcess(process.pid, startTime + 1)).toBe(false);
    expect(await isSameProcess(2 ** 22 + 17, startTime)).toBe(false);
  });

  it("turns false once the process has exited", async () => {
    const child = spawn("sleep", ["30"], { stdio: "ignore" });
    const pid = child.pid as number;
    const startTime = (await readProcStartTime(pid)) as number;
    expect(await isSameProcess(pid, startTime)).toBe(true);
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
    expect(await isSameProcess(pid, startTime)).toBe(false);
    expect(await readProcStartTime(pid)).toBeNull();
  });
});

describe("command line and namespace", () => {
  it("splits the NUL-separated command line", () => {
    expect(parseProcCmdline("qemu\0-name\0a b\0\0")).toEqual(["qemu", "-name", "a b", ""]);
    expect(parseProcCmdline("one\0")).toEqual(["one"]);
    expect(parseProcCmdline("")).toEqual([]);
  });

  it("reads a live process's arguments exactly, and null for one that does not exist", async () => {
    const child = spawn("sleep", ["30"], { stdio: "ignore" });
    try {
      expect(await readProcCmdline(child.pid as number)).toEqual(["sleep", "30"]);
    } finally {
      child.kill("SIGKILL");
    }
    const withSpaces = spawn(process.execPath, ["-e", "setTimeout(() => {}, 30000)", "a b", "$(c)"], { stdio: "ignore" });
    try {
      const args = await readProcCmdline(withSpaces.pid as number);
      expect(args?.slice(-2)).toEqual(["a b", "$(c)"]);
    } finally {
      withSpaces.kill("SIGKILL");
    }
    expect(await readProcCmdline(2 ** 22 + 17)).toBeNull();
  });

  it("names the network namespace as the kernel does", async () => {
    expect(await readProcNetNamespace("self")).toMatch(/^net:\[\d+\]$/);
    expect(await readProcNetNamespace(process.pid)).toBe(await readProcNetNamespace("self"));
    expect(await readProcNetNamespace(2 ** 22 + 17)).toBeNull();
  });
});
