// How the image builder runs external programs (apt-get, dpkg-deb, lz4, mmdebstrap, tar, mkfs.ext4): an argument
// array, never a shell string; a timeout; a non-zero exit is an error carrying the program's stderr.

import type { Readable } from "node:stream";
import { execa } from "execa";

export interface CommandOptions {
  /** The command is killed after this many milliseconds. */
  timeoutMs: number;
  /** Working directory. Default: the builder process's. */
  cwd?: string;
  /** Variables added to the builder's environment. */
  env?: Record<string, string>;
  /** Standard input: text, bytes or a stream (e.g. a byte range of a file). Default: none. */
  input?: string | Uint8Array | Readable;
  /** Standard output goes to this file instead of being returned. */
  stdoutFile?: string;
  /** Receives each stderr line as it arrives (progress of long commands). */
  onStderrLine?: (line: string) => void;
}

export interface CommandResult {
  stdout: string;
  stderr: string;
}

export type CommandRunner = (file: string, args: readonly string[], options: CommandOptions) => Promise<CommandResult>;

/** Error messages keep the end of stderr, where programs say what went wrong. */
const STDERR_TAIL_CHARS = 4000;

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly exitCode: number | undefined,
    readonly stderr: string,
    why: string,
  ) {
    super(`${command}: ${why}${stderr === "" ? "" : `: ${stderr.slice(-STDERR_TAIL_CHARS)}`}`);
    this.name = "CommandError";
  }
}

export function describeCommand(file: string, args: readonly string[]): string {
  return [file, ...args].join(" ");
}

export const execaCommandRunner: CommandRunner = async (file, args, options) => {
  const onLine = options.onStderrLine;
  const result = await execa(file, [...args], {
    timeout: options.timeoutMs,
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    ...(options.env === undefined ? {} : { env: options.env }),
    ...(options.input === undefined ? { stdin: "ignore" as const } : { input: options.input }),
    stdout: options.stdoutFile === undefined ? "pipe" : { file: options.stdoutFile },
    stderr:
      onLine === undefined
        ? "pipe"
        : [
            function* (line: unknown) {
              onLine(String(line));
              yield line;
            },
            "pipe",
          ],
    reject: false,
  });
  const stderr = typeof result.stderr === "string" ? result.stderr.trim() : "";
  const stdout = typeof result.stdout === "string" ? result.stdout : "";
  if (result.timedOut) {
    throw new CommandError(describeCommand(file, args), result.exitCode, stderr, `timed out after ${options.timeoutMs} ms`);
  }
  if (result.failed || result.exitCode !== 0) {
    const why =
      result.exitCode !== undefined ? `exit code ${result.exitCode}` : result.signal !== undefined ? `killed by ${result.signal}` : (result.shortMessage ?? "failed to run");
    throw new CommandError(describeCommand(file, args), result.exitCode, stderr, why);
  }
  return { stdout, stderr };
};
