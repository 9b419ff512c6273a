// A HostCommandRunner that starts its programs from a small helper shell instead of from the agent itself. Node
// starts a child with fork(), which copies the page tables of the whole agent: ~6 ms of blocked main thread per
// command at ~130 MB here, on every start, wake and idle sample (one `ip` per instance). The helper is a `sh` of a
// few MB, started once; it forks a subshell per command, so commands run side by side.
//
// Protocol, one line per field on the helper's stdin: request id, input file (`/dev/null` for none), timeout in
// seconds, argument count, then the arguments. Answers on its stdout: `<id> <exit status>` once the command ended.
// The command's stdout and stderr go to files named after the id in the helper's private directory, which the
// runner reads and removes. coreutils `timeout` enforces the limit inside the helper (status 124 when it struck, or
// 137 when the program needed a KILL; 125-127 when it could not be run), so no pid crosses the pipe and nothing is
// killed from outside. On EOF (the agent closed it, or went away) the helper waits for its commands and removes its
// directory.

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MvmError } from "../../core/errors.js";
import { DEFAULT_HOST_COMMAND_TIMEOUT_MS, hostCommandError, type HostCommandResult, type HostCommandRunner } from "./host-command.js";

const COMMAND_HELPER_SCRIPT = [
  'dir=$1',
  "while IFS= read -r id; do",
  "  IFS= read -r input || break",
  "  IFS= read -r seconds || break",
  "  IFS= read -r count || break",
  '  case "$id$count" in ""|*[!0-9]*) exit 2;; esac',
  "  set --",
  '  while [ "$count" -gt 0 ]; do',
  '    IFS= read -r arg || exit 2',
  '    set -- "$@" "$arg"',
  "    count=$((count - 1))",
  "  done",
  "  (",
  '    timeout -k 1 "$seconds" "$@" < "$input" > "$dir/$id.out" 2> "$dir/$id.err"',
  '    echo "$id $?"',
  "  ) &",
  "done",
  "wait",
  'rm -rf -- "$dir"',
].join("\n");

/** `timeout`'s own statuses: the limit struck (124, or 137 after the KILL), or it could not run the program. */
const TIMED_OUT = 124;
const KILLED = 137;
const COULD_NOT_RUN = new Set([125, 126, 127]);

interface Pending {
  file: string;
  args: readonly string[];
  timeoutMs: number;
  startedMs: number;
  resolve: (result: HostCommandResult) => void;
  reject: (error: Error) => void;
}

interface Helper {
  child: ChildProcess;
  dir: string;
  pending: Map<number, Pending>;
  /** Answers whose output files are being read. */
  reading: number;
}

export interface CommandHelperRunner {
  run: HostCommandRunner;
  /**
   * Ends the helper once the commands in flight have answered; it removes its directory. A later call starts a new
   * helper.
   */
  close(): Promise<void>;
}

function checkLine(value: string, what: string): void {
  if (value.includes("\n") || value.includes("\0")) {
    throw new MvmError("invalid", `${what} ${JSON.stringify(value)} must not contain a newline or NUL byte`);
  }
}

export function createCommandHelperRunner(options: { shell?: string } = {}): CommandHelperRunner {
  const shell = options.shell ?? "/bin/sh";
  let helper: Helper | null = null;
  let nextId = 1;

  const settleAll = (h: Helper, error: Error) => {
    for (const p of h.pending.values()) p.reject(error);
    h.pending.clear();
  };

  const hold = (h: Helper) => {
    // Referenced only while commands run: an idle helper must not keep the agent's process alive.
    if (h.pending.size > 0) {
      h.child.ref();
      (h.child.stdout as unknown as { ref(): void }).ref();
    } else {
      h.child.unref();
      (h.child.stdout as unknown as { unref(): void }).unref();
    }
  };

  const finish = async (h: Helper, id: number, status: number) => {
    const p = h.pending.get(id);
    if (p === undefined) return;
    h.pending.delete(id);
    hold(h);
    h.reading += 1;
    const base = join(h.dir, String(id));
    // Read, then removed, then answered: a caller that goes on finds nothing of the command left.
    const output = await Promise.all([readFile(`${base}.out`, "utf8"), readFile(`${base}.err`, "utf8")]).catch((e: Error) => e);
    await Promise.all([rm(`${base}.out`, { force: true }), rm(`${base}.err`, { force: true }), rm(`${base}.in`, { force: true })]);
    h.reading -= 1;
    if (output instanceof Error) return p.reject(output);
    const [stdout, stderr] = output;
    const timedOut = status === TIMED_OUT || (status === KILLED && Date.now() - p.startedMs >= p.timeoutMs);
    if (timedOut) p.reject(hostCommandError(p.file, p.args, `timed out after ${p.timeoutMs} ms`, stderr));
    else if (COULD_NOT_RUN.has(status) && stderr.startsWith("timeout: ")) p.reject(hostCommandError(p.file, p.args, "could not be run", stderr));
    else p.resolve({ exitCode: status, stdout, stderr });
  };

  const start = (): Helper => {
    const dir = mkdtempSync(join(tmpdir(), "mvm-commands-"));
    const child = spawn(shell, ["-c", COMMAND_HELPER_SCRIPT, "mvm-command-helper", dir], { stdio: ["pipe", "pipe", "ignore"] });
    const h: Helper = { child, dir, pending: new Map(), reading: 0 };
    let buffered = "";
    child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
      buffered += chunk;
      for (let end = buffered.indexOf("\n"); end >= 0; end = buffered.indexOf("\n")) {
        const [id, status] = buffered.slice(0, end).split(" ");
        buffered = buffered.slice(end + 1);
        void finish(h, Number(id), Number(status));
      }
    });
    // A write to a helper that has died must not become an unhandled error; the exit below answers the callers.
    child.stdin!.on("error", () => undefined);
    const gone = (why: string) => {
      if (helper === h) helper = null;
      settleAll(h, new MvmError("unavailable", `the command helper ${why}`));
      rmSync(dir, { recursive: true, force: true });
    };
    child.once("error", (e) => gone(`could not be started: ${e.message}`));
    // New commands go to a new helper at once; those sent to this one are answered when its output ends.
    child.once("exit", () => {
      if (helper === h) helper = null;
    });
    // After its output has ended, so every answer it wrote has been taken.
    child.once("close", (code, signal) => gone(`exited (${signal ?? `code ${code}`})`));
    hold(h);
    return h;
  };

  const run: HostCommandRunner = async (file, args, runOptions = {}) => {
    checkLine(file, "program");
    for (const arg of args) checkLine(arg, "argument");
    const timeoutMs = runOptions.timeoutMs ?? DEFAULT_HOST_COMMAND_TIMEOUT_MS;
    if (!(timeoutMs > 0)) throw new MvmError("invalid", `timeout ${timeoutMs} ms must be positive`);
    helper ??= start();
    const h = helper;
    const id = nextId++;
    let input = "/dev/null";
    if (runOptions.input !== undefined) {
      input = join(h.dir, `${id}.in`);
      await writeFile(input, runOptions.input, { mode: 0o600 });
      if (helper !== h) throw new MvmError("unavailable", `${file}: the command helper exited before the command was sent`);
    }
    // Whole milliseconds, at least one: `timeout 0` would mean no limit at all.
    const seconds = (Math.max(1, Math.ceil(timeoutMs)) / 1000).toFixed(3);
    return new Promise<HostCommandResult>((resolve, reject) => {
      h.pending.set(id, { file, args, timeoutMs, startedMs: Date.now(), resolve, reject });
      hold(h);
      h.child.stdin!.write(`${id}\n${input}\n${seconds}\n${args.length + 1}\n${[file, ...args].join("\n")}\n`);
    });
  };

  return {
    run,
    async close() {
      if (helper === null) return;
      const h = helper;
      helper = null;
      // Its directory goes when it exits, so the answers still being read must be in first.
      while (h.pending.size > 0 || h.reading > 0) await new Promise((resolve) => setTimeout(resolve, 5));
      const closed = new Promise((resolve) => h.child.once("close", resolve));
      // Referenced while it winds down: the caller's process must not end before its `await close()` returns.
      h.child.ref();
      (h.child.stdout as unknown as { ref(): void }).ref();
      h.child.stdin!.end();
      await closed;
    },
  };
}
