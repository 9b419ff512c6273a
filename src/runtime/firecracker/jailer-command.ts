// The jailer's command line and the chroot it builds (SPEC §6.6), as the jailer documents them: the chroot is
// `<chroot-base-dir>/<file name of --exec-file>/<id>/root`, the jailer copies the executable there, creates `/dev`
// (kvm, net/tun) and `/run` owned by `--uid`/`--gid`, joins `--netns` (a path), writes the `--cgroup` values into
// `<parent-cgroup>/<id>` (parent defaults to the executable's file name), applies `--resource-limit`s, with
// `--daemonize` calls setsid() and points stdio at /dev/null, then execs the executable (with `--id` added) and
// everything after `--` as its own arguments.

import { basename, join } from "node:path";
import { invalidField } from "../../core/errors.js";

export interface JailerArgsInput {
  jailerBinary: string;
  /** Firecracker binary on the host (absolute; the jailer copies it into the chroot). */
  execFile: string;
  instanceId: string;
  uid: number;
  gid: number;
  chrootBaseDir: string;
  /** Network namespace name (under /var/run/netns); null for the jailer's own namespace. */
  netns: string | null;
  daemonize: boolean;
  cgroupVersion: 1 | 2;
  /** Relative cgroup path under which the jailer creates `<id>`; null: the jailer's default (the exec file name). */
  parentCgroup: string | null;
  /** `<controller>.<file>=<value>` settings the jailer writes into its cgroup. */
  cgroups: readonly string[];
  /** `fsize=<bytes>` and `no-file=<count>`. */
  resourceLimits: readonly string[];
  /** Firecracker's own arguments (after `--`). */
  firecrackerArgs: readonly string[];
}

/** Where the jailer keeps one instance's jail; host paths of things Firecracker names from inside it. */
export interface JailLayout {
  /** `<base>/<exec-file-name>/<id>`: removed whole once the VMM has exited. */
  jailDir: string;
  /** `<jailDir>/root`: the chroot, `/` for the jailed Firecracker. */
  rootDir: string;
}

const CGROUP_SETTING = /^[a-z_]+\.[a-z_.]+=[^\s=]+$/;
const RESOURCE_LIMIT = /^(fsize|no-file)=[0-9]+$/;
const NETNS_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
/** The jailer accepts IDs of 1-64 alphanumerics and hyphens. */
const JAILER_ID = /^[A-Za-z0-9-]{1,64}$/;

export function jailLayout(chrootBaseDir: string, execFile: string, instanceId: string): JailLayout {
  const jailDir = join(chrootBaseDir, basename(execFile), instanceId);
  return { jailDir, rootDir: join(jailDir, "root") };
}

/** Host path of a path Firecracker sees inside the chroot (which starts with `/`). */
export function hostPathInJail(layout: JailLayout, pathInJail: string): string {
  if (!pathInJail.startsWith("/") || pathInJail.split("/").includes("..")) {
    throw invalidField("path_in_jail", "must be absolute without '..'");
  }
  return join(layout.rootDir, pathInJail);
}

export function jailerArgv(input: JailerArgsInput): string[] {
  if (!JAILER_ID.test(input.instanceId)) throw invalidField("instance_id", "must be 1-64 letters, digits or hyphens for the jailer");
  for (const [field, value] of [
    ["uid", input.uid],
    ["gid", input.gid],
  ] as const) {
    if (!Number.isInteger(value) || value < 0 || value > 0xfffffffe) throw invalidField(`jailer.${field}`, "must be an integer from 0 to 4294967294");
  }
  if (!input.execFile.startsWith("/")) throw invalidField("jailer.exec_file", "must be an absolute path");
  if (!input.chrootBaseDir.startsWith("/")) throw invalidField("jailer.chroot_base_dir", "must be an absolute path");
  if (input.netns !== null && !NETNS_NAME.test(input.netns)) throw invalidField("netns", "must be 1-64 characters of [A-Za-z0-9_.-]");
  if (input.parentCgroup !== null && (input.parentCgroup.startsWith("/") || input.parentCgroup.split("/").some((c) => c === "" || c === "." || c === ".."))) {
    throw invalidField("jailer.parent_cgroup", "must be a relative path without '.', '..' or empty components");
  }
  for (const [i, setting] of input.cgroups.entries()) {
    if (!CGROUP_SETTING.test(setting)) throw invalidField(`jailer.cgroups[${i}]`, "must be <controller>.<file>=<value>");
  }
  for (const [i, limit] of input.resourceLimits.entries()) {
    if (!RESOURCE_LIMIT.test(limit)) throw invalidField(`jailer.resource_limits[${i}]`, "must be fsize=<bytes> or no-file=<count>");
  }
  const argv = [
    input.jailerBinary,
    "--id", input.instanceId,
    "--exec-file", input.execFile,
    "--uid", String(input.uid),
    "--gid", String(input.gid),
    "--chroot-base-dir", input.chrootBaseDir,
  ];
  if (input.netns !== null) argv.push("--netns", `/var/run/netns/${input.netns}`);
  if (input.daemonize) argv.push("--daemonize");
  for (const setting of input.cgroups) argv.push("--cgroup", setting);
  argv.push("--cgroup-version", String(input.cgroupVersion));
  if (input.parentCgroup !== null) argv.push("--parent-cgroup", input.parentCgroup);
  for (const limit of input.resourceLimits) argv.push("--resource-limit", limit);
  argv.push("--", ...input.firecrackerArgs);
  return argv;
}

/**
 * A per-instance uid/gid from the instance ID (`i-` + 8 hex digits), so that two jailed VMMs never share an identity
 * unless their IDs collide modulo `range`; the numbers lie in [base, base + range).
 */
export function jailIdentity(instanceId: string, base: number, range: number): { uid: number; gid: number } {
  const hex = /^i-([0-9a-f]{8})$/.exec(instanceId)?.[1];
  if (hex === undefined) throw invalidField("instance_id", "must be i- and 8 hex digits");
  if (!Number.isInteger(base) || base < 1 || !Number.isInteger(range) || range < 1 || base + range > 0xfffffffe) {
    throw invalidField("jailer.uid_base", "base and range must be positive integers below 2^32 - 1 together");
  }
  const id = base + (Number.parseInt(hex, 16) % range);
  return { uid: id, gid: id };
}
