// Runs the built `mvm` binary as a user would, against a data root of the test's own.

import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";

export const REPO_ROOT = join(import.meta.dirname, "../..");
const BIN = join(REPO_ROOT, "bin/mvm");

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runMvm(args: string[], options: { dataDir: string; env?: NodeJS.ProcessEnv; input?: string }): CliResult {
  const r = spawnSync(process.execPath, [BIN, "--data-dir", options.dataDir, ...args], {
    encoding: "utf8",
    env: { ...process.env, ...options.env },
    input: options.input,
    timeout: 30_000,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export function tempDataDir(): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), "mvm-cli-"));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/** Every file under `dir` with a hash of its content: equal fingerprints mean nothing was written. */
export function fingerprint(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const entry of readdirSync(d)) {
      const p = join(d, entry);
      const st = statSync(p);
      if (st.isDirectory()) {
        out[`${relative(dir, p)}/`] = "dir";
        walk(p);
      } else {
        out[relative(dir, p)] = createHash("sha256").update(readFileSync(p)).digest("hex");
      }
    }
  };
  walk(dir);
  return out;
}
