import type { Argv } from "yargs";
import { failedPrecondition, invalid } from "../../core/errors.js";
import { idViolations } from "../../core/ids.js";
import { withControlPlane, withControlPlaneOptions } from "../backend/choose-control-plane.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderList, type Column } from "../output.js";

interface CheckRow {
  tenant: string;
  check: string;
  ok: boolean;
  detail: string;
}

const COLUMNS: Column<CheckRow>[] = [
  { header: "TENANT", cell: (r) => r.tenant },
  { header: "CHECK", cell: (r) => r.check },
  { header: "OK", cell: (r) => (r.ok ? "yes" : "NO") },
  { header: "DETAIL", cell: (r) => r.detail, maxWidth: 70 },
];

export function registerNetCommands(yargs: Argv<GlobalOptions>, ctx: CliContext): Argv<GlobalOptions> {
  return yargs.command("net", "tenant networks", (y) =>
    withControlPlaneOptions(y)
      .command(
        "verify [tenant]",
        "check each tenant's bridge, gateway, NAT, forward, isolation and anti-spoofing rules and TAPs",
        (c) =>
          c
            .positional("tenant", { type: "string", describe: "only this tenant" })
            .option("fix", { type: "boolean", default: false, describe: "repair what is wrong or missing" }),
        async (args) => {
          if (args.tenant !== undefined) {
            const violations = idViolations(args.tenant, "tenant");
            if (violations.length > 0) throw invalid(violations);
          }
          const reports = await withControlPlane(ctx, args, (cp) => cp.verifyNetwork(args.tenant, args.fix));
          const rows: CheckRow[] = reports.flatMap((r) => [
            ...r.checks.map((c) => ({ tenant: r.tenantId, check: c.check, ok: c.ok, detail: c.detail })),
            ...r.strayTaps.map((t) => ({ tenant: r.tenantId, check: `stray tap ${t}`, ok: false, detail: "a TAP on the bridge that no instance owns" })),
          ]);
          ctx.write(args.output === "table" ? renderList(rows, COLUMNS, "table") : renderList(reports, [], args.output));
          const broken = reports.filter((r) => !r.ok).map((r) => r.tenantId);
          if (broken.length > 0) {
            throw failedPrecondition(`network of ${broken.join(", ")} is not as it should be${args.fix ? " even after repair" : ": run mvm net verify --fix"}`);
          }
        },
      )
      .demandCommand(1, "net: a subcommand is required (verify)"),
  );
}
