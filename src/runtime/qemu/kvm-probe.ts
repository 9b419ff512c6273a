// "Usable KVM" is measured, not assumed (SPEC §6.1): a /dev/kvm can exist and still be unable to run a guest (on
// nested PVM, QEMU aborts setting up `-cpu host`). The probe boots a guest of a few bytes under exactly the
// accelerator and CPU model the adapter would use, and trusts KVM only when that guest's output comes back.

import { constants } from "node:fs";
import { access, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";

export interface KvmProbeResult {
  usable: boolean;
  /** Why KVM is or is not usable, for `mvm doctor` and capability notes. */
  reason: string;
}

export interface KvmProbeOptions {
  /** QEMU binary. Default `qemu-system-x86_64`. */
  binary?: string;
  /** Default `/dev/kvm`. */
  devicePath?: string;
  /** How long the probe guest may take, ms. Default 8000. */
  timeoutMs?: number;
}

const DEFAULT_BINARY = "qemu-system-x86_64";
const DEFAULT_TIMEOUT_MS = 8_000;
/** What the probe guest writes to its serial port. */
export const KVM_PROBE_MARKER = "MVM-KVM-OK";
/** The probe guest writes this to isa-debug-exit; QEMU then exits with (value << 1) | 1. */
const DEBUG_EXIT_VALUE = 0x10;
const DEBUG_EXIT_PORT = 0xf4;
const EXPECTED_EXIT_CODE = (DEBUG_EXIT_VALUE << 1) | 1;

/**
 * A 32-bit ELF that QEMU boots through its PVH entry note (the way it boots an uncompressed Linux kernel): it
 * writes KVM_PROBE_MARKER to the first serial port, then asks isa-debug-exit to end QEMU.
 */
export function buildKvmProbeImage(): Buffer {
  const loadAddress = 0x100000;
  const elfHeaderSize = 52;
  const programHeaderSize = 32;
  const programHeaderCount = 2;
  const noteOffset = elfHeaderSize + programHeaderSize * programHeaderCount;

  // Note: namesz, descsz, type XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen\0", desc = 32-bit entry address.
  const note = Buffer.alloc(20);
  note.writeUInt32LE(4, 0);
  note.writeUInt32LE(4, 4);
  note.writeUInt32LE(18, 8);
  note.write("Xen\0", 12, "latin1");
  const codeOffset = noteOffset + note.length;
  const entry = loadAddress + codeOffset;
  note.writeUInt32LE(entry, 16);

  const code: number[] = [0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8 (COM1 data)
  for (const byte of Buffer.from(`${KVM_PROBE_MARKER}\n`, "latin1")) code.push(0xb0, byte, 0xee); // mov al, byte; out dx, al
  code.push(0x66, 0xba, DEBUG_EXIT_PORT, 0x00); // mov dx, 0xf4
  code.push(0xb0, DEBUG_EXIT_VALUE, 0xee); // mov al, 0x10; out dx, al
  code.push(0xf4, 0xeb, 0xfd); // hlt; jmp back to hlt
  const codeBytes = Buffer.from(code);
  const fileSize = codeOffset + codeBytes.length;

  const header = Buffer.alloc(elfHeaderSize);
  header.write("\x7fELF", 0, "latin1");
  header[4] = 1; // ELFCLASS32
  header[5] = 1; // little-endian
  header[6] = 1; // EV_CURRENT
  header.writeUInt16LE(2, 16); // ET_EXEC
  header.writeUInt16LE(3, 18); // EM_386
  header.writeUInt32LE(1, 20);
  header.writeUInt32LE(entry, 24);
  header.writeUInt32LE(elfHeaderSize, 28); // program headers follow the ELF header
  header.writeUInt16LE(elfHeaderSize, 40);
  header.writeUInt16LE(programHeaderSize, 42);
  header.writeUInt16LE(programHeaderCount, 44);

  const programHeaders = Buffer.alloc(programHeaderSize * programHeaderCount);
  // PT_LOAD: the whole file at loadAddress, rwx.
  writeProgramHeader(programHeaders, 0, { type: 1, offset: 0, address: loadAddress, size: fileSize, flags: 7, align: 0x1000 });
  // PT_NOTE: the PVH entry note.
  writeProgramHeader(programHeaders, programHeaderSize, {
    type: 4,
    offset: noteOffset,
    address: loadAddress + noteOffset,
    size: note.length,
    flags: 4,
    align: 4,
  });
  return Buffer.concat([header, programHeaders, note, codeBytes]);
}

function writeProgramHeader(
  target: Buffer,
  at: number,
  h: { type: number; offset: number; address: number; size: number; flags: number; align: number },
): void {
  target.writeUInt32LE(h.type, at);
  target.writeUInt32LE(h.offset, at + 4);
  target.writeUInt32LE(h.address, at + 8); // p_vaddr
  target.writeUInt32LE(h.address, at + 12); // p_paddr
  target.writeUInt32LE(h.size, at + 16); // p_filesz
  target.writeUInt32LE(h.size, at + 20); // p_memsz
  target.writeUInt32LE(h.flags, at + 24);
  target.writeUInt32LE(h.align, at + 28);
}

/** The QEMU argv that runs the probe image at `imagePath` under `accel` (exported for tests). */
export function kvmProbeArgv(binary: string, imagePath: string, accel: "kvm" | "tcg" = "kvm"): string[] {
  return [
    binary,
    "-M", "microvm",
    ...(accel === "kvm" ? ["-accel", "kvm", "-cpu", "host"] : ["-accel", "tcg", "-cpu", "max"]),
    "-m", "32M",
    "-smp", "1",
    "-display", "none",
    "-nodefaults",
    "-no-user-config",
    "-no-reboot",
    "-serial", "stdio",
    "-device", `isa-debug-exit,iobase=0x${DEBUG_EXIT_PORT.toString(16)},iosize=4`,
    "-kernel", imagePath,
  ];
}

/** Runs the probe guest once. Never throws: anything that goes wrong means "not usable", with the reason. */
export async function probeKvm(options: KvmProbeOptions = {}, accel: "kvm" | "tcg" = "kvm"): Promise<KvmProbeResult> {
  const devicePath = options.devicePath ?? "/dev/kvm";
  if (accel === "kvm") {
    try {
      await access(devicePath, constants.R_OK | constants.W_OK);
    } catch (e) {
      return { usable: false, reason: `${devicePath} is missing or not read-write for this user (${(e as Error).message})` };
    }
  }
  const dir = await mkdtemp(join(tmpdir(), "mvm-kvm-probe-"));
  try {
    const image = join(dir, "probe.elf");
    await writeFile(image, buildKvmProbeImage());
    const [program, ...args] = kvmProbeArgv(options.binary ?? DEFAULT_BINARY, image, accel);
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const result = await execa(program as string, args, { timeout: timeoutMs, reject: false, stdin: "ignore" });
    const sawMarker = result.stdout.includes(KVM_PROBE_MARKER);
    if (sawMarker && result.exitCode === EXPECTED_EXIT_CODE) {
      return { usable: true, reason: `a probe guest ran under -accel ${accel} -cpu ${accel === "kvm" ? "host" : "max"}` };
    }
    if (result.exitCode === undefined && !result.timedOut && !result.signal) {
      return { usable: false, reason: `the probe could not run: ${result.originalMessage ?? result.shortMessage}` };
    }
    const how = result.timedOut
      ? `did not finish within ${timeoutMs} ms`
      : result.signal
        ? `was killed by ${result.signal}`
        : `exited with status ${result.exitCode}`;
    const stderr = summarize(result.stderr);
    return {
      usable: false,
      reason: `a probe guest under -accel ${accel} ${how}${sawMarker ? "" : " without output"}${stderr ? `: ${stderr}` : ""}`,
    };
  } catch (e) {
    return { usable: false, reason: `the probe could not run: ${(e as Error).message}` };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const cachedProbes = new Map<string, Promise<KvmProbeResult>>();

/** `probeKvm` once per binary and device for the life of this process. */
export function probeKvmCached(options: KvmProbeOptions = {}): Promise<KvmProbeResult> {
  const key = `${options.binary ?? DEFAULT_BINARY}\0${options.devicePath ?? "/dev/kvm"}`;
  let probe = cachedProbes.get(key);
  if (probe === undefined) {
    probe = probeKvm(options);
    cachedProbes.set(key, probe);
  }
  return probe;
}

/** Host TSC frequency in kHz, from the first "cpu MHz" of /proc/cpuinfo; null when there is none. */
export async function readHostTscKhz(cpuinfoPath = "/proc/cpuinfo"): Promise<number | null> {
  try {
    return parseCpuMhzAsKhz(await readFile(cpuinfoPath, "utf8"));
  } catch {
    return null;
  }
}

export function parseCpuMhzAsKhz(cpuinfo: string): number | null {
  const m = /^cpu MHz\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*$/m.exec(cpuinfo);
  if (m === null) return null;
  const khz = Math.round(Number(m[1]) * 1000);
  return khz > 0 ? khz : null;
}

function summarize(text: string): string {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "")
    .join(" / ")
    .slice(0, 400);
}
