// Instance commands that act on the microVM itself: start, stop, exec, ssh, logs, stats.

import { spawn } from "node:child_process";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import type { Argv } from "yargs";
import { invalid } from "../../core/errors.js";
import { parseInstancePath } from "../../core/ids.js";
import {
  execInInstance,
  instanceLogPath,
  instanceStats,
  refreshInstanceHealth,
  startInstance,
  stopInstance,
} from "../../core/use-cases/lifecycle.js";
import { sshArgv } from "../../runtime/ssh/ssh-guest-channel.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderRecord } from "../output.js";
import { requiredPositional } from "./flags.js";

const INSTANCE_PATH = "<tenant>/<pool>/<instance>";

function remoteCommand(args: Record<string, unknown>): string[] {
  const rest = args["--"];
  const command = Array.isArray(rest) ? rest.map(String) : [];
  if (command.length === 0) throw invalid([{ field: "command", rule: "is required after -- (e.g. mvm instance exec t/p/i -- uname -a)" }]);
  return command;
}

async function followFile(path: string, write: (t: string) => void, signal: AbortSignal): Promise<void> {
  let offset = 0;
  while (!signal.aborted) {
    const size = await stat(path).then((s) => s.size, () => 0);
    if (size > offset) {
      await new Promise<void>((resolve, reject) => {
        createReadStream(path, { start: offset, end: size - 1 })
          .on("data", (chunk) => write(chunk.toString()))
          .on("end", resolve)
          .on("error", reject);
      });
      offset = size;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

export function registerInstanceRuntimeCommands<T extends GlobalOptions>(y: Argv<T>, ctx: CliContext): Argv<T> {
  return y
    .command(
      "start [path]",
      "boot the instance's microVM (cold start) and wait until the guest is ready",
      (c) => requiredPositional(c, "path", INSTANCE_PATH),
      async (args) => {
        const instance = await startInstance(await ctx.deps(args), parseInstancePath(args.path));
        ctx.write(renderRecord(instance, args.output));
      },
    )
    .command(
      "stop [path]",
      "shut the guest down (graceful, then kill after a timeout) and release its TAP and cgroup",
      (c) => requiredPositional(c, "path", INSTANCE_PATH),
      async (args) => {
        const instance = await stopInstance(await ctx.deps(args), parseInstancePath(args.path));
        ctx.write(renderRecord(instance, args.output));
      },
    )
    .command(
      "exec [path]",
      "run a command in the guest over SSH: mvm instance exec <path> -- <command> [args…]; exits with its status",
      (c) =>
        requiredPositional(c, "path", INSTANCE_PATH).option("timeout-ms", {
          type: "number",
          default: 60_000,
          describe: "give up after this many ms",
        }),
      async (args) => {
        const command = remoteCommand(args);
        const result = await execInInstance(await ctx.deps(args), parseInstancePath(args.path), command, {
          timeoutMs: args["timeout-ms"],
        });
        ctx.write(result.stdout);
        if (result.stderr) ctx.warn(result.stderr);
        process.exitCode = result.exitCode;
      },
    )
    .command(
      "ssh [path]",
      "open an interactive shell in the guest",
      (c) => requiredPositional(c, "path", INSTANCE_PATH),
      async (args) => {
        const deps = await ctx.deps(args);
        const key = parseInstancePath(args.path);
        const instance = await refreshInstanceHealth(deps, key);
        if (instance.status !== "running") throw invalid([{ field: "path", rule: `instance is ${instance.status}: ssh needs a running instance` }]);
        const argv = sshArgv(
          {
            guestIp: instance.net.guestIp,
            netns: instance.vmm?.netns ?? deps.network.netns,
            privateKeyPath: deps.paths.tenantPrivateKey(key.tenantId),
          },
          [],
          { interactive: true },
        );
        const child = spawn(argv[0]!, argv.slice(1), { stdio: "inherit" });
        process.exitCode = await new Promise<number>((resolve) => child.on("exit", (code) => resolve(code ?? 1)));
      },
    )
    .command(
      "logs [path]",
      "print the guest's serial console",
      (c) => requiredPositional(c, "path", INSTANCE_PATH).option("follow", { alias: "f", type: "boolean", default: false }),
      async (args) => {
        const path = await instanceLogPath(await ctx.deps(args), parseInstancePath(args.path));
        if (args.follow) {
          const abort = new AbortController();
          process.once("SIGINT", () => abort.abort());
          await followFile(path, ctx.write, abort.signal);
          return;
        }
        const exists = await stat(path).then(() => true, () => false);
        if (!exists) {
          ctx.warn(`no console log yet at ${path}\n`);
          return;
        }
        await new Promise<void>((resolve, reject) =>
          createReadStream(path).on("data", (d) => ctx.write(d.toString())).on("end", resolve).on("error", reject),
        );
      },
    )
    .command(
      "stats [path]",
      "the instance's record with live CPU, memory and network counters",
      (c) => requiredPositional(c, "path", INSTANCE_PATH),
      async (args) => {
        const deps = await ctx.deps(args);
        const key = parseInstancePath(args.path);
        await refreshInstanceHealth(deps, key);
        const stats = await instanceStats(deps, key);
        ctx.write(
          renderRecord(
            {
              instance: `${key.tenantId}/${key.poolId}/${key.instanceId}`,
              status: stats.instance.status,
              pid: stats.instance.vmm?.pid ?? null,
              cpuUsageUs: stats.cgroup?.cpuUsageUs ?? null,
              memoryBytes: stats.cgroup?.memoryBytes ?? null,
              memoryLimitBytes: stats.cgroupLimits?.memoryBytes ?? null,
              tapRxBytes: stats.tap?.rxBytes ?? null,
              tapTxBytes: stats.tap?.txBytes ?? null,
              idle: stats.instance.idle,
            },
            args.output,
          ),
        );
      },
    );
}
