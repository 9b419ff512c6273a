// The command helper for real: /bin/sh and coreutils' timeout start the programs; the answers must be exactly what
// running them directly gives.

import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { createCommandHelperRunner, type CommandHelperRunner } from "../../../src/runtime/exec/command-helper.js";
import { execaHostCommand } from "../../../src/runtime/exec/host-command.js";

let helper: CommandHelperRunner;
afterEach(async () => {
  await helper?.close();
});

const helperDirs = () => readdirSync(tmpdir()).filter((n) => n.startsWith("mvm-commands-"));

/** The helper's pid: the one child of this process running the helper script. */
function helperPids(): number[] {
  const out = spawnSync("pgrep", ["-P", String(process.pid), "-f", "mvm-command-helper"], { encoding: "utf8" }).stdout;
  return out.split("\n").filter(Boolean).map(Number);
}

describe("command helper runner", () => {
  it("passes arguments literally, feeds the input, and returns exit status, stdout and stderr as a direct run does", async () => {
    helper = createCommandHelperRunner();
    const script = 'printf "%s|" "$@"; cat; echo "to stderr" >&2; exit 3';
    const args = ["-c", script, "sh", "two words", "$HOME", "*", "'quoted'", "", "ünïcode"];
    const viaHelper = await helper.run("sh", args, { input: "from stdin\n" });
    const direct = await execaHostCommand("sh", args, { input: "from stdin\n" });
    expect(viaHelper).toEqual(direct);
    expect(viaHelper).toEqual({ exitCode: 3, stdout: "two words|$HOME|*|'quoted'||ünïcode|from stdin\n", stderr: "to stderr\n" });
    // No input: stdin is empty, not the helper's own.
    expect(await helper.run("cat", [])).toEqual({ exitCode: 0, stdout: "", stderr: "" });
  });

  it("runs commands side by side", async () => {
    helper = createCommandHelperRunner();
    // Each command marks itself, then waits (5 s at most) until all six have: run one after another, the first
    // would wait alone and fail.
    const barrier = mkdtempSync(join(tmpdir(), "mvm-helper-barrier-"));
    try {
      const script = 'touch "$1/$2"; for n in $(seq 100); do [ "$(ls "$1" | wc -l)" -ge 6 ] && { echo "$2"; exit 0; }; sleep 0.05; done; exit 1';
      const results = await Promise.all(Array.from({ length: 6 }, (_, i) => helper.run("sh", ["-c", script, "sh", barrier, String(i)])));
      expect(results.map((r) => [r.exitCode, r.stdout])).toEqual(Array.from({ length: 6 }, (_, i) => [0, `${i}\n`]));
    } finally {
      rmSync(barrier, { recursive: true, force: true });
    }
  });

  it("never sends a limit that would mean none: under a millisecond is one", async () => {
    helper = createCommandHelperRunner();
    await expect(helper.run("sleep", ["30"], { timeoutMs: 0.4 })).rejects.toThrow(/timed out after 0.4 ms/);
  });

  it("ends a command at its timeout and says so", async () => {
    helper = createCommandHelperRunner();
    const t0 = Date.now();
    await expect(helper.run("sleep", ["30"], { timeoutMs: 300 })).rejects.toThrow(/^sleep 30: timed out after 300 ms/);
    expect(Date.now() - t0).toBeLessThan(5_000);
    // One that ignores TERM is killed a second later.
    await expect(helper.run("sh", ["-c", "trap '' TERM; sleep 30"], { timeoutMs: 200 })).rejects.toThrow(/timed out after 200 ms/);
    expect(Date.now() - t0).toBeLessThan(8_000);
  });

  it("rejects a program that cannot be run, as a direct run does", async () => {
    helper = createCommandHelperRunner();
    await expect(helper.run("/nonexistent/program", ["x"])).rejects.toThrow(/^\/nonexistent\/program x: could not be run: timeout: failed to run command/);
    await expect(execaHostCommand("/nonexistent/program", ["x"])).rejects.toThrow(/^\/nonexistent\/program x: /);
  });

  it("does not pile up exited subshells over many commands (the agent runs one per instance per idle tick)", async () => {
    helper = createCommandHelperRunner();
    for (let i = 0; i < 200; i += 1) await helper.run("true", []);
    const [pid] = helperPids();
    const children = spawnSync("ps", ["-o", "stat=", "--ppid", String(pid)], { encoding: "utf8" }).stdout.split("\n").filter(Boolean);
    expect(children.length).toBeLessThanOrEqual(1);
  });

  it("refuses an argument with a newline before sending anything", async () => {
    helper = createCommandHelperRunner();
    await expect(helper.run("echo", ["a\nb"])).rejects.toThrow(/argument "a\\nb" must not contain a newline or NUL byte/);
    expect(helperPids()).toEqual([]);
    expect((await helper.run("echo", ["still works"])).stdout).toBe("still works\n");
  });

  it("answers the calls of a helper that died, and starts a new one for the next call", async () => {
    helper = createCommandHelperRunner();
    expect((await helper.run("true", [])).exitCode).toBe(0);
    const [pid] = helperPids();
    const inFlight = helper.run("sleep", ["0.5"]);
    process.kill(pid!, "SIGKILL");
    // Whether the helper had started it or not, the call is answered: by the command, or with why it could not run.
    const answer = await inFlight.then(
      (r) => r,
      (e: Error) => e.message,
    );
    expect([{ exitCode: 0, stdout: "", stderr: "" }, "the command helper exited (SIGKILL)"]).toContainEqual(answer);
    await expect.poll(() => helperPids()).toEqual([]);
    expect((await helper.run("echo", ["again"])).stdout).toBe("again\n");
    expect(helperPids()).toHaveLength(1);
    expect(helperPids()[0]).not.toBe(pid);
  });

  it("leaves no files while it runs, removes its directory on close, and does not hold the process open", async () => {
    const before = helperDirs();
    helper = createCommandHelperRunner();
    for (let i = 0; i < 5; i += 1) await helper.run("sh", ["-c", "cat; echo err >&2"], { input: "x" });
    const dirs = helperDirs().filter((d) => !before.includes(d));
    expect(dirs).toHaveLength(1);
    expect(readdirSync(join(tmpdir(), dirs[0]!))).toEqual([]);
    await helper.close();
    expect(existsSync(join(tmpdir(), dirs[0]!))).toBe(false);
    expect(helperPids()).toEqual([]);

    // A process that used the helper and has nothing else to do exits at once; one that closes it first gets past
    // its `await close()` (the helper must hold the process open until then).
    const module = JSON.stringify(join(process.cwd(), "dist/src/runtime/exec/command-helper.js"));
    const child = `import { createCommandHelperRunner } from ${module};
      const r = createCommandHelperRunner(); console.log((await r.run("echo", ["done"])).stdout.trim());`;
    const t0 = Date.now();
    expect(execFileSync(process.execPath, ["--input-type=module", "-e", child], { encoding: "utf8", timeout: 10_000 }).trim()).toBe("done");
    expect(Date.now() - t0).toBeLessThan(5_000);
    const closing = `import { createCommandHelperRunner } from ${module};
      const r = createCommandHelperRunner(); await r.run("true", []); await r.close(); console.log("after close");`;
    expect(execFileSync(process.execPath, ["--input-type=module", "-e", closing], { encoding: "utf8", timeout: 10_000 }).trim()).toBe("after close");
  });
});
