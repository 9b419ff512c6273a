// bin/mvm executed as a program, the way an operator's `mvm` and a service unit run it: its #! line must start
// node with the flags it names (env -S), and the CLI must answer. What the flag buys is measured by
// bench/agent-memory.mjs, which runs the agent the same way.

import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { REPO_ROOT } from "../../helpers/mvm-cli.js";

const PROGRAM = join(REPO_ROOT, "bin/mvm");

describe("bin/mvm as a program", () => {
  it("runs through its #! line with the young-generation cap it names", () => {
    const first = readFileSync(PROGRAM, "utf8").split("\n")[0];
    expect(first).toBe("#!/usr/bin/env -S node --max-semi-space-size=8");
    const help = spawnSync(PROGRAM, ["--help"], { encoding: "utf8", timeout: 30_000 });
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/tenant/);
  });
});
