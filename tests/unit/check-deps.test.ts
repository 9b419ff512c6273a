import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";

const script = join(import.meta.dirname, "../../scripts/check-deps.mjs");
let root: string | undefined;

function tree(files: Record<string, string>): string {
  root = mkdtempSync(join(tmpdir(), "mvm-deps-"));
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return root;
}

function check(dir: string) {
  const r = spawnSync(process.execPath, [script, dir], { encoding: "utf8" });
  return { status: r.status, stderr: r.stderr };
}

afterEach(() => {
  if (root) rmSync(root, { recursive: true, force: true });
  root = undefined;
});

describe("dependency direction check", () => {
  it("accepts imports that point inward", () => {
    const dir = tree({
      "src/core/a.ts": 'import { b } from "./b.js";\n',
      "src/core/b.ts": "export const b = 1;\n",
      "src/runtime/x.ts": 'import type { b } from "../core/b.js";\nimport { readFile } from "node:fs";\n',
      "src/cli/main.ts": 'import "../runtime/x.js";\nimport "../../gen/mvm/v1/x_pb.js";\n',
      "gen/mvm/v1/x_pb.ts": "",
    });
    expect(check(dir).status).toBe(0);
  });

  it("refuses core importing node:*, a package, runtime or gen", () => {
    const dir = tree({
      "src/core/a.ts": [
        'import { readFile } from "node:fs";',
        'import yargs from "yargs";',
        'import { x } from "../runtime/x.js";',
        'export { y } from "../../gen/mvm/v1/y_pb.js";',
      ].join("\n"),
      "src/runtime/x.ts": "export const x = 1;\n",
    });
    const r = check(dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('src/core may not import "node:fs"');
    expect(r.stderr).toContain('src/core may not import "yargs"');
    expect(r.stderr).toContain("src/core may not import src/runtime");
    expect(r.stderr).toContain("src/core may not import generated code");
  });

  it("refuses runtime importing a composition root and api importing runtime", () => {
    const dir = tree({
      "src/runtime/x.ts": 'import { run } from "../cli/main.js";\n',
      "src/api/h.ts": 'import { x } from "../runtime/x.js";\n',
      "src/cli/main.ts": "export const run = 1;\n",
    });
    const r = check(dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("src/runtime may not import src/cli");
    expect(r.stderr).toContain("src/api may not import src/runtime");
  });

  it("passes on this repository", () => {
    expect(check(join(import.meta.dirname, "../..")).stderr).toBe("");
  });
});
