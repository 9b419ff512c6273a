import type { Argv } from "yargs";
import { invalid, type FieldViolation } from "../../core/errors.js";

/** `key=value` flags into a map; a malformed entry names the flag and the rule. */
export function parseLabels(values: readonly string[] | undefined, flag: string): Record<string, string> {
  const labels: Record<string, string> = {};
  const violations: FieldViolation[] = [];
  for (const entry of values ?? []) {
    const at = entry.indexOf("=");
    if (at <= 0) {
      violations.push({ field: flag, rule: `must be key=value (got ${JSON.stringify(entry)})` });
      continue;
    }
    labels[entry.slice(0, at)] = entry.slice(at + 1);
  }
  if (violations.length > 0) throw invalid(violations);
  return labels;
}

/**
 * A positional argument that must be given. Declared optional to yargs and checked here instead, for two reasons:
 * the error then names the argument like any other invalid field, and a value that starts with a hyphen can be
 * passed after `--` (`mvm tenant create -- -x` reaches the ID rule instead of being parsed as flags).
 */
export function requiredPositional<T, K extends string>(y: Argv<T>, name: K, describe: string): Argv<T & { [P in K]: string }> {
  return y.positional(name, { type: "string", describe }).middleware((args: Record<string, unknown>) => {
    const rest = args["--"];
    if (args[name] === undefined && Array.isArray(rest) && rest.length > 0) args[name] = String(rest.shift());
    if (args[name] === undefined) throw invalid([{ field: name, rule: `is required (${describe}; a value that starts with '-' goes after --)` }]);
  }, true) as unknown as Argv<T & { [P in K]: string }>;
}
