// Host programs (ip, nft, sysctl) run by the data-plane adapters: an argument array, never a shell string; a timeout
// on every call; the exit status always looked at. The raw runner reports a non-zero exit instead of throwing,
// because some callers expect one ("device does not exist" is an answer, not a failure); `runChecked` is for
// everything else and throws with the program's stderr in the message.

import { execa } from "execa";
import { MvmError } from "../../core/errors.js";

export interface HostCommandOptions {
  /** The program is killed after this many milliseconds. Default 15000. */
  timeoutMs?: number;
  /** Text written to the program's standard input. Default: none. */
  input?: string;
}

export interface HostCommandResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion. Rejects only when it could not run at all or ran past its timeout. */
export type HostCommandRunner = (file: string, args: readonly string[], options?: HostCommandOptions) => Promise<HostCommandResult>;

export const DEFAULT_HOST_COMMAND_TIMEOUT_MS = 15_000;

/** Programs say what went wrong at the end of stderr; the rest would only bloat the message. */
const STDERR_TAIL_CHARS = 2000;

export function describeHostCommand(file: string, args: readonly string[]): string {
  return [file, ...args].join(" ");
}

export function hostCommandError(file: string, args: readonly string[], why: string, stderr: string): MvmError {
  const tail = stderr.trim().slice(-STDERR_TAIL_CHARS);
  return new MvmError("unavailable", `${describeHostCommand(file, args)}: ${why}${tail === "" ? "" : `: ${tail}`}`);
}

export const execaHostCommand: HostCommandRunner = async (file, args, options = {}) => {
  const timeoutMs = options.timeoutMs ?? DEFAULT_HOST_COMMAND_TIMEOUT_MS;
  const result = await execa(file, [...args], {
    timeout: timeoutMs,
    reject: false,
    ...(options.input === undefined ? { stdin: "ignore" as const } : { input: options.input }),
    stripFinalNewline: false,
  });
  const stdout = typeof result.stdout === "string" ? result.stdout : "";
  const stderr = typeof result.stderr === "string" ? result.stderr : "";
  if (result.timedOut) throw hostCommandError(file, args, `timed out after ${timeoutMs} ms`, stderr);
  if (result.exitCode === undefined) {
    const why = result.signal !== undefined ? `killed by ${result.signal}` : (result.shortMessage ?? "could not be run");
    throw hostCommandError(file, args, why, stderr);
  }
  return { exitCode: result.exitCode, stdout, stderr };
};

/** Runs a program and returns its stdout; any non-zero exit is an error naming the command and its stderr. */
export async function runChecked(
  run: HostCommandRunner,
  file: string,
  args: readonly string[],
  options?: HostCommandOptions,
): Promise<string> {
  const result = await run(file, args, options);
  if (result.exitCode !== 0) throw hostCommandError(file, args, `exit code ${result.exitCode}`, result.stderr);
  return result.stdout;
}
