import type { Argv } from "yargs";
import { readHostFacts } from "../../runtime/host/host-facts.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderRecord } from "../output.js";

export function registerNodeCommands(yargs: Argv<GlobalOptions>, ctx: CliContext): Argv<GlobalOptions> {
  return yargs.command("node", "this host", (y) =>
    y
      .command(
        "info",
        "node identity, host facts, hypervisors found and broken records",
        (c) => c,
        async (args) => {
          const { store } = await ctx.deps(args);
          const [node, facts, broken] = await Promise.all([store.node(), readHostFacts(store.dataRoot), store.brokenRecords()]);
          ctx.write(
            renderRecord(
              {
                nodeId: node.nodeId,
                dataRoot: store.dataRoot,
                hostname: facts.hostname,
                arch: facts.arch,
                kernel: facts.kernel,
                vcpus: facts.vcpus,
                memMib: facts.memMib,
                cgroupVersion: facts.cgroupVersion,
                dataRootFreeBytes: facts.dataRootFreeBytes,
                binaries: Object.fromEntries(facts.binaries.map((b) => [b.name, b.path ? { path: b.path, version: b.version } : null])),
                brokenRecords: broken,
              },
              args.output,
            ),
          );
        },
      )
      .demandCommand(1, "node: a subcommand is required (info)"),
  );
}
