// Which kernel modules the initramfs loads, and in what order. Debian's package ships no modules.dep (depmod runs at
// install time), so dependencies are read from each module's own .modinfo section (`depends=`, `softdep=pre:`).

import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { elfSection } from "./elf.js";

/**
 * Modules the guest needs, each with the config symbol that says whether the kernel builds it in (`=y`: nothing to
 * load), as a module (`=m`) or not at all. Dependencies (virtio, virtio_ring, failover, net_failover, jbd2, ...) are
 * added from the modules' metadata.
 */
export const GUEST_MODULES: readonly { module: string; config: string; required: boolean }[] = [
  { module: "virtio_mmio", config: "CONFIG_VIRTIO_MMIO", required: true },
  { module: "virtio_blk", config: "CONFIG_VIRTIO_BLK", required: true },
  { module: "virtio_net", config: "CONFIG_VIRTIO_NET", required: true },
  { module: "ext4", config: "CONFIG_EXT4_FS", required: true },
  // The ACPI power button and its input events: the launcher's polite shutdown (QMP system_powerdown).
  { module: "button", config: "CONFIG_ACPI_BUTTON", required: false },
  { module: "evdev", config: "CONFIG_INPUT_EVDEV", required: false },
  // mvm's control port (virtio-serial), through which the host runs the guest's hooks.
  { module: "virtio_console", config: "CONFIG_VIRTIO_CONSOLE", required: false },
];

export type ConfigValue = "y" | "m" | "n";

/** `CONFIG_X=y|m` lines of a kernel config; a symbol that is absent or `is not set` reads as "n". */
export function parseKernelConfig(text: string): Map<string, ConfigValue> {
  const values = new Map<string, ConfigValue>();
  for (const line of text.split("\n")) {
    const m = /^(CONFIG_[A-Za-z0-9_]+)=([ym])$/.exec(line.trim());
    if (m !== null) values.set(m[1] as string, m[2] as ConfigValue);
  }
  return values;
}

/** The module names of GUEST_MODULES the kernel builds as modules; throws when a required one is missing entirely. */
export function modulesToLoad(config: Map<string, ConfigValue>): string[] {
  const wanted: string[] = [];
  const missing: string[] = [];
  for (const m of GUEST_MODULES) {
    const value = config.get(m.config) ?? "n";
    if (value === "m") wanted.push(m.module);
    else if (value === "n" && m.required) missing.push(m.config);
  }
  if (missing.length > 0) throw new Error(`kernel config: ${missing.join(", ")} must be built in or built as a module`);
  return wanted;
}

export interface ModuleMetadata {
  name: string;
  depends: string[];
  /** Modules the kernel would load before this one (`softdep=pre:`), where they exist as modules. */
  softPre: string[];
}

export function parseModinfo(section: Buffer): ModuleMetadata {
  let name = "";
  const depends: string[] = [];
  const softPre: string[] = [];
  for (const field of section.toString("latin1").split("\0")) {
    const eq = field.indexOf("=");
    if (eq < 0) continue;
    const key = field.slice(0, eq);
    const value = field.slice(eq + 1);
    if (key === "name") name = value;
    else if (key === "depends") depends.push(...value.split(",").filter((d) => d !== ""));
    else if (key === "softdep") {
      const pre = /(?:^|\s)pre:\s*([^:]*?)(?:\s+post:|$)/.exec(value);
      if (pre !== null) softPre.push(...(pre[1] as string).split(/\s+/).filter((d) => d !== ""));
    }
  }
  return { name, depends, softPre };
}

/** Module names use `_` where file names may use `-` (virtio-rng.ko is the module virtio_rng). */
export function canonicalModuleName(name: string): string {
  return name.replaceAll("-", "_");
}

export interface ModuleFile {
  name: string;
  /** Absolute path of the .ko, .ko.xz or .ko.zst file. */
  path: string;
}

/** Every module file under `<modulesDir>/kernel`, by canonical module name. */
export async function indexModules(modulesDir: string): Promise<Map<string, ModuleFile>> {
  const index = new Map<string, ModuleFile>();
  const entries = await readdir(join(modulesDir, "kernel"), { recursive: true, withFileTypes: true });
  for (const entry of entries) {
    if (!entry.isFile()) continue;
    const m = /^(.+)\.ko(\.xz|\.zst)?$/.exec(entry.name);
    if (m === null) continue;
    const name = canonicalModuleName(m[1] as string);
    index.set(name, { name, path: join(entry.parentPath, entry.name) });
  }
  return index;
}

/**
 * `wanted` and everything they depend on, each after its dependencies (the order insmod needs). `metadataOf` reads a
 * module's metadata; a dependency cycle or a dependency with no module file is an error.
 */
export async function orderModules(
  wanted: readonly string[],
  index: ReadonlyMap<string, ModuleFile>,
  metadataOf: (file: ModuleFile) => Promise<ModuleMetadata>,
): Promise<ModuleFile[]> {
  const ordered: ModuleFile[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  async function visit(name: string, neededBy: string | null, optional: boolean): Promise<void> {
    const canonical = canonicalModuleName(name);
    if (done.has(canonical)) return;
    if (visiting.has(canonical)) throw new Error(`kernel modules: dependency cycle through ${canonical}`);
    const file = index.get(canonical);
    if (file === undefined) {
      if (optional) return;
      throw new Error(`kernel modules: no module file for ${canonical}${neededBy === null ? "" : ` (needed by ${neededBy})`}`);
    }
    visiting.add(canonical);
    const meta = await metadataOf(file);
    for (const dep of meta.depends) await visit(dep, canonical, false);
    // A soft dependency may name an alias (e.g. crc32c) rather than a module; only real module names are followed.
    for (const dep of meta.softPre) await visit(dep, canonical, true);
    visiting.delete(canonical);
    done.add(canonical);
    ordered.push(file);
  }
  for (const name of wanted) await visit(name, null, false);
  return ordered;
}

/** Metadata of an uncompressed module held in memory. */
export function moduleMetadata(image: Buffer): ModuleMetadata {
  const section = elfSection(image, ".modinfo");
  if (section === null) throw new Error("module has no .modinfo section");
  return parseModinfo(section);
}

export async function readModuleImage(path: string, decompress: (path: string) => Promise<Buffer>): Promise<Buffer> {
  return path.endsWith(".ko") ? readFile(path) : decompress(path);
}
