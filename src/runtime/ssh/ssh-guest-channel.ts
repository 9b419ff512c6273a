// Runs commands in a guest over SSH with the tenant's key, from inside the data plane's network namespace when
// there is one (guest addresses are only routable there).

import { execa } from "execa";
import { GUEST_HOOK_PATHS, type ExecResult, type GuestChannel, type GuestTarget } from "../../core/data-plane-ports.js";

/** Quotes one argument for the remote POSIX shell that sshd hands the command line to. */
export function shellQuote(arg: string): string {
  if (/^[A-Za-z0-9_\-./=:,@+%]+$/.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

export function sshArgv(target: GuestTarget, remote: readonly string[], options: { interactive?: boolean } = {}): string[] {
  const ssh = [
    "ssh",
    "-i",
    target.privateKeyPath,
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ConnectTimeout=5",
    "-o",
    options.interactive ? "BatchMode=no" : "BatchMode=yes",
    ...(options.interactive ? ["-t"] : []),
    `root@${target.guestIp}`,
    ...(remote.length > 0 ? ["--", remote.map(shellQuote).join(" ")] : []),
  ];
  return target.netns ? ["ip", "netns", "exec", target.netns, ...ssh] : ssh;
}

export function createSshGuestChannel(): GuestChannel {
  const channel: GuestChannel = {
    runHook: (target, hook, args, options) => channel.exec(target, [GUEST_HOOK_PATHS[hook], ...args], options),
    async exec(target, argv, options): Promise<ExecResult> {
      const [file, ...args] = sshArgv(target, argv);
      const result = await execa(file!, args, {
        timeout: options.timeoutMs,
        reject: false,
        input: options.input ?? "",
        stripFinalNewline: false,
      });
      if (result.timedOut) throw new Error(`command in guest ${target.guestIp} timed out after ${options.timeoutMs} ms`);
      // ssh itself exits 255 when it cannot connect or authenticate; anything else is the remote command's status.
      if (result.exitCode === 255) {
        throw new Error(`ssh to guest ${target.guestIp} failed: ${String(result.stderr).trim() || "exit code 255"}`);
      }
      return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
    },
  };
  return channel;
}
