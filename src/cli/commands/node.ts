import type { Argv } from "yargs";
import type { ReportedGarbageItem } from "../../api/convert/garbage.js";
import { failedPrecondition, invalid } from "../../core/errors.js";
import { withControlPlane, withControlPlaneOptions } from "../backend/choose-control-plane.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderList, renderRecord, type Column } from "../output.js";

const GARBAGE_COLUMNS: Column<ReportedGarbageItem>[] = [
  { header: "KIND", cell: (i) => i.kind },
  { header: "NAME", cell: (i) => i.name, maxWidth: 70 },
  { header: "OWNER", cell: (i) => [i.owner.tenantId, i.owner.poolId, i.owner.instanceId].filter((s) => s !== undefined && s !== "").join("/") || "-" },
  { header: "SIZE", cell: (i) => (i.sizeBytes > 0 ? mib(i.sizeBytes) : "-") },
  { header: "REMOVED", cell: (i) => (i.removed ? "yes" : i.error !== "" ? `NO: ${i.error}` : "no") },
];

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

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
      .command(
        "gc",
        "list what lost its owner (VMM processes, TAPs, cgroups, snapshots) and revisions beyond those kept; remove them with --apply",
        (c) =>
          c
            .option("apply", { type: "boolean", default: false, describe: "remove what is found (default: list only)" })
            .option("keep-revisions", {
              type: "number",
              default: 0,
              describe: "built revisions kept per pool beside the current one and those in use (0: the whole build history, 20)",
            }),
        async (args) => {
          const keep = args["keep-revisions"];
          if (!Number.isSafeInteger(keep) || keep < 0) {
            throw invalid([{ field: "keep-revisions", rule: "must be a whole number of at least 0 (0 keeps the whole build history)" }]);
          }
          const report = await withControlPlane(ctx, args, (cp) => cp.collectGarbage({ apply: args.apply, keepRevisions: keep }));
          if (args.output !== "table") ctx.write(renderRecord(report, args.output));
          else {
            ctx.write(renderList(report.items, GARBAGE_COLUMNS, "table"));
            const found = `${report.items.length} item${report.items.length === 1 ? "" : "s"}`;
            ctx.write(report.applied ? `${found}; ${report.items.filter((i) => i.removed).length} removed, ${mib(report.reclaimedBytes)} freed\n` : `${found}; nothing removed (dry run: add --apply)\n`);
          }
          const failed = report.items.filter((i) => report.applied && !i.removed);
          if (failed.length > 0) throw failedPrecondition(`${failed.length} item${failed.length === 1 ? "" : "s"} could not be removed: ${failed.map((i) => `${i.kind} ${i.name}: ${i.error}`).join("; ")}`);
        },
      )
      .demandCommand(1, "node: a subcommand is required (info, gc)"),
  );
}
