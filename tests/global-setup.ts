// Tests that run the `mvm` binary need dist/ current. scripts/test.sh builds once and sets MVM_SKIP_BUILD=1.
//
// Every runtime a test opens, in this process's workers or in the `mvm` processes they start, nests its cgroups
// under a parent of this run's own (MVM_CGROUP_PARENT, set by vitest.config.ts), which teardown removes: the run
// leaves no group behind, not even an empty one, and never touches the groups of an mvm agent on the same host.
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { removeCgroupParent } from "../src/runtime/cgroups/linux-cgroups.js";

export default function setup(): () => void {
  const parent = process.env.MVM_CGROUP_PARENT ?? "";
  if (!/^mvm-test-[0-9]+$/.test(parent)) throw new Error(`MVM_CGROUP_PARENT is "${parent}": run the tests through vitest.config.ts`);
  if (process.env.MVM_SKIP_BUILD !== "1") {
    const root = join(import.meta.dirname, "..");
    execFileSync(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.build.json"], {
      cwd: root,
      stdio: "inherit",
    });
  }
  return () => {
    if (process.getuid?.() !== 0) return;
    const left = removeCgroupParent(parent);
    if (left.length > 0) console.error(`tests left cgroups that still hold processes: ${left.join(", ")}`);
  };
}
