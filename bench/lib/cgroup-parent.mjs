// A benchmark's runtimes nest their cgroups under a parent of the run's own (MVM_CGROUP_PARENT), which it removes at
// the end: a run leaves no group behind, not even an empty one, and never touches an agent's groups on the host.

import { join } from "node:path";
import { pathToFileURL } from "node:url";

export async function benchCgroupParent(root, name) {
  const { removeCgroupParent } = await import(pathToFileURL(join(root, "dist/src/runtime/cgroups/linux-cgroups.js")).href);
  const parent = `mvm-bench-${process.pid}`;
  return {
    env: { MVM_CGROUP_PARENT: parent },
    /** Removes the run's groups; says which stay (processes still inside) and returns false then. */
    remove() {
      const left = removeCgroupParent(parent);
      for (const dir of left) console.error(`${name}: cleanup: cgroup ${dir} still holds processes`);
      return left.length === 0;
    },
  };
}
