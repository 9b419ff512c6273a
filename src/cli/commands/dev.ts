// `mvm dev`: one command from nothing to a shell in a fresh microVM. It creates the `dev` tenant and its `shell`
// pool when they are missing, builds the default image when the pool has none, boots a new instance, opens a shell
// (or runs the command given after --), and destroys the instance afterwards unless --keep is given.

import { spawn } from "node:child_process";
import type { Argv } from "yargs";
import { buildPool } from "../../core/use-cases/builds.js";
import { createInstance } from "../../core/use-cases/instances.js";
import { destroyInstance, execInInstance, startInstance } from "../../core/use-cases/lifecycle.js";
import { createPool } from "../../core/use-cases/pools.js";
import { createTenant } from "../../core/use-cases/tenants.js";
import { ensureNetns } from "../../runtime/network/linux-network.js";
import { sshArgv } from "../../runtime/ssh/ssh-guest-channel.js";
import type { CliContext, GlobalOptions } from "../context.js";

export const DEV_TENANT = "dev";
export const DEV_POOL = "shell";
/** The dev data plane gets a namespace of its own unless told otherwise, so it never touches the host's network. */
export const DEV_NETNS = "mvm-dev";

export function registerDevCommand(yargs: Argv<GlobalOptions>, ctx: CliContext): Argv<GlobalOptions> {
  return yargs.command(
    "dev",
    "a shell in a fresh microVM (mvm dev, or mvm dev -- <command> to run one command)",
    (c) =>
      c
        .option("keep", { type: "boolean", default: false, describe: "keep the instance instead of destroying it at exit" })
        .option("vcpus", { type: "number", default: 1, describe: "vCPUs of the dev pool (when it is created)" })
        .option("mem-mib", { type: "number", default: 512, describe: "memory of the dev pool, MiB (when it is created)" }),
    async (args) => {
      const netns = args.netns ?? process.env.MVM_NETNS ?? DEV_NETNS;
      await ensureNetns(netns);
      const deps = await ctx.deps({ ...args, netns });
      const say = (text: string) => ctx.warn(`mvm dev: ${text}\n`);

      if (!(await deps.store.getTenant(DEV_TENANT))) {
        say(`creating tenant ${DEV_TENANT}`);
        await createTenant(deps, { tenantId: DEV_TENANT });
      }
      let pool = await deps.store.getPool(DEV_TENANT, DEV_POOL);
      if (!pool) {
        say(`creating pool ${DEV_TENANT}/${DEV_POOL}`);
        pool = await createPool(deps, { tenantId: DEV_TENANT, poolId: DEV_POOL }, { resources: { vcpus: args.vcpus, memMib: args["mem-mib"] } });
      }
      if (!pool.currentRevision) {
        say("building the default image (once; later runs reuse it)");
        await buildPool(deps, { tenantId: DEV_TENANT, poolId: DEV_POOL }, (e) => say(`[${Math.round(e.percent)}%] ${e.phase}: ${e.message}`));
      }
      const created = await createInstance(deps, { tenantId: DEV_TENANT, poolId: DEV_POOL });
      const key = { tenantId: DEV_TENANT, poolId: DEV_POOL, instanceId: created.instanceId };
      try {
        say(`booting ${created.instanceId} (${created.net.guestIp})`);
        const instance = await startInstance(deps, key);
        const rest = args["--"];
        const command = Array.isArray(rest) ? rest.map(String) : [];
        if (command.length > 0) {
          const result = await execInInstance(deps, key, command, { timeoutMs: 10 * 60_000 });
          ctx.write(result.stdout);
          if (result.stderr) ctx.warn(result.stderr);
          process.exitCode = result.exitCode;
          return;
        }
        const argv = sshArgv(
          { guestIp: instance.net.guestIp, netns, privateKeyPath: deps.paths.tenantPrivateKey(DEV_TENANT) },
          [],
          { interactive: true },
        );
        const child = spawn(argv[0]!, argv.slice(1), { stdio: "inherit" });
        process.exitCode = await new Promise<number>((resolve) => child.on("exit", (code) => resolve(code ?? 1)));
      } finally {
        if (args.keep) say(`kept ${DEV_TENANT}/${DEV_POOL}/${created.instanceId}`);
        else {
          await destroyInstance(deps, key);
          say(`destroyed ${created.instanceId}`);
        }
      }
    },
  );
}
