// Where a node keeps its state (SPEC §5). The CLI and the agent must resolve the same directory from the same inputs,
// or they would lock and read different stores; so the order lives in this one function.

import { homedir } from "node:os";
import { join, resolve } from "node:path";

export interface DataRootInputs {
  /** `--data-dir`; wins over everything else. Relative paths resolve against the working directory. */
  dataDir?: string;
  /** Environment to read `MVM_HOME`, `XDG_DATA_HOME` and `HOME` from. Default: `process.env`. */
  env?: NodeJS.ProcessEnv;
  /** Effective uid; 0 selects the system location. Default: `process.getuid()` (or non-root where unavailable). */
  uid?: number;
}

export const SYSTEM_DATA_ROOT = "/var/lib/mvm";

/**
 * The absolute data root: `--data-dir`, else `$MVM_HOME`, else `/var/lib/mvm` for root, else `$XDG_DATA_HOME/mvm`,
 * else `~/.local/share/mvm`. Empty values count as unset, as the XDG spec asks for `XDG_DATA_HOME`.
 */
export function resolveDataRoot(inputs: DataRootInputs = {}): string {
  const env = inputs.env ?? process.env;
  const uid = inputs.uid ?? process.getuid?.() ?? -1;
  if (nonEmpty(inputs.dataDir)) return resolve(inputs.dataDir);
  if (nonEmpty(env.MVM_HOME)) return resolve(env.MVM_HOME);
  if (uid === 0) return SYSTEM_DATA_ROOT;
  // XDG says a relative XDG_DATA_HOME is invalid and must be ignored.
  const xdg = env.XDG_DATA_HOME;
  if (nonEmpty(xdg) && xdg.startsWith("/")) return join(xdg, "mvm");
  const home = nonEmpty(env.HOME) ? env.HOME : homedir();
  return resolve(home, ".local", "share", "mvm");
}

function nonEmpty(value: string | undefined): value is string {
  return value !== undefined && value !== "";
}
