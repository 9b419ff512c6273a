#!/usr/bin/env node
// Fails when a source file imports against the dependency direction of ARCHITECTURE.md:
//   core      → core only (no node:*, no npm packages, no gen/)
//   platform  → platform, node:*, npm packages
//   api       → api, core, platform, gen/, node:*, npm packages
//   runtime   → runtime, core, platform, node:*, npm packages
//   agent, coordinator, cli (composition roots) → anything
// Usage: node scripts/check-deps.mjs [repo-root]   (exit 1 and one line per violation when any)

import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";

const LAYERS = ["core", "platform", "api", "runtime", "agent", "coordinator", "cli"];
const ALLOWED = {
  core: { layers: ["core"], gen: false, external: false },
  platform: { layers: ["platform"], gen: false, external: true },
  api: { layers: ["api", "core", "platform"], gen: true, external: true },
  runtime: { layers: ["runtime", "core", "platform"], gen: false, external: true },
  agent: { layers: LAYERS, gen: true, external: true },
  coordinator: { layers: LAYERS, gen: true, external: true },
  cli: { layers: LAYERS, gen: true, external: true },
};

const IMPORT_PATTERNS = [
  /\bimport\s+(?:type\s+)?[^'"]*?\sfrom\s*["']([^"']+)["']/g,
  /\bexport\s+(?:type\s+)?[^'"]*?\sfrom\s*["']([^"']+)["']/g,
  /\bimport\s*["']([^"']+)["']/g,
  /\bimport\s*\(\s*["']([^"']+)["']\s*\)/g,
];

function sourceFiles(dir) {
  const out = [];
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) out.push(...sourceFiles(path));
    else if (/\.(ts|mts|js|mjs)$/.test(entry) && !entry.endsWith(".d.ts")) out.push(path);
  }
  return out;
}

function stripComments(text) {
  return text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/(^|[^:"'`])\/\/.*$/gm, "$1");
}

export function findViolations(root) {
  const src = join(root, "src");
  const gen = join(root, "gen");
  const violations = [];
  for (const file of sourceFiles(src)) {
    const layer = relative(src, file).split(sep)[0];
    const rules = ALLOWED[layer];
    const where = relative(root, file);
    if (!rules) {
      violations.push(`${where}: src/${layer} is not a known layer (${LAYERS.join(", ")})`);
      continue;
    }
    const text = stripComments(readFileSync(file, "utf8"));
    const specifiers = new Set();
    for (const pattern of IMPORT_PATTERNS) for (const m of text.matchAll(pattern)) specifiers.add(m[1]);
    for (const spec of specifiers) {
      if (!spec.startsWith(".")) {
        if (!rules.external) violations.push(`${where}: src/${layer} may not import "${spec}" (no node:* or packages)`);
        continue;
      }
      const target = resolve(dirname(file), spec);
      if (target === gen || target.startsWith(gen + sep)) {
        if (!rules.gen) violations.push(`${where}: src/${layer} may not import generated code "${spec}"`);
        continue;
      }
      if (!target.startsWith(src + sep)) {
        violations.push(`${where}: import "${spec}" leaves src/`);
        continue;
      }
      const targetLayer = relative(src, target).split(sep)[0];
      if (!rules.layers.includes(targetLayer)) {
        violations.push(`${where}: src/${layer} may not import src/${targetLayer} ("${spec}")`);
      }
    }
  }
  return violations;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const root = resolve(process.argv[2] ?? ".");
  const violations = findViolations(root);
  for (const v of violations) console.error(`dependency rule: ${v}`);
  if (violations.length > 0) {
    console.error(`${violations.length} import(s) against the dependency direction`);
    process.exit(1);
  }
  console.log("dependency direction: ok");
}
