import { readFile } from "node:fs/promises";
import type { Argv } from "yargs";
import { parse as parseYaml } from "yaml";
import { invalid, notFound } from "../../core/errors.js";
import { parseDesiredState, type DesiredState } from "../../core/desired-state.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderRecord } from "../output.js";
import { requiredPositional } from "./flags.js";

/** Reads a desired-state file, JSON or YAML (by extension; YAML is a superset, but JSON errors read better). */
export async function readDesiredStateFile(path: string): Promise<DesiredState> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") throw notFound(`desired-state file ${path}`);
    throw error;
  }
  const isYaml = /\.ya?ml$/i.test(path);
  let document: unknown;
  try {
    document = isYaml ? parseYaml(text) : JSON.parse(text);
  } catch (error) {
    const reason = (error as Error).message.split("\n")[0];
    throw invalid([{ field: `desired-state file ${path}`, rule: `must be valid ${isYaml ? "YAML" : "JSON"}: ${reason}` }]);
  }
  return parseDesiredState(document);
}

export function registerDesiredCommands(yargs: Argv<GlobalOptions>, ctx: CliContext): Argv<GlobalOptions> {
  return yargs.command("desired", "desired-state documents (what reconcile converges to)", (y) =>
    y
      .command(
        "validate [file]",
        "check a desired-state file (JSON or YAML) and print it with defaults filled in",
        (c) => requiredPositional(c, "file", "path of a JSON or YAML file"),
        async (args) => {
          const desired = await readDesiredStateFile(args.file);
          ctx.write(renderRecord(desired, args.output === "table" ? "yaml" : args.output));
        },
      )
      .demandCommand(1, "desired: a subcommand is required (validate)"),
  );
}
