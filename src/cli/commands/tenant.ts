import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Argv } from "yargs";
import { invalid } from "../../core/errors.js";
import type { Tenant, TenantQuota } from "../../core/model.js";
import { secretFilesViolations, type SecretFiles } from "../../core/tenant-secrets.js";
import { withControlPlane, withControlPlaneOptions } from "../backend/choose-control-plane.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderList, renderRecord, type Column } from "../output.js";
import { parseLabels, requiredPositional } from "./flags.js";

const QUOTA_FLAGS: ReadonlyArray<[flag: string, key: keyof TenantQuota, what: string]> = [
  ["max-vcpus", "maxVcpus", "vCPUs of running + warm instances (default 16)"],
  ["max-mem-mib", "maxMemMib", "memory of running + warm instances, MiB (default 32768)"],
  ["max-running", "maxRunning", "running instances (default 8)"],
  ["max-warm", "maxWarm", "warm instances (default 4)"],
  ["max-pools", "maxPools", "pools (default 4)"],
  ["max-instances-per-pool", "maxInstancesPerPool", "instances per pool (default 16)"],
  ["max-disk-gib", "maxDiskGib", "data disks + snapshots, GiB (default 100)"],
];

function withQuotaFlags<T>(y: Argv<T>): Argv<T> {
  let out = y;
  for (const [flag, , what] of QUOTA_FLAGS) out = out.option(flag, { type: "number", describe: `quota: ${what}` });
  return out;
}

function quotaFromArgs(args: Record<string, unknown>): Partial<TenantQuota> {
  const quotas: Partial<TenantQuota> = {};
  for (const [flag, key] of QUOTA_FLAGS) {
    if (args[flag] !== undefined) quotas[key] = args[flag] as number;
  }
  return quotas;
}

function networkFromArgs(args: Record<string, unknown>) {
  const network: { netId?: number; ipv4Subnet?: string } = {};
  if (args["net-id"] !== undefined) network.netId = args["net-id"] as number;
  if (args.subnet !== undefined) network.ipv4Subnet = String(args.subnet);
  return network;
}

const TENANT_COLUMNS: Column<Tenant>[] = [
  { header: "TENANT", cell: (t) => t.tenantId },
  { header: "NET ID", cell: (t) => t.network.netId },
  { header: "SUBNET", cell: (t) => t.network.ipv4Subnet },
  { header: "GATEWAY", cell: (t) => t.network.gatewayIp },
  { header: "BRIDGE", cell: (t) => t.network.bridgeName },
  { header: "LABELS", cell: (t) => Object.entries(t.labels).map(([k, v]) => `${k}=${v}`).join(",") },
  { header: "CREATED", cell: (t) => t.createdAt },
];

export function registerTenantCommands(yargs: Argv<GlobalOptions>, ctx: CliContext): Argv<GlobalOptions> {
  return yargs.command("tenant", "manage tenants: the security, quota and network boundary", (y) =>
    withControlPlaneOptions(y)
      .command(
        "create [tenant]",
        "create a tenant with its SSH key pair and network",
        (c) =>
          withQuotaFlags(
            requiredPositional(c, "tenant", "tenant ID")
              .option("net-id", { type: "number", describe: "network ID, 0-4095 (allocated when omitted)" })
              .option("subnet", { type: "string", describe: "IPv4 subnet, /16 to /29 (allocated when omitted)" })
              .option("label", { type: "string", array: true, describe: "label key=value (repeatable)" }),
          ),
        async (args) => {
          const input = {
            tenantId: args.tenant,
            network: networkFromArgs(args),
            quotas: quotaFromArgs(args),
            labels: parseLabels(args.label, "--label"),
          };
          const tenant = await withControlPlane(ctx, args, (cp) => cp.createTenant(input));
          ctx.write(renderRecord(tenant, args.output));
        },
      )
      .command(
        "list",
        "list tenants",
        (c) => c,
        async (args) => {
          const tenants = await withControlPlane(ctx, args, (cp) => cp.listTenants());
          ctx.write(renderList(tenants, TENANT_COLUMNS, args.output));
        },
      )
      .command(
        "info [tenant]",
        "show one tenant",
        (c) => requiredPositional(c, "tenant", "tenant ID"),
        async (args) => {
          const tenant = await withControlPlane(ctx, args, (cp) => cp.getTenant(args.tenant));
          ctx.write(renderRecord(tenant, args.output));
        },
      )
      .command(
        "update [tenant]",
        "change a tenant's quotas, labels or (while it has no pools) network",
        (c) =>
          withQuotaFlags(
            requiredPositional(c, "tenant", "tenant ID")
              .option("net-id", { type: "number", describe: "new network ID (only while the tenant has no pools)" })
              .option("subnet", { type: "string", describe: "new subnet (only while the tenant has no pools)" })
              .option("label", { type: "string", array: true, describe: "set label key=value (repeatable)" })
              .option("remove-label", { type: "string", array: true, describe: "remove label key (repeatable)" }),
          ),
        async (args) => {
          const labels: Record<string, string | null> = { ...parseLabels(args.label, "--label") };
          for (const key of args["remove-label"] ?? []) labels[key] = null;
          const input = { tenantId: args.tenant, quotas: quotaFromArgs(args), labels, network: networkFromArgs(args) };
          const tenant = await withControlPlane(ctx, args, (cp) => cp.updateTenant(input));
          ctx.write(renderRecord(tenant, args.output));
        },
      )
      .command(
        "destroy [tenant]",
        "destroy a tenant, its key and network (refused while it has pools, unless --force)",
        (c) =>
          requiredPositional(c, "tenant", "tenant ID")
            .option("force", { type: "boolean", default: false, describe: "also destroy its pools and instances, stopping their microVMs" }),
        async (args) => {
          await withControlPlane(ctx, args, (cp) => cp.destroyTenant(args.tenant, args.force));
          ctx.warn(`destroyed tenant ${args.tenant}\n`);
        },
      )
      .command(
        "rotate-secrets [tenant]",
        "new secrets epoch: each start and wake then builds a fresh secrets disk (files under user-secrets/ in the guest)",
        (c) =>
          requiredPositional(c, "tenant", "tenant ID")
            .option("from-dir", { type: "string", describe: "replace the secret set with the regular files in DIR (name = file name)" })
            .option("clear", { type: "boolean", default: false, describe: "replace the secret set with an empty one" }),
        async (args) => {
          if (args["from-dir"] !== undefined && args.clear) {
            throw invalid([{ field: "--clear", rule: "cannot be combined with --from-dir" }]);
          }
          const files = args.clear ? {} : args["from-dir"] === undefined ? undefined : await readSecretDir(args["from-dir"]);
          const tenant = await withControlPlane(ctx, args, (cp) => cp.rotateSecrets(args.tenant, files));
          ctx.write(renderRecord(tenant, args.output));
        },
      )
      .demandCommand(1, "tenant: a subcommand is required (create, list, info, update, rotate-secrets, destroy)"),
  );
}

/** The secret set in `dir`: its regular files, read before anything is sent; anything else there is refused. */
async function readSecretDir(dir: string): Promise<SecretFiles> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (e) {
    throw invalid([{ field: "--from-dir", rule: `must be a readable directory (${(e as Error).message})` }]);
  }
  const others = entries.filter((e) => !e.isFile()).map((e) => e.name);
  if (others.length > 0) throw invalid([{ field: "--from-dir", rule: `must hold regular files only, not ${others.join(", ")}` }]);
  const files: SecretFiles = {};
  for (const e of entries) files[e.name] = new Uint8Array(await readFile(join(dir, e.name)));
  const violations = secretFilesViolations(files, "--from-dir");
  if (violations.length > 0) throw invalid(violations);
  return files;
}
