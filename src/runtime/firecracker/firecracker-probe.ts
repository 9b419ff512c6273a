// What Firecracker needs on this host, probed (SPEC §6.1): its binary (and version), the jailer when jailing is
// configured, a KVM that actually runs a guest (Firecracker has no software emulation), and a guest kernel it can
// boot. The answers feed `auto` hypervisor selection, `mvm doctor` and NodeInfo.

import { constants } from "node:fs";
import { access, open } from "node:fs/promises";
import { execa } from "execa";
import type { KvmProbeResult } from "../qemu/kvm-probe.js";

const VERSION_TIMEOUT_MS = 5_000;
const EM_X86_64 = 0x3e;
const EM_AARCH64 = 0xb7;

/** `Firecracker v1.7.0` (and `Jailer v1.7.0`) → `1.7.0`; null for anything else. */
export function parseFirecrackerVersion(output: string): string | null {
  return /\bv?(\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)/.exec(output.split("\n")[0] ?? "")?.[1] ?? null;
}

/** Version the binary reports with `--version`; null when it is missing or does not answer. */
export async function binaryVersion(binary: string): Promise<string | null> {
  try {
    const result = await execa(binary, ["--version"], { timeout: VERSION_TIMEOUT_MS, reject: false, stdin: "ignore" });
    if (result.exitCode !== 0) return null;
    return parseFirecrackerVersion(`${result.stdout}\n${result.stderr}`.trim());
  } catch {
    return null;
  }
}

export type GuestKernelCheck = { suitable: true; format: "elf-vmlinux" } | { suitable: false; reason: string };

/**
 * Whether Firecracker can boot the kernel image from its first bytes. On x86_64 Firecracker loads an uncompressed
 * ELF vmlinux (a bzImage is refused); on aarch64 it loads the PE `Image`. What the kernel must have built in or as
 * modules loaded from the initramfs is listed in docs/firecracker.md.
 */
export function checkGuestKernelHeader(head: Buffer, arch: "x86_64" | "aarch64" = "x86_64"): GuestKernelCheck {
  const isElf = head.length >= 20 && head[0] === 0x7f && head[1] === 0x45 && head[2] === 0x4c && head[3] === 0x46;
  if (arch === "aarch64") {
    // arm64 Image header: "ARM\x64" magic at offset 56.
    if (head.length >= 60 && head.readUInt32LE(56) === 0x644d5241) return { suitable: true, format: "elf-vmlinux" };
    return { suitable: false, reason: "not an arm64 Image (no ARM\\x64 magic at offset 56)" };
  }
  if (isElf) {
    if (head[4] !== 2 || head[5] !== 1) return { suitable: false, reason: "an ELF, but not 64-bit little-endian" };
    const machine = head.readUInt16LE(18);
    if (machine !== EM_X86_64) {
      return { suitable: false, reason: `an ELF for machine ${machine === EM_AARCH64 ? "aarch64" : `0x${machine.toString(16)}`}, not x86_64` };
    }
    return { suitable: true, format: "elf-vmlinux" };
  }
  if (head.length >= 0x206 && head.subarray(0x202, 0x206).toString("latin1") === "HdrS") {
    return { suitable: false, reason: "a compressed bzImage: firecracker on x86_64 needs the uncompressed ELF vmlinux" };
  }
  return { suitable: false, reason: "not an ELF vmlinux" };
}

export async function checkGuestKernel(path: string, arch: "x86_64" | "aarch64" = "x86_64"): Promise<GuestKernelCheck> {
  let handle;
  try {
    handle = await open(path, "r");
  } catch (e) {
    return { suitable: false, reason: `cannot open ${path}: ${(e as Error).message}` };
  }
  try {
    const head = Buffer.alloc(1024);
    const { bytesRead } = await handle.read(head, 0, head.length, 0);
    return checkGuestKernelHeader(head.subarray(0, bytesRead), arch);
  } finally {
    await handle.close();
  }
}

/** KVM as Firecracker needs it: the device opens read-write, and a guest ran under it (the QEMU probe's verdict). */
export async function probeKvmForFirecracker(
  runGuestProbe: () => Promise<KvmProbeResult>,
  devicePath = "/dev/kvm",
): Promise<KvmProbeResult> {
  const accessible = await access(devicePath, constants.R_OK | constants.W_OK).then(
    () => true,
    () => false,
  );
  if (!accessible) return { usable: false, reason: `${devicePath} is missing or not read-write for this user` };
  return runGuestProbe();
}
