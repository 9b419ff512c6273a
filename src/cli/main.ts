// Entry point of the `mvm` command.

import { hideBin } from "yargs/helpers";
import { runCli } from "./run-cli.js";

process.exitCode = await runCli(hideBin(process.argv), {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  env: process.env,
});
