// The `mvm` command: wires the CLI adapters to the core use cases (this folder is the CLI's composition root).

import { operationMetrics } from "../agent/lifecycle-metrics.js";
import yargs, { type Argv } from "yargs";
import { openNodeRuntime } from "../agent/node-runtime.js";
import type { NodeRuntime } from "../agent/node-runtime-types.js";
import { isMvmError } from "../core/errors.js";
import { registerAuditCommands } from "./commands/audit.js";
import { registerAgentReconcileCommand } from "./commands/agent-reconcile.js";
import { registerAgentServeCommand } from "./commands/agent-serve.js";
import { registerCertsCommands } from "./commands/certs.js";
import { registerCoordinatorCommands } from "./commands/coordinator.js";
import { registerDesiredCommands } from "./commands/desired.js";
import { registerDevCommand } from "./commands/dev.js";
import { registerHostCommands } from "./commands/host.js";
import { registerInstanceCommands } from "./commands/instance.js";
import { registerNetCommands } from "./commands/net.js";
import { registerNodeCommands } from "./commands/node.js";
import { registerPoolCommands } from "./commands/pool.js";
import { registerTenantCommands } from "./commands/tenant.js";
import type { CliContext, GlobalOptions } from "./context.js";
import { EXIT_CODES } from "./exit-codes.js";
import { parseOutputFormat } from "./output.js";

/** A mistake in the command line itself (unknown command or flag, missing argument), reported like bad input. */
class UsageError extends Error {}

export interface CliIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  env: NodeJS.ProcessEnv;
}

function createContext(io: CliIo): CliContext {
  let opened: Promise<NodeRuntime> | undefined;
  return {
    deps(options: GlobalOptions) {
      opened ??= openNodeRuntime({
        dataDir: options.dataDir,
        env: io.env,
        netns: options.netns,
        actor: { kind: "local", id: `local:uid=${process.getuid?.() ?? "unknown"}` },
        onBrokenRecord: (path, reason) => io.stderr(`mvm: warning: corrupt record moved aside to ${path}: ${reason}\n`),
      });
      return opened;
    },
    write: io.stdout,
    warn: io.stderr,
    env: io.env,
  };
}

export function buildParser(argv: string[], ctx: CliContext, io: CliIo): Argv<GlobalOptions> {
  let parser = yargs(argv)
    .scriptName("mvm")
    .usage("mvm: multi-tenant microVM fleet manager\n\nUsage: $0 <command> [options]")
    .option("data-dir", { type: "string", describe: "data root (default: $MVM_HOME, else /var/lib/mvm as root)" })
    .option("output", {
      alias: "o",
      type: "string",
      default: "table",
      describe: "output format: table, json or yaml",
    })
    .option("debug", { type: "boolean", default: false, describe: "print stack traces on errors" })
    .option("netns", { type: "string", describe: "network namespace of the data plane (default: $MVM_NETNS, else none)" })
    .parserConfiguration({ "populate--": true })
    // Checked before any handler runs, so a bad --output never follows a side effect.
    .middleware((args) => {
      args.output = parseOutputFormat(args.output);
    }, true)
    .strict()
    .recommendCommands()
    .help()
    .version(false)
    .wrap(Math.min(120, process.stdout.columns ?? 100))
    .fail((message, error) => {
      throw error ?? new UsageError(message);
    }) as unknown as Argv<GlobalOptions>;
  parser = registerTenantCommands(parser, ctx);
  parser = registerPoolCommands(parser, ctx);
  parser = registerInstanceCommands(parser, ctx);
  parser = registerNodeCommands(parser, ctx);
  parser = registerDesiredCommands(parser, ctx);
  parser = registerAuditCommands(parser, ctx);
  parser = registerHostCommands(parser, ctx);
  parser = registerDevCommand(parser, ctx);
  parser = registerNetCommands(parser, ctx);
  parser = registerCoordinatorCommands(parser, ctx);
  parser = parser.command("agent", "the node agent: serve, reconcile, certificates", (y) =>
    registerAgentServeCommand(registerAgentReconcileCommand(registerCertsCommands(y, ctx), ctx), ctx, (o) =>
      openNodeRuntime({
        dataDir: o.dataDir,
        env: io.env,
        netns: o.netns,
        actor: { kind: "system", id: "system:agent" },
        events: o.watchHub,
        operations: operationMetrics(o.metrics, o.watchHub),
        onAuditEntry: (e) => {
          o.metrics.auditEntries.inc({ action: e.action, outcome: e.outcome });
          if (e.action === "quota_reject") o.metrics.quotaRejections.inc({ tenant: e.tenantId, limit: e.reason.match(/quota (\w+)/)?.[1] ?? "unknown" });
        },
      }),
    ).demandCommand(1, "agent: a subcommand is required (serve, reconcile, certs)"),
  );
  return parser.demandCommand(1, "a command is required; see mvm --help");
}

export function describeError(error: unknown): { line: string; exitCode: number } {
  if (isMvmError(error)) return { line: `mvm: ${error.message}`, exitCode: EXIT_CODES[error.kind] };
  if (error instanceof UsageError) return { line: `mvm: ${error.message}`, exitCode: EXIT_CODES.usage };
  const message = error instanceof Error ? error.message : String(error);
  return { line: `mvm: internal error: ${message}`, exitCode: EXIT_CODES.internal };
}

export async function runCli(argv: string[], io: CliIo): Promise<number> {
  const ctx = createContext(io);
  const debug = argv.includes("--debug");
  try {
    await buildParser(argv, ctx, io).parseAsync();
    return 0;
  } catch (error) {
    const { line, exitCode } = describeError(error);
    io.stderr(`${line}\n`);
    if (debug && error instanceof Error && error.stack) io.stderr(`${error.stack}\n`);
    return exitCode;
  }
}
