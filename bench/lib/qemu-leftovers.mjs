// QEMU processes whose command line names one of a benchmark's own directories: none may outlive the benchmark,
// and only these may be ended by it (never another QEMU on the host).

import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const QEMU_BINARY = "qemu-system-x86_64";

export async function qemuPidsUsing(directories, root) {
  const { readProcCmdline } = await import(pathToFileURL(join(root, "dist/src/runtime/process/proc-stat.js")).href);
  const pids = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const argv = await readProcCmdline(Number(entry)).catch(() => null);
    if (!argv || !argv.some((a) => a.includes(QEMU_BINARY))) continue;
    if (argv.some((a) => directories.some((d) => a.includes(d)))) pids.push(Number(entry));
  }
  return pids;
}
