// What every command handler gets: the record use cases' dependencies (opened on first use, so `--help` touches
// nothing on disk), the chosen output format, and a writer for results.

import type { NodeRuntime } from "../agent/node-runtime-types.js";
import type { OutputFormat } from "./output.js";

export interface GlobalOptions {
  dataDir?: string;
  output: OutputFormat;
  debug: boolean;
  /** Network namespace of the data plane (bridges, TAPs, VMMs); default none. */
  netns?: string;
}

export interface CliContext {
  deps(options: GlobalOptions): Promise<NodeRuntime>;
  /** Results go to stdout; diagnostics go to stderr. */
  write(text: string): void;
  warn(text: string): void;
  /** The environment the command runs in (agent connection defaults such as MVM_CA). */
  env: NodeJS.ProcessEnv;
}
