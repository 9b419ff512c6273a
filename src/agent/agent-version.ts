// The agent's version: package.json's, found by walking up from this file (src/agent in a checkout,
// dist/src/agent when built), and the git commit from $MVM_GIT_COMMIT, which packaging sets.

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export interface AgentVersion {
  version: string;
  gitCommit: string;
}

export function agentVersion(env: NodeJS.ProcessEnv = process.env): AgentVersion {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: string; version?: string };
      if (pkg.name === "mvm" && typeof pkg.version === "string") return { version: pkg.version, gitCommit: env.MVM_GIT_COMMIT ?? "" };
    } catch {
      // not here; look one level up
    }
    dir = dirname(dir);
  }
  return { version: "0.0.0", gitCommit: env.MVM_GIT_COMMIT ?? "" };
}
