// The one place that decides who acts for a command (SPEC §8: the CLI goes through the agent when one runs):
//   --local                  → this process, even when an agent runs;
//   --node HOST:PORT         → that agent over mTLS (--ca, --cert, --key or $MVM_CA, $MVM_CERT, $MVM_KEY);
//   an agent answers on <data root>/agent.sock → that agent, so its watchers and metrics see the change;
//   otherwise                → this process (the use cases on the data root, under the same cross-process locks).

import type { Argv } from "yargs";
import { invalid, isMvmError } from "../../core/errors.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { connectToAgent, withAgentConnectionOptions, type AgentConnectionFlags } from "../remote/agent-connection.js";
import { agentControlPlane } from "./agent-control-plane.js";
import type { ControlPlaneClient } from "./control-plane-client.js";
import { localControlPlane } from "./local-control-plane.js";

export interface ControlPlaneFlags extends AgentConnectionFlags {
  local?: boolean;
}

/** Adds --node, --ca, --cert, --key and --local; on a parent command they reach every subcommand. */
export function withControlPlaneOptions<T>(y: Argv<T>): Argv<T & ControlPlaneFlags> {
  return withAgentConnectionOptions(y).option("local", {
    type: "boolean",
    describe: "act in this process even when a local agent runs (default: through the agent on the data root's socket when one answers)",
  }) as unknown as Argv<T & ControlPlaneFlags>;
}

function namesAgent(flags: ControlPlaneFlags): boolean {
  return [flags.node, flags.ca, flags.cert, flags.key].some((v) => v !== undefined);
}

export async function openControlPlane(ctx: CliContext, args: GlobalOptions & ControlPlaneFlags): Promise<ControlPlaneClient> {
  const inProcess = () => localControlPlane(() => ctx.deps(args));
  if (args.local === true) {
    if (namesAgent(args)) throw invalid([{ field: "--local", rule: "must not be given with --node, --ca, --cert or --key" }]);
    return inProcess();
  }
  if (namesAgent(args)) return agentControlPlane(await connectToAgent(args, ctx.env));
  try {
    return agentControlPlane(await connectToAgent(args, ctx.env));
  } catch (e) {
    // Nothing answers on the socket: no agent runs here, and this process acts itself.
    if (isMvmError(e) && e.kind === "unavailable") return inProcess();
    throw e;
  }
}

/** Runs `work` against the chosen control plane and releases its connection afterwards. */
export async function withControlPlane<T>(
  ctx: CliContext,
  args: GlobalOptions & ControlPlaneFlags,
  work: (controlPlane: ControlPlaneClient) => Promise<T>,
): Promise<T> {
  const controlPlane = await openControlPlane(ctx, args);
  try {
    return await work(controlPlane);
  } finally {
    controlPlane.close();
  }
}
