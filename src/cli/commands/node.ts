import type { Argv } from "yargs";
import { withControlPlane, withControlPlaneOptions } from "../backend/choose-control-plane.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderRecord } from "../output.js";

export function registerNodeCommands(yargs: Argv<GlobalOptions>, ctx: CliContext): Argv<GlobalOptions> {
  return yargs.command("node", "this host", (y) =>
    withControlPlaneOptions(y)
      .command(
        "info",
        "node identity, host facts, hypervisors found and broken records",
        (c) => c,
        async (args) => {
          const info = await withControlPlane(ctx, args, (cp) => cp.nodeInfo());
          ctx.write(renderRecord(info, args.output));
        },
      )
      .demandCommand(1, "node: a subcommand is required (info)"),
  );
}
