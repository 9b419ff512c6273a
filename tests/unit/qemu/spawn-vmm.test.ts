// The VMM launcher with real processes (node and sleep stand in for QEMU): procs files joined before exec, arguments
// and paths passed literally, detached from the caller, and surviving the caller's exit.

import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import { isSameProcess, readProcStartTime } from "../../../src/runtime/process/proc-stat.js";
import {
  JOIN_CGROUPS_THEN_EXEC_SCRIPT,
  parkVmmLauncher,
  readVmmPidFile,
  spawnVmm,
  startStandbyLauncher,
  vmmLauncherArgv,
} from "../../../src/runtime/process/spawn-vmm.js";
import { signalProcess, terminateProcess, waitForProcessExit } from "../../../src/runtime/process/terminate.js";
import { transpileModules } from "../../helpers/transpile.js";

const run = promisify(execFile);

let dir: string;
const spawned: Array<{ pid: number; startTime: number }> = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-spawn-"));
});

afterEach(async () => {
  for (const p of spawned.splice(0)) await terminateProcess(p.pid, p.startTime, { termGraceMs: 500 });
  await rm(dir, { recursive: true, force: true });
});

/** A node program that records its arguments in `out`, prints to both streams, then idles. */
const RECORDER = [
  "const fs = require('node:fs');",
  "fs.writeFileSync(process.argv[1], JSON.stringify(process.argv.slice(2)));",
  "console.log('to stdout'); console.error('to stderr');",
  "setInterval(() => {}, 1000);",
].join(" ");

/** A bare-node program that imports `name` from the transpiled spawn-vmm.ts and runs `lines`; returns its path. */
async function starterScript(name: string, lines: string[]): Promise<string> {
  await mkdir(join(dir, "js"));
  const modules = await transpileModules(["src/runtime/process/spawn-vmm.ts"], join(dir, "js"));
  const starter = join(dir, "starter.mjs");
  const from = JSON.stringify(modules.urlOf("src/runtime/process/spawn-vmm.ts"));
  await writeFile(starter, [`import { ${name} } from ${from};`, ...lines].join("\n"));
  return starter;
}

async function waitForFile(path: string): Promise<string> {
  for (let i = 0; i < 200; i++) {
    const text = await readFile(path, "utf8").catch(() => null);
    if (text) return text;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`${path} never appeared`);
}

describe("vmmLauncherArgv", () => {
  it("passes procs files and the command as positional parameters of a fixed script", () => {
    const argv = vmmLauncherArgv({ argv: ["qemu", "-name", "x"], netns: null, cgroupProcsFiles: ["/a/cgroup.procs", "/b $(x)/cgroup.procs"] });
    expect(argv).toEqual(["/bin/sh", "-c", JOIN_CGROUPS_THEN_EXEC_SCRIPT, "sh", "/a/cgroup.procs", "/b $(x)/cgroup.procs", "--", "qemu", "-name", "x"]);
    const other = vmmLauncherArgv({ argv: ["other"], netns: "ns1", cgroupProcsFiles: [] });
    expect(other[2]).toBe(JOIN_CGROUPS_THEN_EXEC_SCRIPT);
    expect(JOIN_CGROUPS_THEN_EXEC_SCRIPT).not.toContain("qemu");
  });

  it("enters the namespace with ip netns exec, after the cgroups", () => {
    const argv = vmmLauncherArgv({ argv: ["qemu"], netns: "mvm-data", cgroupProcsFiles: ["/c/cgroup.procs"], ipBinary: "/sbin/ip" });
    expect(argv.slice(4)).toEqual(["/c/cgroup.procs", "--", "/sbin/ip", "netns", "exec", "mvm-data", "qemu"]);
  });

  it("refuses relative procs files, odd namespace names and an empty command", () => {
    expect(() => vmmLauncherArgv({ argv: ["q"], netns: null, cgroupProcsFiles: ["cgroup.procs"] })).toThrow(
      /cgroup_procs_files\[0\]: must be an absolute path/,
    );
    expect(() => vmmLauncherArgv({ argv: ["q"], netns: "a b", cgroupProcsFiles: [] })).toThrow(/netns: must be/);
    expect(() => vmmLauncherArgv({ argv: [], netns: null, cgroupProcsFiles: [] })).toThrow(/argv: must name a program/);
  });
});

describe("spawnVmm", () => {
  it("writes its pid into every procs file before exec, and passes every path and argument literally", async () => {
    const odd = join(dir, "groups with spaces $(touch PWNED) `touch PWNED2`; x");
    await mkdir(join(odd, "memory"), { recursive: true });
    await mkdir(join(odd, "pids"), { recursive: true });
    const procs = [join(odd, "memory", "cgroup.procs"), join(odd, "pids", "cgroup.procs")];
    for (const p of procs) await writeFile(p, "");
    const out = join(dir, "argv $(touch PWNED3).json");
    const literal = "$(touch PWNED4) `id` ; rm -rf / \"'\\";
    const log = join(dir, "vmm.log");
    const pidFile = join(dir, "vmm.pid");

    const result = await spawnVmm({
      argv: [process.execPath, "-e", RECORDER, out, literal, "--", "two words"],
      netns: null,
      cgroupProcsFiles: procs,
      logFile: log,
      pidFile,
      cwd: dir,
    });
    spawned.push(result);

    expect(await readProcStartTime(result.pid)).toBe(result.startTime);
    for (const p of procs) expect(await readFile(p, "utf8")).toBe(`${result.pid}\n`);
    expect(JSON.parse(await waitForFile(out))).toEqual([literal, "--", "two words"]);
    expect(await readVmmPidFile(pidFile)).toEqual(result);
    // Nothing was interpreted by a shell: no file named PWNED* was created, here or in the test's directory.
    const created = [...(await readdir(dir, { recursive: true })), ...(await readdir(process.cwd()))].map(String);
    expect(created.filter((f) => /(^|\/)PWNED\d?$/.test(f))).toEqual([]);
  });

  it("detaches the process: own session, stdin from /dev/null, output to the log, working directory as asked", async () => {
    const log = join(dir, "vmm.log");
    const cwd = join(dir, "run");
    await mkdir(cwd);
    const result = await spawnVmm({
      argv: [process.execPath, "-e", RECORDER, join(dir, "argv.json")],
      netns: null,
      cgroupProcsFiles: [],
      logFile: log,
      pidFile: join(dir, "vmm.pid"),
      cwd,
    });
    spawned.push(result);
    const stat = await readFile(`/proc/${result.pid}/stat`, "utf8");
    const [, , processGroup, session] = stat.slice(stat.lastIndexOf(")") + 2).split(" ").map(Number);
    expect(session).toBe(result.pid);
    expect(processGroup).toBe(result.pid);
    expect(await readlink(`/proc/${result.pid}/fd/0`)).toBe("/dev/null");
    expect(await readlink(`/proc/${result.pid}/fd/1`)).toBe(log);
    expect(await readlink(`/proc/${result.pid}/cwd`)).toBe(cwd);
    const environ = (await readFile(`/proc/${result.pid}/environ`, "utf8")).split("\0").filter(Boolean);
    // Only PATH is passed on (the launcher shell adds PWD itself).
    expect(environ.filter((e) => !e.startsWith("PWD="))).toEqual([`PATH=${process.env.PATH}`]);
    await waitForFile(join(dir, "argv.json"));
    for (let i = 0; i < 100 && !(await readFile(log, "utf8")).includes("to stderr"); i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(await readFile(log, "utf8")).toMatch(/to stdout\n[\s\S]*to stderr\n|to stderr\n[\s\S]*to stdout\n/);
  });

  it("fails with the shell's message when a procs file cannot be written, running nothing", async () => {
    const marker = join(dir, "ran");
    const error = await spawnVmm({
      argv: ["/bin/touch", marker],
      netns: null,
      cgroupProcsFiles: [join(dir, "no-such-group", "cgroup.procs")],
      logFile: join(dir, "vmm.log"),
      pidFile: join(dir, "vmm.pid"),
      cwd: dir,
    }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(MvmError);
    expect((error as Error).message).toMatch(/launcher exited \(status 125\) before the vmm ran: .*no-such-group\/cgroup\.procs/);
    expect(await readFile(marker).then(() => true, () => false)).toBe(false);
    expect(await readVmmPidFile(join(dir, "vmm.pid"))).toBeNull();
  });

  it("fails when the program does not exist", async () => {
    await expect(
      spawnVmm({
        argv: [join(dir, "no-such-qemu")],
        netns: null,
        cgroupProcsFiles: [],
        logFile: join(dir, "vmm.log"),
        pidFile: join(dir, "vmm.pid"),
        cwd: dir,
      }),
    ).rejects.toThrow(/launcher exited \(status 127\) before the vmm ran: .*no-such-qemu/);
  });

  it("leaves a process that outlives the program that started it", async () => {
    const starter = await starterScript("spawnVmm", [
        `const r = await spawnVmm({ argv: ["sleep", "60"], netns: null, cgroupProcsFiles: [], logFile: ${JSON.stringify(join(dir, "l"))}, pidFile: ${JSON.stringify(join(dir, "p"))}, cwd: ${JSON.stringify(dir)} });`,
        "console.log(JSON.stringify({ ...r, parent: process.pid }));",
    ]);
    // The starter must exit on its own: a handle kept on the child would hold it open.
    const { stdout } = await run(process.execPath, [starter], { timeout: 10_000 });
    const started = JSON.parse(stdout) as { pid: number; startTime: number; parent: number };
    spawned.push(started);
    expect(await readProcStartTime(started.parent)).toBeNull();
    expect(await isSameProcess(started.pid, started.startTime)).toBe(true);
    const stat = await readFile(`/proc/${started.pid}/stat`, "utf8");
    expect(Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1])).not.toBe(started.parent);
  });
});

describe("parkVmmLauncher", () => {
  async function groups(names: string[]): Promise<string[]> {
    const files: string[] = [];
    for (const name of names) {
      await mkdir(join(dir, name), { recursive: true });
      files.push(join(dir, name, "cgroup.procs"));
      await writeFile(files[files.length - 1]!, "");
    }
    return files;
  }

  async function exited(pid: number): Promise<boolean> {
    for (let i = 0; i < 200; i++) {
      if ((await readProcStartTime(pid)) === null) return true;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    return false;
  }

  it("joins the groups at once, runs nothing until exec, then execs the command literally as the same process", async () => {
    const procs = await groups(["memory", "pids $(touch PWNED)"]);
    const out = join(dir, "argv.json");
    const launcher = await parkVmmLauncher({ cgroupProcsFiles: procs, logFile: join(dir, "vmm.log"), cwd: dir });
    spawned.push({ pid: launcher.pid, startTime: (await readProcStartTime(launcher.pid))! });
    for (let i = 0; i < 200 && (await readFile(procs[1]!, "utf8")) === ""; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    for (const p of procs) expect(await readFile(p, "utf8")).toBe(`${launcher.pid}\n`);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await readFile(out).then(() => true, () => false)).toBe(false);

    const literal = "$(touch PWNED2) `id` ; \\ \"' with  spaces ";
    const result = await launcher.exec({ argv: [process.execPath, "-e", RECORDER, out, literal, "", "x"], netns: null, pidFile: join(dir, "vmm.pid") });
    expect(result.pid).toBe(launcher.pid);
    expect(JSON.parse(await waitForFile(out))).toEqual([literal, "", "x"]);
    expect(await readVmmPidFile(join(dir, "vmm.pid"))).toEqual(result);
    expect(await readlink(`/proc/${result.pid}/fd/0`)).toBe("/dev/null");
    expect((await readdir(dir, { recursive: true })).map(String).filter((f) => /PWNED\d?$/.test(f))).toEqual([]);
    await expect(launcher.exec({ argv: ["true"], netns: null, pidFile: join(dir, "p2") })).rejects.toThrow(/used already/);
  });

  it("ends without running anything when discarded, or when its command never comes", async () => {
    const marker = join(dir, "ran");
    const discarded = await parkVmmLauncher({ cgroupProcsFiles: [], logFile: join(dir, "vmm.log"), cwd: dir });
    expect(discarded.waiting).toBe(true);
    discarded.discard();
    expect(discarded.waiting).toBe(false);
    expect(await exited(discarded.pid)).toBe(true);
    await expect(discarded.exec({ argv: ["/bin/touch", marker], netns: null, pidFile: join(dir, "p") })).rejects.toThrow(/discarded already/);

    const forgotten = await parkVmmLauncher({ cgroupProcsFiles: [], logFile: join(dir, "vmm.log"), cwd: dir, parkTimeoutMs: 100 });
    expect(await exited(forgotten.pid)).toBe(true);
    expect(forgotten.waiting).toBe(false);
    expect(await readFile(marker).then(() => true, () => false)).toBe(false);
  });

  it("refuses an argument it could not pass on one line, and ends the launcher", async () => {
    const launcher = await parkVmmLauncher({ cgroupProcsFiles: [], logFile: join(dir, "vmm.log"), cwd: dir });
    await expect(launcher.exec({ argv: ["/bin/echo", "two\nlines"], netns: null, pidFile: join(dir, "p") })).rejects.toThrow(/argv\[1\]: must not contain a newline/);
    expect(await exited(launcher.pid)).toBe(true);
  });

  it("fails at exec with the shell's message when a group could not be joined, having run nothing", async () => {
    const marker = join(dir, "ran");
    const launcher = await parkVmmLauncher({ cgroupProcsFiles: [join(dir, "no-such-group", "cgroup.procs")], logFile: join(dir, "vmm.log"), cwd: dir });
    await expect(launcher.exec({ argv: ["/bin/touch", marker], netns: null, pidFile: join(dir, "p") })).rejects.toThrow(
      /launcher exited \(status 125\) before the vmm ran: .*no-such-group\/cgroup\.procs/,
    );
    expect(await readFile(marker).then(() => true, () => false)).toBe(false);
  });
});

describe("startStandbyLauncher", () => {
  async function until(check: () => Promise<boolean>): Promise<boolean> {
    for (let i = 0; i < 200; i++) {
      if (await check()) return true;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    return false;
  }

  it("waits placed nowhere, then enters the directory, log and groups it is given, and execs as the same process", async () => {
    const standby = await startStandbyLauncher();
    spawned.push({ pid: standby.pid, startTime: (await readProcStartTime(standby.pid))! });
    const procs = [join(dir, "memory", "cgroup.procs"), join(dir, "pids $(touch PWNED)", "cgroup.procs")];
    for (const p of procs) {
      await mkdir(join(p, ".."), { recursive: true });
      await writeFile(p, "");
    }
    expect(standby.waiting).toBe(true);
    expect(await readlink(`/proc/${standby.pid}/cwd`)).toBe("/");
    expect(await readlink(`/proc/${standby.pid}/fd/1`)).toBe("/dev/null");

    const log = join(dir, "run dir", "vmm.log");
    await mkdir(join(dir, "run dir"));
    const launcher = await standby.place({ cgroupProcsFiles: procs, logFile: log, cwd: join(dir, "run dir") });
    expect(standby.waiting).toBe(false);
    expect(launcher.pid).toBe(standby.pid);
    expect(launcher.waiting).toBe(true);
    expect(await until(async () => (await readFile(procs[1]!, "utf8")) !== "")).toBe(true);
    for (const p of procs) expect(await readFile(p, "utf8")).toBe(`${standby.pid}\n`);
    expect(await readlink(`/proc/${standby.pid}/cwd`)).toBe(join(dir, "run dir"));
    expect((await stat(log)).mode & 0o777).toBe(0o600);
    await expect(standby.place({ cgroupProcsFiles: [], logFile: log, cwd: dir })).rejects.toThrow(/placed already/);

    const out = join(dir, "argv.json");
    const result = await launcher.exec({ argv: [process.execPath, "-e", RECORDER, out, "a b", ""], netns: null, pidFile: join(dir, "vmm.pid") });
    expect(result.pid).toBe(standby.pid);
    expect(JSON.parse(await waitForFile(out))).toEqual(["a b", ""]);
    expect(await until(async () => (await readFile(log, "utf8")).includes("to stderr"))).toBe(true);
    expect(await readFile(log, "utf8")).toContain("to stdout");
    expect((await readdir(dir, { recursive: true })).map(String).filter((f) => /PWNED$/.test(f))).toEqual([]);
  });

  it("refuses a relative path or one with a newline before sending anything, and ends the launcher", async () => {
    for (const bad of [
      { placement: { cgroupProcsFiles: [], logFile: "vmm.log", cwd: dir }, message: /log_file: must be an absolute path/ },
      { placement: { cgroupProcsFiles: [], logFile: join(dir, "vmm.log"), cwd: `${dir}\nx` }, message: /cwd: must not contain a newline/ },
      { placement: { cgroupProcsFiles: [join(dir, "a\nb")], logFile: join(dir, "vmm.log"), cwd: dir }, message: /cgroup_procs_files\[0\]: must not contain a newline/ },
    ]) {
      const standby = await startStandbyLauncher();
      await expect(standby.place(bad.placement)).rejects.toThrow(bad.message);
      expect(await until(async () => (await readProcStartTime(standby.pid)) === null)).toBe(true);
      expect(standby.waiting).toBe(false);
    }
    expect(await readdir(dir)).toEqual([]);
  });

  it("ends without running anything when discarded, and does not keep its starter alive, ending with it", async () => {
    const discarded = await startStandbyLauncher();
    discarded.discard();
    expect(discarded.waiting).toBe(false);
    expect(await until(async () => (await readProcStartTime(discarded.pid)) === null)).toBe(true);
    await expect(discarded.place({ cgroupProcsFiles: [], logFile: join(dir, "l"), cwd: dir })).rejects.toThrow(/discarded already/);

    const starter = await starterScript("startStandbyLauncher", ["const s = await startStandbyLauncher();", "console.log(JSON.stringify({ pid: s.pid }));"]);
    // The starter must exit on its own, and its standby launcher, told nothing, with it.
    const { stdout } = await run(process.execPath, [starter], { timeout: 10_000 });
    const { pid } = JSON.parse(stdout) as { pid: number };
    expect(await until(async () => (await readProcStartTime(pid)) === null)).toBe(true);
  });
});

describe("terminate", () => {
  it("escalates to SIGKILL for a process that ignores SIGTERM", async () => {
    const result = await spawnVmm({
      argv: [process.execPath, "-e", "process.on('SIGTERM', () => {}); setInterval(() => {}, 1000);"],
      netns: null,
      cgroupProcsFiles: [],
      logFile: join(dir, "vmm.log"),
      pidFile: join(dir, "vmm.pid"),
      cwd: dir,
    });
    spawned.push(result);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await waitForProcessExit(result.pid, result.startTime, 50)).toBe(false);
    const t0 = Date.now();
    await terminateProcess(result.pid, result.startTime, { termGraceMs: 300 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(280);
    expect(await isSameProcess(result.pid, result.startTime)).toBe(false);
    await terminateProcess(result.pid, result.startTime);
  });

  it("never signals a pid whose start time differs", async () => {
    const result = await spawnVmm({
      argv: ["sleep", "60"],
      netns: null,
      cgroupProcsFiles: [],
      logFile: join(dir, "vmm.log"),
      pidFile: join(dir, "vmm.pid"),
      cwd: dir,
    });
    spawned.push(result);
    expect(await signalProcess(result.pid, result.startTime + 1, "SIGKILL")).toBe(false);
    await terminateProcess(result.pid, result.startTime + 1);
    expect(await isSameProcess(result.pid, result.startTime)).toBe(true);
  });
});
