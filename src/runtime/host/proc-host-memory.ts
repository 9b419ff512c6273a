// The HostMemory port on Linux: MemTotal and MemAvailable from /proc/meminfo, and the memory stall share from
// /proc/pressure/memory (PSI, kernel 4.20+; absent or refused on kernels built or booted without it).

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { HostMemory, HostMemoryReading } from "../../core/host-ports.js";
import { MvmError } from "../../core/errors.js";

export interface ProcHostMemoryOptions {
  /** Where procfs is mounted; tests point it at a directory of their own. Default "/proc". */
  procRoot?: string;
}

/** Bytes of the `kB` fields of /proc/meminfo (the kernel's "kB" is KiB). */
export function parseMeminfo(text: string): { totalBytes: number; availableBytes: number } {
  const kib = (field: string): number => {
    const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB$`, "m").exec(text);
    if (!m) throw new MvmError("unavailable", `/proc/meminfo: no ${field} line`);
    return Number(m[1]) * 1024;
  };
  return { totalBytes: kib("MemTotal"), availableBytes: kib("MemAvailable") };
}

/** `avg10` of the `some` line of a PSI file, percent; null when the line or the field is missing. */
export function parsePsiSomeAvg10(text: string): number | null {
  const m = /^some\b.*\bavg10=(\d+(?:\.\d+)?)/m.exec(text);
  return m ? Number(m[1]) : null;
}

function errorCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/** Kernels without PSI have no file; with `psi=0` the file exists and reading it fails with EOPNOTSUPP. */
const NO_PSI_CODES = new Set(["ENOENT", "EOPNOTSUPP", "ENOTSUP"]);

export function createProcHostMemory(options: ProcHostMemoryOptions = {}): HostMemory {
  const procRoot = options.procRoot ?? "/proc";
  return {
    async read(): Promise<HostMemoryReading> {
      const meminfoPath = join(procRoot, "meminfo");
      let meminfo: string;
      try {
        meminfo = await readFile(meminfoPath, "utf8");
      } catch (e) {
        throw new MvmError("unavailable", `reading ${meminfoPath}: ${e instanceof Error ? e.message : String(e)}`, [], { cause: e });
      }
      let stallPct10s: number | null = null;
      try {
        stallPct10s = parsePsiSomeAvg10(await readFile(join(procRoot, "pressure", "memory"), "utf8"));
      } catch (e) {
        if (!NO_PSI_CODES.has(errorCode(e) ?? "")) throw new MvmError("unavailable", `reading ${join(procRoot, "pressure", "memory")}: ${(e as Error).message}`, [], { cause: e });
      }
      return { ...parseMeminfo(meminfo), stallPct10s };
    },
  };
}
