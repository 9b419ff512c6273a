// seccomp for Firecracker (SPEC §6.6). `default` keeps the filters built into Firecracker (no argument at all).
// `strict` hands Firecracker a compiled BPF filter with `--seccomp-filter`: either one given already compiled, or one
// compiled here from its JSON description with Firecracker's `seccompiler-bin`. Firecracker reads that file as
// compiled BPF, so a JSON file is refused wherever BPF is expected (the predecessor passed JSON and Firecracker
// rejected it at start).

import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { MvmError, failedPrecondition } from "../../core/errors.js";
import type { SeccompPolicy } from "../../core/model.js";
import { findOnPath } from "../host/host-facts.js";

export interface SeccompOptions {
  /** Default `default`; a launch spec may ask for `strict`. */
  policy?: SeccompPolicy;
  /** A filter already compiled by seccompiler-bin; preferred over `filterJson`. */
  filterBpf?: string | null;
  /** A filter description (Firecracker's JSON format) to compile with seccompiler-bin. */
  filterJson?: string | null;
  /** seccompiler-bin, looked up on PATH unless absolute. Default `seccompiler-bin`. */
  seccompilerBinary?: string;
  /** Target architecture given to seccompiler-bin. Default `x86_64`. */
  targetArch?: "x86_64" | "aarch64";
}

const COMPILE_TIMEOUT_MS = 30_000;

/** True when the bytes are a JSON document (what a filter description is), which can never be a compiled filter. */
export function looksLikeJson(bytes: Buffer): boolean {
  const text = bytes.subarray(0, Math.min(bytes.length, 1 << 20)).toString("utf8").trim();
  if (!(text.startsWith("{") || text.startsWith("["))) return false;
  try {
    JSON.parse(bytes.toString("utf8"));
    return true;
  } catch {
    return text.startsWith("{\"") || text.startsWith("{\n");
  }
}

async function requireCompiledFilter(path: string, field: string): Promise<void> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw failedPrecondition(`seccomp strict: ${field} ${path} cannot be read: ${(e as Error).message}`);
  }
  if (bytes.length === 0) throw failedPrecondition(`seccomp strict: ${field} ${path} is empty, not a compiled bpf filter`);
  if (looksLikeJson(bytes)) {
    throw failedPrecondition(
      `seccomp strict: ${field} ${path} is json, but firecracker needs a compiled bpf filter: compile it with seccompiler-bin`,
    );
  }
}

/**
 * The compiled filter to pass to Firecracker for `policy`, or null for Firecracker's built-in filters. A compiled
 * filter is written into `workDir`. Fails with a clear reason when `strict` cannot be honoured; never falls back to
 * weaker filtering.
 */
export async function resolveSeccompFilter(policy: SeccompPolicy, options: SeccompOptions, workDir: string): Promise<string | null> {
  if (policy === "default") return null;
  if (options.filterBpf) {
    await requireCompiledFilter(options.filterBpf, "filter_bpf");
    return options.filterBpf;
  }
  if (!options.filterJson) {
    throw failedPrecondition(
      "seccomp strict: no filter configured: give a compiled bpf filter (filter_bpf) or a json description and seccompiler-bin (filter_json)",
    );
  }
  const binary = options.seccompilerBinary ?? "seccompiler-bin";
  const resolved = binary.startsWith("/") ? binary : await findOnPath(binary);
  if (resolved === null || !(await stat(resolved).then((s) => s.isFile(), () => false))) {
    throw failedPrecondition(`seccomp strict: ${binary} is not installed, so filter_json ${options.filterJson} cannot be compiled to bpf`);
  }
  const output = join(workDir, "seccomp-filter.bpf");
  const result = await execa(
    resolved,
    ["--input-file", options.filterJson, "--target-arch", options.targetArch ?? "x86_64", "--output-file", output],
    { timeout: COMPILE_TIMEOUT_MS, reject: false, stdin: "ignore", all: true },
  );
  if (result.exitCode !== 0) {
    throw new MvmError("failed_precondition", `seccomp strict: seccompiler-bin failed (${result.exitCode ?? result.signal}): ${String(result.all ?? "").trim().slice(-500)}`);
  }
  await requireCompiledFilter(output, "compiled filter");
  return output;
}
