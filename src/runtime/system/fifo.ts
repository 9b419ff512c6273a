// Named pipes for VMM side channels (Firecracker's metrics, QEMU's control port). Node cannot make one itself, so
// `mkfifo` does, for all the paths at once (one process to spawn).

import { execa } from "execa";
import { MvmError } from "../../core/errors.js";

/** Creates each FIFO (0600); an existing file of one of these names is an error the caller removes first. */
export async function createFifos(...paths: string[]): Promise<void> {
  const result = await execa("mkfifo", ["-m", "0600", "--", ...paths], { timeout: 5_000, reject: false, stdin: "ignore" });
  if (result.exitCode !== 0) throw new MvmError("unavailable", `mkfifo ${paths.join(" ")}: ${result.stderr.trim() || `exit ${result.exitCode}`}`);
}
