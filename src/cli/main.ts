// Entry point of the `mvm` command.

import { hideBin } from "yargs/helpers";
import { runCli } from "./run-cli.js";

const code = await runCli(hideBin(process.argv), {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  env: process.env,
});
// A command may have set its own status (exec passes on the guest command's); a failure of mvm itself wins.
process.exitCode = code !== 0 ? code : (process.exitCode ?? 0);
