import { readFileSync } from "node:fs";
import type { Argv } from "yargs";
import { invalid } from "../../core/errors.js";
import { parsePoolPath } from "../../core/ids.js";
import type {
  Compression,
  DesiredCounts,
  HypervisorChoice,
  ImageSource,
  PoolResources,
  SeccompPolicy,
  SleepPolicy,
  WorkerPool,
} from "../../core/model.js";
import type { PoolSpecInput } from "../../core/use-cases/pools.js";
import { withControlPlane, withControlPlaneOptions } from "../backend/choose-control-plane.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderList, renderRecord, type Column } from "../output.js";
import { requiredPositional } from "./flags.js";
import { registerPoolBuildCommands } from "./pool-build.js";

const POOL_COLUMNS: Column<WorkerPool>[] = [
  { header: "POOL", cell: (p) => `${p.tenantId}/${p.poolId}` },
  { header: "IMAGE", cell: (p) => (p.image.kind === "debian" ? `debian:${p.image.suite}` : `nix:${p.image.flakeRef}#${p.image.profile}`) },
  { header: "VCPUS", cell: (p) => p.resources.vcpus },
  { header: "MEM MIB", cell: (p) => p.resources.memMib },
  { header: "DATA MIB", cell: (p) => p.resources.dataDiskMib },
  { header: "RUN/WARM/SLEEP", cell: (p) => `${p.desiredCounts.running}/${p.desiredCounts.warm}/${p.desiredCounts.sleeping}` },
  { header: "HYPERVISOR", cell: (p) => p.hypervisor },
  { header: "REVISION", cell: (p) => p.currentRevision },
];

type Args = Record<string, unknown>;

function countFlags<T>(y: Argv<T>) {
  return y
    .option("running", { type: "number", describe: "desired running instances" })
    .option("warm", { type: "number", describe: "desired warm (paused) instances" })
    .option("sleeping", { type: "number", describe: "desired sleeping (snapshotted) instances" });
}

function specFlags<T>(y: Argv<T>) {
  return countFlags(y)
    .option("vcpus", { type: "number", describe: "vCPUs per instance, 1-32 (default 1)" })
    .option("mem-mib", { type: "number", describe: "guest memory, MiB, 128-262144 (default 256)" })
    .option("data-disk-mib", { type: "number", describe: "persistent data disk, MiB; 0 = none (default 0)" })
    .option("image", { type: "string", describe: "image kind: debian (default) or nix" })
    .option("suite", { type: "string", describe: "debian image: suite (default bookworm)" })
    .option("package", { type: "string", array: true, describe: "debian image: extra package (repeatable)" })
    .option("flake", { type: "string", describe: "nix image: flake reference" })
    .option("profile", { type: "string", describe: "nix image: profile (default minimal)" })
    .option("hypervisor", { type: "string", describe: "auto (default), firecracker or qemu" })
    .option("seccomp", { type: "string", describe: "Firecracker seccomp policy: default or strict" })
    .option("compression", { type: "string", describe: "snapshot compression: none (default), lz4 or zstd" })
    .option("metadata", { type: "boolean", describe: "serve the metadata endpoint to guests (default true)" })
    .option("user-data-file", { type: "string", describe: "text served to guests at GET /v1/user-data on the metadata endpoint (an empty file removes it)" })
    .option("pinned", { type: "boolean", describe: "the idle policy never touches this pool" })
    .option("critical", { type: "boolean", describe: "never stopped to scale down, never idled" })
    .option("warm-after-idle-s", { type: "number", describe: "idle seconds before warming (default 300)" })
    .option("sleep-after-idle-s", { type: "number", describe: "idle seconds before sleeping (default 900)" })
    .option("cpu-idle-pct", { type: "number", describe: "CPU below this percentage counts as idle (default 5)" })
    .option("net-idle-bytes", { type: "number", describe: "network bytes per sample below this count as idle (default 1024)" });
}

function pick<T extends object>(entries: Array<[keyof T, unknown]>): Partial<T> | undefined {
  const present = entries.filter(([, v]) => v !== undefined);
  return present.length === 0 ? undefined : (Object.fromEntries(present) as Partial<T>);
}

function imageFromArgs(args: Args, current?: ImageSource): ImageSource | undefined {
  const kind = args.image as string | undefined;
  const debianFlags = args.suite !== undefined || args.package !== undefined;
  const nixFlags = args.flake !== undefined || args.profile !== undefined;
  if (kind === undefined && !debianFlags && !nixFlags) return undefined;
  const effective = kind ?? (nixFlags ? "nix" : current?.kind ?? "debian");
  if (effective === "debian") {
    if (nixFlags) throw invalid([{ field: "--flake", rule: "only applies to --image nix" }]);
    const base = current?.kind === "debian" ? current : undefined;
    return {
      kind: "debian",
      suite: (args.suite as string | undefined) ?? base?.suite ?? "bookworm",
      packages: (args.package as string[] | undefined) ?? base?.packages ?? [],
      extraFiles: base?.extraFiles ?? {},
    };
  }
  if (effective === "nix") {
    if (debianFlags) throw invalid([{ field: "--suite", rule: "only applies to --image debian" }]);
    const base = current?.kind === "nix" ? current : undefined;
    return {
      kind: "nix",
      flakeRef: (args.flake as string | undefined) ?? base?.flakeRef ?? "",
      profile: (args.profile as string | undefined) ?? base?.profile ?? "minimal",
    };
  }
  throw invalid([{ field: "--image", rule: `must be one of debian, nix (got ${JSON.stringify(kind)})` }]);
}

function countsFromArgs(args: Args): Partial<DesiredCounts> | undefined {
  return pick<DesiredCounts>([
    ["running", args.running],
    ["warm", args.warm],
    ["sleeping", args.sleeping],
  ]);
}

function readUserData(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (e) {
    throw invalid([{ field: "--user-data-file", rule: `must be a readable file (${(e as Error).message})` }]);
  }
}

function specFromArgs(args: Args, current?: WorkerPool): PoolSpecInput {
  const spec: PoolSpecInput = {};
  const image = imageFromArgs(args, current?.image);
  if (image) spec.image = image;
  const resources = pick<PoolResources>([
    ["vcpus", args.vcpus],
    ["memMib", args["mem-mib"]],
    ["dataDiskMib", args["data-disk-mib"]],
  ]);
  if (resources) spec.resources = resources;
  const counts = countsFromArgs(args);
  if (counts) spec.desiredCounts = counts;
  const sleep = pick<SleepPolicy>([
    ["warmAfterIdleS", args["warm-after-idle-s"]],
    ["sleepAfterIdleS", args["sleep-after-idle-s"]],
    ["cpuIdlePct", args["cpu-idle-pct"]],
    ["netIdleBytes", args["net-idle-bytes"]],
  ]);
  if (sleep) spec.sleepPolicy = sleep;
  if (args.hypervisor !== undefined) spec.hypervisor = args.hypervisor as HypervisorChoice;
  if (args.seccomp !== undefined) spec.seccompPolicy = args.seccomp as SeccompPolicy;
  if (args.compression !== undefined) spec.snapshotCompression = args.compression as Compression;
  if (args.metadata !== undefined) spec.metadataEnabled = args.metadata as boolean;
  if (args["user-data-file"] !== undefined) spec.userData = readUserData(args["user-data-file"] as string);
  if (args.pinned !== undefined) spec.pinned = args.pinned as boolean;
  if (args.critical !== undefined) spec.critical = args.critical as boolean;
  return spec;
}

export function registerPoolCommands(yargs: Argv<GlobalOptions>, ctx: CliContext): Argv<GlobalOptions> {
  return yargs.command("pool", "manage worker pools: one image, one resource shape, desired counts", (y) =>
    registerPoolBuildCommands(withControlPlaneOptions(y), ctx)
      .command(
        "create [path]",
        "create a pool (max_pools of the tenant is enforced)",
        (c) => specFlags(requiredPositional(c, "path", "<tenant>/<pool>")),
        async (args) => {
          const key = parsePoolPath(args.path);
          const spec = specFromArgs(args);
          const pool = await withControlPlane(ctx, args, (cp) => cp.createPool(key, spec));
          ctx.write(renderRecord(pool, args.output));
        },
      )
      .command(
        "list [tenant]",
        "list pools, of one tenant or all",
        (c) => c.positional("tenant", { type: "string", describe: "tenant ID" }),
        async (args) => {
          const pools = await withControlPlane(ctx, args, (cp) => cp.listPools(args.tenant));
          ctx.write(renderList(pools, POOL_COLUMNS, args.output));
        },
      )
      .command(
        "info [path]",
        "show one pool",
        (c) => requiredPositional(c, "path", "<tenant>/<pool>"),
        async (args) => {
          const key = parsePoolPath(args.path);
          const pool = await withControlPlane(ctx, args, (cp) => cp.getPool(key));
          ctx.write(renderRecord(pool, args.output));
        },
      )
      .command(
        "update [path]",
        "change a pool's spec",
        (c) => specFlags(requiredPositional(c, "path", "<tenant>/<pool>")),
        async (args) => {
          const key = parsePoolPath(args.path);
          const pool = await withControlPlane(ctx, args, async (cp) => cp.updatePool(key, specFromArgs(args, await cp.getPool(key))));
          ctx.write(renderRecord(pool, args.output));
        },
      )
      .command(
        "scale [path]",
        "set a pool's desired running/warm/sleeping counts",
        (c) => countFlags(requiredPositional(c, "path", "<tenant>/<pool>")),
        async (args) => {
          const key = parsePoolPath(args.path);
          const counts = countsFromArgs(args);
          if (!counts) throw invalid([{ field: "--running", rule: "give at least one of --running, --warm, --sleeping" }]);
          const pool = await withControlPlane(ctx, args, (cp) => cp.scalePool(key, counts));
          ctx.write(renderRecord(pool, args.output));
        },
      )
      .command(
        "destroy [path]",
        "destroy a pool (refused while it has instances, unless --force)",
        (c) =>
          requiredPositional(c, "path", "<tenant>/<pool>")
            .option("force", { type: "boolean", default: false, describe: "also destroy its instances" }),
        async (args) => {
          const key = parsePoolPath(args.path);
          await withControlPlane(ctx, args, (cp) => cp.destroyPool(key, args.force));
          ctx.warn(`destroyed pool ${key.tenantId}/${key.poolId}\n`);
        },
      )
      .demandCommand(1, "pool: a subcommand is required (create, list, info, update, scale, build, builds, rollback, destroy)"),
  );
}
