import type { Argv } from "yargs";
import { failedPrecondition } from "../../core/errors.js";
import { detectPackageManager, installHostPackages } from "../../runtime/host/bootstrap.js";
import { runHostChecks, type HostCheck } from "../../runtime/host/doctor.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderList, type Column } from "../output.js";

const CHECK_COLUMNS: Column<HostCheck>[] = [
  { header: "CHECK", cell: (c) => c.check },
  { header: "STATUS", cell: (c) => c.level },
  { header: "REQUIRED", cell: (c) => (c.required ? "yes" : "no") },
  { header: "DETAIL", cell: (c) => c.detail, maxWidth: 80 },
];

export function registerHostCommands(yargs: Argv<GlobalOptions>, ctx: CliContext): Argv<GlobalOptions> {
  return yargs
    .command(
      "doctor",
      "check what this host can do: QEMU, Firecracker, usable KVM, cgroups, nftables, netns, mmdebstrap, free space",
      (c) => c,
      async (args) => {
        const { store } = await ctx.deps(args);
        const checks = await runHostChecks(store.dataRoot);
        ctx.write(renderList(checks, CHECK_COLUMNS, args.output));
        const failing = checks.filter((c) => c.required && c.level === "fail").map((c) => c.check);
        if (failing.length > 0) throw failedPrecondition(`this host cannot run microVMs yet: ${failing.join(", ")} (see mvm bootstrap)`);
      },
    )
    .command(
      "bootstrap",
      "install the host packages mvm needs (apt; dnf where found)",
      (c) => c,
      async () => {
        const manager = await detectPackageManager();
        if (!manager) throw failedPrecondition("no supported package manager found (apt-get or dnf)");
        const packages = await installHostPackages(manager, ctx.warn);
        ctx.warn(`installed or already present (${manager}): ${packages.join(" ")}\n`);
      },
    );
}
