// Turns project TypeScript modules into plain ESM JavaScript in a temp directory, so a test can run the real code in a
// child process started with bare `node` (no TS loader is installed) — e.g. to SIGKILL it mid-write. Relative imports
// are followed, and the repository layout is kept so they still resolve.

import { mkdir, mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import ts from "typescript";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

export interface TranspiledModules {
  /** Root of the output; `src/x/y.ts` is at `<outDir>/src/x/y.js`. */
  outDir: string;
  /** file:// URL of the output of `repoPath` (a path relative to the repository root, ending in .ts). */
  urlOf(repoPath: string): string;
  /** Absolute path of the output of `repoPath`. */
  pathOf(repoPath: string): string;
}

/** Transpiles `entries` (paths relative to the repository root) and every module they import relatively. */
export async function transpileModules(entries: string[], outDir?: string): Promise<TranspiledModules> {
  const out = outDir ?? (await mkdtemp(join(tmpdir(), "mvm-transpiled-")));
  await writeFile(join(out, "package.json"), `${JSON.stringify({ type: "module" })}\n`);
  const pending = entries.map((e) => resolve(REPO_ROOT, e));
  const done = new Set<string>();
  while (pending.length > 0) {
    const source = pending.pop() as string;
    if (done.has(source)) continue;
    done.add(source);
    const text = await readFile(source, "utf8");
    const result = ts.transpileModule(text, {
      fileName: source,
      reportDiagnostics: true,
      compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022, sourceMap: false },
    });
    const errors = result.diagnostics?.filter((d) => d.category === ts.DiagnosticCategory.Error) ?? [];
    if (errors.length > 0) {
      throw new Error(`transpiling ${source}: ${ts.flattenDiagnosticMessageText(errors[0]?.messageText, "\n")}`);
    }
    const target = outputPath(out, source);
    await mkdir(dirname(target), { recursive: true });
    await writeFile(target, result.outputText);
    for (const imported of ts.preProcessFile(result.outputText, true, false).importedFiles) {
      if (!imported.fileName.startsWith(".")) continue;
      pending.push(resolve(dirname(source), imported.fileName.replace(/\.js$/, ".ts")));
    }
  }
  return {
    outDir: out,
    pathOf: (repoPath) => outputPath(out, resolve(REPO_ROOT, repoPath)),
    urlOf: (repoPath) => pathToFileURL(outputPath(out, resolve(REPO_ROOT, repoPath))).href,
  };
}

function outputPath(outDir: string, source: string): string {
  const rel = relative(REPO_ROOT, source);
  if (rel.startsWith("..")) throw new Error(`${source} is outside the repository`);
  return join(outDir, rel.replace(/\.ts$/, ".js"));
}
