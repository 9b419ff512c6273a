// The QEMU command line of an instance, built from its launch spec alone (pure: same input, same argv). The argv is
// handed to exec directly, never to a shell, so paths may hold any character; the one quoting QEMU itself needs is
// doubling commas inside option values.
//
// Sleep and wake (SPEC §7) rely on this being deterministic: a wake must use the same machine, devices and ids.

import type { VmDisk, VmLaunchSpec } from "../../core/data-plane-ports.js";
import { invalid } from "../../core/errors.js";
import type { FieldViolation } from "../../core/errors.js";
import { instanceIdViolations } from "../../core/ids.js";

export type QemuAccel = "kvm" | "tcg";

/**
 * Upper bound of TCG's translated-code cache, MiB. QEMU's default is 1 GiB, which a busy guest can fill, and every
 * MiB of it counts against the instance's memory cgroup; at 64 MiB boot took 1.44 s instead of 1.39 s here and an
 * idle guest's RSS did not change.
 */
export const TCG_TRANSLATION_CACHE_MIB = 64;

/** Always in the guest's kernel command line: serial console (the ready line is read there), stop on panic. */
export const CONSOLE_KERNEL_ARGS: readonly string[] = ["console=ttyS0", "panic=-1", "quiet"];

/** Shorten boot by about half a second (measured, VM-NOTES): skip self-tests and probes of absent hardware. */
export const FAST_BOOT_KERNEL_ARGS: readonly string[] = [
  "cryptomgr.notests",
  "random.trust_cpu=on",
  "8250.nr_uarts=1",
  "i8042.noaux",
  "i8042.nomux",
  "i8042.nopnp",
  "i8042.dumbkbd",
];

/**
 * Only under TCG: an emulated CPU does not speculate, so the guest's Spectre-class mitigations protect nothing and
 * cost boot time. Under KVM they keep the guest's processes apart on real hardware and stay on.
 */
export const TCG_ONLY_KERNEL_ARGS: readonly string[] = ["mitigations=off"];

export const ROOT_KERNEL_ARGS: readonly string[] = ["root=/dev/vda", "rw"];

/** sun_path holds 108 bytes including the terminating NUL. */
const MAX_UNIX_PATH_BYTES = 107;

/** Files QEMU and the launcher keep in the instance's run directory. */
export interface QemuRunFiles {
  /** QMP socket. */
  qmpSocket: string;
  /** Guest serial console. */
  serialLog: string;
  /** QEMU's own stdout and stderr. */
  vmmLog: string;
  /** Written by the launcher: `<pid> <start time>`. */
  launcherPidFile: string;
  /** Written and locked by QEMU (`-pidfile`): a second QEMU for the same run directory refuses to start. */
  qemuPidFile: string;
}

export function qemuRunFiles(runDir: string): QemuRunFiles {
  return {
    qmpSocket: `${runDir}/qmp.sock`,
    serialLog: `${runDir}/serial.log`,
    vmmLog: `${runDir}/qemu.log`,
    launcherPidFile: `${runDir}/vmm.pid`,
    qemuPidFile: `${runDir}/qemu.pid`,
  };
}

/** Name of mvm's control port (virtio-serial), as the guest finds it in the `name` file of its virtio-ports. */
export const CONTROL_PORT_NAME = "org.mvm.control";

export interface ControlPortFiles {
  /** What QEMU's `pipe` chardev is given: it opens `<path>.in` and `<path>.out`. */
  path: string;
  toGuest: string;
  fromGuest: string;
}

export function controlPortFiles(runDir: string): ControlPortFiles {
  const path = `${runDir}/control`;
  return { path, toGuest: `${path}.in`, fromGuest: `${path}.out` };
}

export interface QemuCommandInput {
  /** Program to run, e.g. `qemu-system-x86_64` (looked up on PATH) or an absolute path. */
  binary: string;
  spec: VmLaunchSpec;
  accel: QemuAccel;
  /** Host TSC frequency in kHz; required under TCG, where the guest cannot calibrate its TSC in time. */
  hostTscKhz: number | null;
  /** Confine QEMU with its seccomp sandbox (needs a QEMU built with seccomp). Default true. */
  seccompSandbox?: boolean;
  /**
   * Start to restore a saved migration stream (`-incoming defer`, vCPUs held with `-S`) instead of booting. Everything
   * the guest sees is identical to the boot; only the serial log is appended to rather than truncated.
   */
  incoming?: boolean;
  /**
   * Give the VM mvm's control port (a virtio-serial port on the FIFOs `controlPortFiles` names). A restore must
   * say the same as the boot whose state it loads: the device is part of the saved machine.
   */
  controlPort?: boolean;
}

/**
 * QEMU's seccomp filter: no obsolete system calls, no privilege changes, no scheduler or resource control. Spawning
 * stays allowed because sleep on QEMU 7.2 migrates through an `exec:` pipe (measured: migrate to `exec:cat > FILE`
 * completes under this filter).
 */
export const SECCOMP_SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=allow,resourcecontrol=deny";

/**
 * The argv (binary first) that boots `spec`. QEMU must run with the run directory as its working directory: when the
 * absolute QMP socket path is too long for a Unix socket address, the command names it relative to that directory.
 */
export function buildQemuArgv(input: QemuCommandInput): string[] {
  const { spec, accel } = input;
  const violations = launchSpecViolations(spec);
  if (accel === "tcg" && !(Number.isSafeInteger(input.hostTscKhz) && (input.hostTscKhz as number) > 0)) {
    violations.push({ field: "host_tsc_khz", rule: "must be a positive integer under tcg" });
  }
  if (violations.length > 0) throw invalid(violations);

  const files = qemuRunFiles(spec.runDir);
  const qmpSocket = Buffer.byteLength(files.qmpSocket) > MAX_UNIX_PATH_BYTES ? "qmp.sock" : files.qmpSocket;
  const argv = [
    input.binary,
    "-name", spec.instanceId,
    "-M", "microvm,rtc=on",
    ...(accel === "kvm"
      ? ["-accel", "kvm", "-cpu", "host"]
      : ["-accel", `tcg,tb-size=${TCG_TRANSLATION_CACHE_MIB}`, "-cpu", "max"]),
    "-m", `${spec.memMib}M`,
    "-smp", String(spec.vcpus),
    "-display", "none",
    "-no-reboot",
    "-nodefaults",
    "-no-user-config",
    "-msg", "timestamp=on",
    ...(input.seccompSandbox === false ? [] : ["-sandbox", SECCOMP_SANDBOX]),
    "-chardev", `file,id=serial0,path=${optionValue(files.serialLog)}${input.incoming ? ",append=on" : ""}`,
    "-serial", "chardev:serial0",
    "-kernel", spec.kernelPath,
    ...(spec.initrdPath === null ? [] : ["-initrd", spec.initrdPath]),
    "-append", guestKernelCmdline(spec, accel, input.hostTscKhz),
  ];
  spec.disks.forEach((disk, index) => argv.push(...driveArgs(disk, index)));
  argv.push(
    "-netdev", `tap,id=net0,ifname=${spec.tap.name},script=no,downscript=no`,
    "-device", `virtio-net-device,netdev=net0,mac=${spec.tap.mac.toLowerCase()}`,
  );
  if (input.controlPort === true) {
    argv.push(
      "-device", "virtio-serial-device,id=control0",
      "-chardev", `pipe,id=control,path=${optionValue(controlPortFiles(spec.runDir).path)}`,
      "-device", `virtserialport,bus=control0.0,chardev=control,name=${CONTROL_PORT_NAME}`,
    );
  }
  argv.push(
    "-qmp", `unix:${optionValue(qmpSocket)},server=on,wait=off`,
    "-pidfile", files.qemuPidFile,
  );
  if (input.incoming) argv.push("-S", "-incoming", "defer");
  return argv;
}

/** Quotes `word` for the `/bin/sh -c` through which QEMU runs an `exec:` migration command. */
export function shellWord(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** Migration URI that writes the stream to `path` (QEMU 7.2 has no `file:` URI). */
export function migrationTargetUri(path: string): string {
  return `exec:cat > ${shellWord(path)}`;
}

/** Migration URI that reads a saved stream from `path`. */
export function migrationSourceUri(path: string): string {
  return `exec:cat ${shellWord(path)}`;
}

/**
 * The guest kernel command line: console and timing arguments of the adapter, then core's own (network, identity),
 * last so that they win where the kernel honours only the last occurrence of a parameter.
 */
export function guestKernelCmdline(spec: Pick<VmLaunchSpec, "kernelArgs">, accel: QemuAccel, hostTscKhz: number | null): string {
  const args = [...CONSOLE_KERNEL_ARGS];
  if (accel === "tcg") {
    // Without it the guest hangs in TSC calibration most of the time under TCG (VM-NOTES).
    if (hostTscKhz !== null) args.push(`tsc_early_khz=${hostTscKhz}`);
    args.push(...TCG_ONLY_KERNEL_ARGS);
  }
  args.push(...FAST_BOOT_KERNEL_ARGS, ...ROOT_KERNEL_ARGS, ...spec.kernelArgs);
  return args.join(" ");
}

/**
 * Writable disks use the host page cache but honour the guest's flushes (`cache=writeback`, flush not ignored), so
 * what a guest fsyncs is on the host's disk; read-only disks cannot be written by the guest at all.
 */
function driveArgs(disk: VmDisk, index: number): string[] {
  const id = `disk${index}`;
  const options = [`id=${id}`, `file=${optionValue(disk.path)}`, `format=${disk.format}`, "if=none", "cache=writeback"];
  if (disk.readOnly) options.push("readonly=on");
  return ["-drive", options.join(","), "-device", `virtio-blk-device,drive=${id}`];
}

/** QEMU splits option strings at commas; a literal comma inside a value is written twice. */
export function optionValue(value: string): string {
  return value.replaceAll(",", ",,");
}

const ROLE_ORDER: Record<VmDisk["role"], number> = { root: 0, data: 1, secrets: 2 };
const TAP_NAME = /^[A-Za-z0-9_.-]{1,15}$/;
const UNICAST_MAC = /^[0-9a-f][02468ace](:[0-9a-f]{2}){5}$/i;
// Arguments travel in one space-separated string that the kernel splits itself, honouring double quotes.
const KERNEL_ARG = /^[\x21\x23-\x7e]+$/;

/** Every rule of the launch spec that the command line depends on. */
export function launchSpecViolations(spec: VmLaunchSpec): FieldViolation[] {
  const violations: FieldViolation[] = [...instanceIdViolations(spec.instanceId, "instance_id")];
  const rule = (field: string, text: string): void => {
    violations.push({ field, rule: text });
  };
  if (!Number.isSafeInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 255) rule("vcpus", "must be an integer from 1 to 255");
  if (!Number.isSafeInteger(spec.memMib) || spec.memMib < 16) rule("mem_mib", "must be an integer of at least 16");
  if (!isAbsolutePath(spec.kernelPath)) rule("kernel_path", "must be an absolute path");
  if (spec.initrdPath !== null && !isAbsolutePath(spec.initrdPath)) rule("initrd_path", "must be an absolute path");
  if (!isAbsolutePath(spec.runDir)) rule("run_dir", "must be an absolute path");
  spec.kernelArgs.forEach((arg, i) => {
    if (!KERNEL_ARG.test(arg)) rule(`kernel_args[${i}]`, "must be non-empty printable ascii without spaces or double quotes");
  });
  if (!TAP_NAME.test(spec.tap.name)) rule("tap.name", "must be 1-15 characters of [A-Za-z0-9_.-]");
  if (!UNICAST_MAC.test(spec.tap.mac)) rule("tap.mac", "must be a unicast mac address written as six colon-separated hex pairs");
  if (spec.disks.length === 0 || spec.disks[0]?.role !== "root") rule("disks", "must start with the root disk");
  spec.disks.forEach((disk, i) => {
    if (!isAbsolutePath(disk.path)) rule(`disks[${i}].path`, "must be an absolute path");
    if (disk.format !== "qcow2" && disk.format !== "raw") rule(`disks[${i}].format`, "must be qcow2 or raw");
    const previous = spec.disks[i - 1];
    if (previous !== undefined && ROLE_ORDER[disk.role] <= ROLE_ORDER[previous.role]) {
      rule(`disks[${i}].role`, "must follow the order root, data, secrets with each role at most once");
    }
  });
  return violations;
}

function isAbsolutePath(path: string): boolean {
  return path.startsWith("/") && !path.includes("\0");
}
