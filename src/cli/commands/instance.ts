import type { Argv } from "yargs";
import { parseInstancePath, parsePoolPath } from "../../core/ids.js";
import type { Instance, InstanceStatus } from "../../core/model.js";
import { withControlPlane, withControlPlaneOptions } from "../backend/choose-control-plane.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderList, renderRecord, type Column } from "../output.js";
import { requiredPositional } from "./flags.js";
import { registerInstanceRuntimeCommands } from "./instance-runtime.js";
import { registerInstanceWatchCommand } from "./watch.js";

const INSTANCE_COLUMNS: Column<Instance>[] = [
  { header: "INSTANCE", cell: (i) => `${i.tenantId}/${i.poolId}/${i.instanceId}` },
  { header: "STATUS", cell: (i) => i.status },
  { header: "IP", cell: (i) => `${i.net.guestIp}/${i.net.prefixLen}` },
  { header: "TAP", cell: (i) => i.net.tapName },
  { header: "MAC", cell: (i) => i.net.mac },
  { header: "REVISION", cell: (i) => i.revision },
  { header: "CREATED", cell: (i) => i.createdAt },
];

export function registerInstanceCommands(yargs: Argv<GlobalOptions>, ctx: CliContext): Argv<GlobalOptions> {
  return yargs.command("instance", "manage instances: one microVM each", (y) =>
    registerInstanceWatchCommand(registerInstanceRuntimeCommands(withControlPlaneOptions(y), ctx), ctx, ctx.env)
      .command(
        "create [path]",
        "create an instance record in a pool (allocates IP, TAP and MAC; max_instances_per_pool is enforced)",
        (c) => requiredPositional(c, "path", "<tenant>/<pool>"),
        async (args) => {
          const key = parsePoolPath(args.path);
          const instance = await withControlPlane(ctx, args, (cp) => cp.createInstance(key));
          ctx.write(renderRecord(instance, args.output));
        },
      )
      .command(
        "list",
        "list instances",
        (c) =>
          c
            .option("tenant", { type: "string", describe: "only this tenant" })
            .option("pool", { type: "string", describe: "only this pool" })
            .option("status", { type: "string", describe: "only this status" }),
        async (args) => {
          const filter = { tenantId: args.tenant, poolId: args.pool, status: args.status as InstanceStatus | undefined };
          const instances = await withControlPlane(ctx, args, (cp) => cp.listInstances(filter));
          ctx.write(renderList(instances, INSTANCE_COLUMNS, args.output));
        },
      )
      .command(
        "info [path]",
        "show one instance",
        (c) => requiredPositional(c, "path", "<tenant>/<pool>/<instance>"),
        async (args) => {
          const key = parseInstancePath(args.path);
          const instance = await withControlPlane(ctx, args, (cp) => cp.getInstance(key));
          ctx.write(renderRecord(instance, args.output));
        },
      )
      .command(
        "destroy [path]",
        "destroy an instance: stop its microVM if needed, release IP, TAP, cgroup and disks",
        (c) =>
          requiredPositional(c, "path", "<tenant>/<pool>/<instance>").option("keep-volumes", {
            type: "boolean",
            default: false,
            describe: "keep the data disk (moved to the pool's kept-volumes/)",
          }),
        async (args) => {
          const key = parseInstancePath(args.path);
          await withControlPlane(ctx, args, (cp) => cp.destroyInstance(key, { keepVolumes: args["keep-volumes"] }));
          ctx.warn(`destroyed instance ${key.tenantId}/${key.poolId}/${key.instanceId}\n`);
        },
      )
      .demandCommand(1, "instance: a subcommand is required (create, list, info, start, stop, exec, ssh, logs, stats, watch, destroy)"),
  );
}
