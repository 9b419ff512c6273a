// Tests that run the `mvm` binary need dist/ current. scripts/test.sh builds once and sets MVM_SKIP_BUILD=1.
import { execFileSync } from "node:child_process";
import { join } from "node:path";

export default function setup(): void {
  if (process.env.MVM_SKIP_BUILD === "1") return;
  const root = join(import.meta.dirname, "..");
  execFileSync(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.build.json"], {
    cwd: root,
    stdio: "inherit",
  });
}
