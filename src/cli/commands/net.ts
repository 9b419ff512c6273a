import type { Argv } from "yargs";
import { failedPrecondition, invalid } from "../../core/errors.js";
import { idViolations } from "../../core/ids.js";
import type { TapPlan, TenantNetworkReport } from "../../core/data-plane-ports.js";
import { audited } from "../../core/use-cases/audit-trail.js";
import { tenantNetworkPlan } from "../../core/use-cases/lifecycle.js";
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

/** Instances whose TAP must exist: a TAP lives from start to stop, and is kept while an instance sleeps. */
const HAS_TAP = new Set(["running", "warm", "sleeping"]);

export function registerNetCommands(yargs: Argv<GlobalOptions>, ctx: CliContext): Argv<GlobalOptions> {
  return yargs.command("net", "tenant networks", (y) =>
    y
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
          const deps = await ctx.deps(args);
          const tenants = (await deps.store.listTenants()).filter((t) => args.tenant === undefined || t.tenantId === args.tenant);
          if (args.tenant !== undefined && tenants.length === 0) throw invalid([{ field: "tenant", rule: `no tenant ${args.tenant}` }]);
          const reports: TenantNetworkReport[] = [];
          for (const tenant of tenants) {
            const pools = await deps.store.listPools(tenant.tenantId);
            const instances = (await Promise.all(pools.map((p) => deps.store.listInstances(tenant.tenantId, p.poolId)))).flat();
            const expected: TapPlan[] = instances
              .filter((i) => HAS_TAP.has(i.status))
              .map((i) => ({ name: i.net.tapName, mac: i.net.mac, guestIp: i.net.guestIp }));
            const plan = tenantNetworkPlan(tenant, deps.metadataPort);
            const report = args.fix
              ? await audited(deps, { tenantId: tenant.tenantId, action: "network_repair", target: tenant.tenantId }, () =>
                  deps.network.verify(plan, expected, true),
                )
              : await deps.network.verify(plan, expected, false);
            reports.push(report);
          }
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
