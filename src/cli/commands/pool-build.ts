import type { Argv } from "yargs";
import type { BuildProgressEvent } from "../../core/data-plane-ports.js";
import { parsePoolPath } from "../../core/ids.js";
import type { BuildRevision } from "../../core/model.js";
import { withControlPlane, type ControlPlaneFlags } from "../backend/choose-control-plane.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderList, renderRecord, type Column } from "../output.js";
import { requiredPositional } from "./flags.js";

const BUILD_COLUMNS: Column<BuildRevision>[] = [
  { header: "REVISION", cell: (b) => b.revision },
  { header: "IMAGE", cell: (b) => (b.image.kind === "debian" ? `debian:${b.image.suite}` : `nix:${b.image.flakeRef}#${b.image.profile}`) },
  { header: "BUILDER", cell: (b) => b.builder },
  { header: "BUILT", cell: (b) => b.builtAt },
  { header: "SECONDS", cell: (b) => (b.durationMs / 1000).toFixed(1) },
];

/** One line per phase change; on a TTY the percentage updates in place. */
function progressPrinter(warn: (t: string) => void, tty: boolean): (e: BuildProgressEvent) => void {
  let lastPhase = "";
  return (e) => {
    const line = `[${String(Math.round(e.percent)).padStart(3)}%] ${e.phase}: ${e.message}`;
    if (tty) warn(`\r\x1b[2K${line}${e.percent >= 100 ? "\n" : ""}`);
    else if (e.phase !== lastPhase || e.percent >= 100) warn(`${line}\n`);
    lastPhase = e.phase;
  };
}

export function registerPoolBuildCommands<T extends GlobalOptions & ControlPlaneFlags>(y: Argv<T>, ctx: CliContext): Argv<T> {
  return y
    .command(
      "build [path]",
      "build the pool's image into a new revision and make it current (instances adopt it at their next cold start)",
      (c) => requiredPositional(c, "path", "<tenant>/<pool>"),
      async (args) => {
        const key = parsePoolPath(args.path);
        const build = await withControlPlane(ctx, args, (cp) => cp.buildPool(key, progressPrinter(ctx.warn, Boolean(process.stderr.isTTY))));
        ctx.write(renderRecord(build, args.output));
      },
    )
    .command(
      "builds [path]",
      "the pool's build history (newest last, the last 20 kept)",
      (c) => requiredPositional(c, "path", "<tenant>/<pool>"),
      async (args) => {
        const key = parsePoolPath(args.path);
        const builds = await withControlPlane(ctx, args, (cp) => cp.listBuilds(key));
        ctx.write(renderList(builds, BUILD_COLUMNS, args.output));
      },
    )
    .command(
      "rollback [path]",
      "make an earlier built revision current again",
      (c) =>
        requiredPositional(c, "path", "<tenant>/<pool>").option("revision", {
          type: "string",
          demandOption: true,
          describe: "revision ID, or an unambiguous prefix of one (see mvm pool builds)",
        }),
      async (args) => {
        const key = parsePoolPath(args.path);
        const pool = await withControlPlane(ctx, args, (cp) => cp.rollbackPool(key, args.revision));
        ctx.write(renderRecord(pool, args.output));
      },
    );
}
