// `mvm bootstrap`: installs the host packages mvm needs with the host's package manager (apt, or dnf where found).

import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { findOnPath } from "./host-facts.js";

export type PackageManager = "apt" | "dnf";

const INSTALL_TIMEOUT_MS = 20 * 60_000;

function packageListPath(manager: PackageManager): string {
  const name = manager === "apt" ? "debian-host-packages.txt" : "fedora-host-packages.txt";
  // src/runtime/host/ and dist/src/runtime/host/ both resolve to the repository's packaging/ folder.
  const here = fileURLToPath(import.meta.url);
  const root = here.includes("/dist/src/") ? here.split("/dist/src/")[0]! : here.split("/src/")[0]!;
  return `${root}/packaging/${name}`;
}

export async function hostPackages(manager: PackageManager): Promise<string[]> {
  const text = await readFile(packageListPath(manager), "utf8");
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
}

export async function detectPackageManager(): Promise<PackageManager | null> {
  if (await findOnPath("apt-get")) return "apt";
  if (await findOnPath("dnf")) return "dnf";
  return null;
}

/** Runs the install, streaming the package manager's output to `log`; throws with its stderr on failure. */
export async function installHostPackages(manager: PackageManager, log: (line: string) => void): Promise<string[]> {
  const packages = await hostPackages(manager);
  const steps: Array<[string, string[]]> =
    manager === "apt"
      ? [
          ["apt-get", ["update", "-q"]],
          ["apt-get", ["install", "-y", "-q", "--no-install-recommends", ...packages]],
        ]
      : [["dnf", ["install", "-y", ...packages]]];
  for (const [file, args] of steps) {
    log(`+ ${file} ${args.join(" ")}\n`);
    const child = execa(file, args, {
      timeout: INSTALL_TIMEOUT_MS,
      reject: false,
      env: { DEBIAN_FRONTEND: "noninteractive" },
      all: true,
    });
    child.all?.on("data", (d: Buffer) => log(d.toString()));
    const result = await child;
    if (result.exitCode !== 0) {
      throw new Error(`${file} ${args[0]} failed with exit code ${result.exitCode}: ${String(result.stderr).trim().split("\n").slice(-3).join(" ")}`);
    }
  }
  return packages;
}
