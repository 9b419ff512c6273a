// Instance commands that act on the microVM itself: start, stop, warm, resume, sleep, wake, exec, ssh, logs, stats.

import { spawn } from "node:child_process";
import type { Argv } from "yargs";
import { invalid } from "../../core/errors.js";
import { parseInstancePath } from "../../core/ids.js";
import { refreshInstanceHealth } from "../../core/use-cases/lifecycle.js";
import { COMPRESSIONS, type Compression } from "../../core/model.js";
import { sshArgv } from "../../runtime/ssh/ssh-guest-channel.js";
import { withControlPlane, type ControlPlaneFlags } from "../backend/choose-control-plane.js";
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

export function registerInstanceRuntimeCommands<T extends GlobalOptions & ControlPlaneFlags>(y: Argv<T>, ctx: CliContext): Argv<T> {
  return y
    .command(
      "start [path]",
      "boot the instance's microVM (cold start) and wait until the guest is ready",
      (c) => requiredPositional(c, "path", INSTANCE_PATH),
      async (args) => {
        const key = parseInstancePath(args.path);
        const instance = await withControlPlane(ctx, args, (cp) => cp.startInstance(key));
        ctx.write(renderRecord(instance, args.output));
      },
    )
    .command(
      "stop [path]",
      "shut the guest down (graceful, then kill after a timeout) and release its TAP and cgroup",
      (c) => requiredPositional(c, "path", INSTANCE_PATH),
      async (args) => {
        const key = parseInstancePath(args.path);
        const instance = await withControlPlane(ctx, args, (cp) => cp.stopInstance(key));
        ctx.write(renderRecord(instance, args.output));
      },
    )
    .command(
      "warm [path]",
      "pause the guest's vCPUs; its memory stays resident (resume continues it)",
      (c) => requiredPositional(c, "path", INSTANCE_PATH),
      async (args) => {
        const key = parseInstancePath(args.path);
        const instance = await withControlPlane(ctx, args, (cp) => cp.warmInstance(key));
        ctx.write(renderRecord(instance, args.output));
      },
    )
    .command(
      "resume [path]",
      "continue a warm instance",
      (c) => requiredPositional(c, "path", INSTANCE_PATH),
      async (args) => {
        const key = parseInstancePath(args.path);
        const instance = await withControlPlane(ctx, args, (cp) => cp.resumeInstance(key));
        ctx.write(renderRecord(instance, args.output));
      },
    )
    .command(
      "sleep [path]",
      "snapshot a running or warm instance to disk and stop its VMM (TAP, IP and cgroup stay reserved)",
      (c) =>
        requiredPositional(c, "path", INSTANCE_PATH).option("compression", {
          type: "string",
          describe: "snapshot compression: none, lz4 or zstd (default: the pool's snapshot_compression)",
        }),
      async (args) => {
        const key = parseInstancePath(args.path);
        const compression = args.compression;
        if (compression !== undefined && !(COMPRESSIONS as readonly string[]).includes(compression)) {
          throw invalid([{ field: "compression", rule: "must be one of none, lz4, zstd" }]);
        }
        const options = compression === undefined ? {} : { compression: compression as Compression };
        const instance = await withControlPlane(ctx, args, (cp) => cp.sleepInstance(key, options));
        ctx.write(renderRecord(instance, args.output));
      },
    )
    .command(
      "wake [path]",
      "restore a sleeping instance from its snapshot and wait until the guest answers (one left running with Ready false: ask its guest again)",
      (c) => requiredPositional(c, "path", INSTANCE_PATH),
      async (args) => {
        const key = parseInstancePath(args.path);
        const instance = await withControlPlane(ctx, args, (cp) => cp.wakeInstance(key));
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
        const key = parseInstancePath(args.path);
        const result = await withControlPlane(ctx, args, (cp) => cp.execInstance(key, command, { timeoutMs: args["timeout-ms"] }));
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
        // ssh runs on this host with the tenant key of this data root: there is nothing for an agent to do.
        if (args.node !== undefined) throw invalid([{ field: "--node", rule: "does not apply to ssh, which runs ssh on this host (use instance exec through an agent)" }]);
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
        const key = parseInstancePath(args.path);
        const abort = new AbortController();
        if (args.follow) process.once("SIGINT", () => abort.abort());
        await withControlPlane(ctx, args, (cp) => cp.instanceLogs(key, { follow: args.follow, signal: abort.signal }, ctx.write, ctx.warn));
      },
    )
    .command(
      "stats [path]",
      "the instance's record with live CPU, memory and network counters",
      (c) => requiredPositional(c, "path", INSTANCE_PATH),
      async (args) => {
        const key = parseInstancePath(args.path);
        const stats = await withControlPlane(ctx, args, (cp) => cp.instanceStats(key));
        ctx.write(renderRecord(stats, args.output));
      },
    );
}
