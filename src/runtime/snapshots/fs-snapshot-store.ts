// The `SnapshotStore` port on the local filesystem: a snapshot directory holds the VMM's files (the memory file or
// QEMU migration stream, compressed with the lz4 or zstd command-line tools when asked) and `meta.json`, written last
// and atomically, so a directory without it is a torn snapshot that is never restored.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { chmod, mkdir, open, readdir, readFile, rename, rm, stat } from "node:fs/promises";
import os from "node:os";
import { basename, dirname, join } from "node:path";
import { pipeline } from "node:stream/promises";
import type {
  HostCompatibility,
  OpenedSnapshot,
  SnapshotMeta,
  SnapshotSealInfo,
  SetAsideSnapshot,
  SnapshotStore,
  VmSnapshotFiles,
} from "../../core/data-plane-ports.js";
import { failedPrecondition, MvmError } from "../../core/errors.js";
import { COMPRESSIONS, type Compression } from "../../core/model.js";
import { readJsonRecord, syncDirectory, unlinkIfPresent, writeFileAtomic } from "../store/atomic-file.js";
import { errnoCode } from "../store/process-identity.js";
import { hashChunks, hashFile, snapshotChunkBytes } from "./file-hash.js";

export const SNAPSHOT_META_FILE = "meta.json";
/** Decompressed copy of a compressed memory file, made for one restore and removed after it. */
const RESTORE_COPY = "memory.restore";

export interface CompressionTool {
  binary: string;
  /** Arguments that write the compressed form of stdin to stdout. */
  compress: string[];
  /** Arguments that decompress file `input` into file `output`. */
  decompress(input: string, output: string): string[];
  extension: string;
}

/** Fast levels: sleep time matters more than the last megabytes (VM-NOTES: zstd -1 19 MB, lz4 -1 26 MB of 70). */
export const COMPRESSION_TOOLS: Readonly<Record<Exclude<Compression, "none">, CompressionTool>> = {
  lz4: { binary: "lz4", compress: ["-1", "-q", "-c"], decompress: (i, o) => ["-d", "-q", "-f", i, o], extension: "lz4" },
  zstd: { binary: "zstd", compress: ["-1", "-q", "-T0", "-c"], decompress: (i, o) => ["-d", "-q", "-f", i, "-o", o], extension: "zst" },
};

export interface FsSnapshotStoreOptions {
  /** Where the CPU model is read. Default /proc/cpuinfo. */
  cpuinfoPath?: string;
  /** Host kernel release. Default `os.release()`. */
  kernelRelease?: () => string;
}

export function createFsSnapshotStore(options: FsSnapshotStoreOptions = {}): SnapshotStore {
  const cpuinfoPath = options.cpuinfoPath ?? "/proc/cpuinfo";
  const kernelRelease = options.kernelRelease ?? (() => os.release());
  let cpuModel: Promise<string> | null = null;

  return {
    async create(dir) {
      await rm(dir, { recursive: true, force: true });
      // Another remover (a wake's background delete) may be at the same files: whatever stays is deleted next time.
      await removeSetAside(dir).catch(() => undefined);
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await chmod(dir, 0o700);
    },

    async hostStamp(vmmVersion): Promise<HostCompatibility> {
      cpuModel ??= readCpuModel(cpuinfoPath);
      return { cpuModel: await cpuModel, hostKernel: kernelRelease(), vmmVersion };
    },

    async seal(dir, files, info) {
      const memory = await sealFile(files.memoryFile, info.compression);
      const state = files.stateFile === null ? null : { name: basename(files.stateFile), ...(await hashFile(files.stateFile)) };
      await syncDirectory(dir);
      const meta: SnapshotMeta = {
        type: files.type,
        hypervisor: info.hypervisor,
        hypervisorVersion: info.host.vmmVersion,
        revision: info.revision,
        memMib: info.memMib,
        compression: info.compression,
        memoryFile: memory.name,
        stateFile: state?.name ?? null,
        memorySizeBytes: memory.sizeBytes,
        stateSizeBytes: state?.sizeBytes ?? 0,
        uncompressedSizeBytes: memory.uncompressedSizeBytes,
        sha256: memory.sha256,
        memoryChunkBytes: memory.chunkBytes,
        memoryChunkSha256s: memory.chunkSha256s,
        stateSha256: state?.sha256 ?? "",
        createdAt: info.createdAt,
        host: info.host,
      };
      await writeFileAtomic(join(dir, SNAPSHOT_META_FILE), `${JSON.stringify(meta, null, 2)}\n`);
      return meta;
    },

    async readMeta(dir) {
      const path = join(dir, SNAPSHOT_META_FILE);
      const read = await readJsonRecord(path);
      if (read.status === "missing") return null;
      if (read.status === "unparseable") throw failedPrecondition(`snapshot meta ${path} ${read.reason}`);
      const problems = metaProblems(read.value);
      if (problems.length > 0) throw failedPrecondition(`snapshot meta ${path}: ${problems.join("; ")}`);
      return read.value as SnapshotMeta;
    },

    async open(dir, meta): Promise<OpenedSnapshot> {
      const memoryPath = join(dir, meta.memoryFile);
      const chunks =
        meta.memoryChunkBytes !== undefined && meta.memoryChunkSha256s !== undefined
          ? { chunkBytes: meta.memoryChunkBytes, sha256s: meta.memoryChunkSha256s }
          : null;
      await verify(memoryPath, meta.memorySizeBytes, meta.sha256, chunks);
      const statePath = meta.stateFile === null ? null : join(dir, meta.stateFile);
      if (statePath !== null) await verify(statePath, meta.stateSizeBytes, meta.stateSha256, null);
      const files = (memoryFile: string): VmSnapshotFiles => ({ type: meta.type, memoryFile, stateFile: statePath, baseMemoryFile: null });
      if (meta.compression === "none") return { files: files(memoryPath), release: async () => {} };
      const copy = join(dir, RESTORE_COPY);
      const tool = COMPRESSION_TOOLS[meta.compression];
      try {
        await runTool(tool.binary, tool.decompress(memoryPath, copy));
        await chmod(copy, 0o600);
      } catch (e) {
        await unlinkIfPresent(copy);
        throw new MvmError("failed_precondition", `snapshot ${memoryPath}: ${meta.compression} cannot decompress it: ${(e as Error).message}`, [], { cause: e });
      }
      return { files: files(copy), release: () => unlinkIfPresent(copy) };
    },

    async diskBytes(dir) {
      const prefix = `.${basename(dir)}${SET_ASIDE_MARK}`;
      const leftovers = (await readdir(dirname(dir)).catch(() => [] as string[])).filter((n) => n.startsWith(prefix));
      const own = await treeBytes(dir);
      // A set-aside copy left by a process that died before purging it goes with the next remove: counted here.
      const aside = (await Promise.all(leftovers.map((n) => treeBytes(join(dirname(dir), n))))).reduce<number>((sum, b) => sum + (b ?? 0), 0);
      return own === null && leftovers.length === 0 ? null : (own ?? 0) + aside;
    },

    async remove(dir) {
      const aside = await setAside(dir);
      // Unlinking files as large as the guest's memory would cost the caller ~15 ms.
      void aside.purge().catch(() => undefined);
    },

    setAside,
  };
}

const SET_ASIDE_MARK = ".removing-";

/**
 * Renamed aside, so the directory is gone from its place at once. A process that exits before purging leaves the
 * set-aside directory, which the next create, remove or setAside of the same snapshot deletes.
 */
async function setAside(dir: string): Promise<SetAsideSnapshot> {
  const aside = setAsideName(dir);
  try {
    await rename(dir, aside);
  } catch (e) {
    if (errnoCode(e) !== "ENOENT") throw e;
  }
  return { purge: () => removeSetAside(dir) };
}

function setAsideName(dir: string): string {
  return join(dirname(dir), `.${basename(dir)}${SET_ASIDE_MARK}${randomBytes(6).toString("hex")}`);
}

/** Allocated bytes of the files in `dir` and below; null when `dir` does not exist. */
async function treeBytes(dir: string): Promise<number | null> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (e) {
    if (errnoCode(e) === "ENOENT") return null;
    throw e;
  }
  let total = 0;
  for (const e of entries) {
    const path = join(dir, e.name);
    if (e.isDirectory()) total += (await treeBytes(path)) ?? 0;
    else total += await stat(path).then((st) => st.blocks * 512, () => 0);
  }
  return total;
}

/** Deletes every set-aside copy of the snapshot directory `dir`. */
async function removeSetAside(dir: string): Promise<void> {
  const prefix = `.${basename(dir)}${SET_ASIDE_MARK}`;
  const names = await readdir(dirname(dir)).catch(() => [] as string[]);
  await Promise.all(names.filter((n) => n.startsWith(prefix)).map((n) => rm(join(dirname(dir), n), { recursive: true, force: true })));
}

async function readCpuModel(path: string): Promise<string> {
  const text = await readFile(path, "utf8").catch(() => "");
  const line = text.split("\n").find((l) => /^(model name|Processor|cpu model)\s*:/.test(l));
  return line?.split(":").slice(1).join(":").trim() ?? "unknown";
}

interface SealedFile {
  name: string;
  sizeBytes: number;
  uncompressedSizeBytes: number;
  sha256: string;
  chunkBytes: number;
  chunkSha256s: string[];
}

/** Makes `path` durable, compressed in place when asked, and hashes what is stored. */
async function sealFile(path: string, compression: Compression): Promise<SealedFile> {
  const uncompressedSizeBytes = (await stat(path)).size;
  let stored = path;
  if (compression === "none") await fsyncFile(path);
  else stored = await compressReplacing(path, COMPRESSION_TOOLS[compression]);
  // Read back from the page cache on the hashing threads, which also record the chunk digests.
  const chunkBytes = snapshotChunkBytes((await stat(stored)).size);
  const digest = await hashFile(stored, chunkBytes);
  return { name: basename(stored), uncompressedSizeBytes, chunkBytes, ...digest };
}

/** Writes `path` compressed beside it, durably, then removes `path`; returns the compressed file's path. */
async function compressReplacing(path: string, tool: CompressionTool): Promise<string> {
  const output = `${path}.${tool.extension}`;
  const child = spawn(tool.binary, [...tool.compress, path], { stdio: ["ignore", "pipe", "pipe"], timeout: TOOL_TIMEOUT_MS, killSignal: "SIGKILL" });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const exited = new Promise<number>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code, signal) => (signal === null ? resolve(code ?? -1) : reject(new Error(toolEndedBy(tool.binary, signal)))));
  });
  try {
    await pipeline(child.stdout, createWriteStream(output, { mode: 0o600 }));
    const code = await exited;
    if (code !== 0) throw new Error(`${tool.binary} exited ${code}: ${stderr.trim()}`);
    await fsyncFile(output);
  } catch (e) {
    child.kill("SIGKILL");
    await unlinkIfPresent(output);
    throw new MvmError("unavailable", `compressing snapshot ${path} with ${tool.binary}: ${(e as Error).message}`, [], { cause: e });
  }
  await unlinkIfPresent(path);
  return output;
}

async function fsyncFile(path: string): Promise<void> {
  const handle = await open(path, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * The stored file must be exactly what was sealed: same size and SHA-256 — checked chunk by chunk on several cores
 * when the meta records chunk digests, else as one digest.
 */
async function verify(path: string, sizeBytes: number, sha256: string, chunks: { chunkBytes: number; sha256s: string[] } | null): Promise<void> {
  const found = await stat(path).catch(() => null);
  if (found === null) throw failedPrecondition(`snapshot file ${path} is missing`);
  if (found.size !== sizeBytes) {
    throw failedPrecondition(`snapshot file ${path} is corrupt: ${found.size} bytes, its meta records ${sizeBytes}`);
  }
  if (chunks !== null) {
    const actual = await hashChunks(path, chunks.chunkBytes, sizeBytes);
    const bad = actual.findIndex((digest, i) => digest !== chunks.sha256s[i]);
    if (bad >= 0) {
      const from = bad * chunks.chunkBytes;
      const to = Math.min(sizeBytes, from + chunks.chunkBytes);
      throw failedPrecondition(
        `snapshot file ${path} is corrupt: sha256 of bytes ${from}-${to} is ${actual[bad]}, its meta records ${chunks.sha256s[bad]}`,
      );
    }
    return;
  }
  const actual = await hashFile(path);
  if (actual.sha256 !== sha256) {
    throw failedPrecondition(`snapshot file ${path} is corrupt: sha256 ${actual.sha256}, its meta records ${sha256}`);
  }
}

/**
 * How long lz4 or zstd may take on one snapshot before it is taken as stuck and killed: far beyond what the largest
 * guest needs at their fast levels (hundreds of MB/s).
 */
const TOOL_TIMEOUT_MS = 600_000;

function toolEndedBy(binary: string, signal: NodeJS.Signals): string {
  return signal === "SIGKILL" ? `${binary} did not finish within ${TOOL_TIMEOUT_MS / 1000} s and was killed` : `${binary} was ended by ${signal}`;
}

function runTool(binary: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, { stdio: ["ignore", "ignore", "pipe"], timeout: TOOL_TIMEOUT_MS, killSignal: "SIGKILL" });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.once("error", reject);
    child.once("close", (code, signal) => {
      if (signal !== null) reject(new Error(toolEndedBy(binary, signal)));
      else if (code === 0) resolve();
      else reject(new Error(`${binary} exited ${code}: ${stderr.trim()}`));
    });
  });
}

const HEX64 = /^[0-9a-f]{64}$/;
const FILE_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/** What is wrong with a parsed meta file; file names must stay inside the snapshot directory. */
export function metaProblems(value: unknown): string[] {
  if (typeof value !== "object" || value === null) return ["is not a json object"];
  const m = value as Record<string, unknown>;
  const problems: string[] = [];
  const need = (field: string, ok: boolean, rule: string) => {
    if (!ok) problems.push(`${field} ${rule}`);
  };
  need("type", m.type === "full" || m.type === "diff", "must be full or diff");
  need("hypervisor", m.hypervisor === "qemu" || m.hypervisor === "firecracker", "must be qemu or firecracker");
  need("compression", (COMPRESSIONS as readonly unknown[]).includes(m.compression), "must be none, lz4 or zstd");
  need("memoryFile", typeof m.memoryFile === "string" && FILE_NAME.test(m.memoryFile) && m.memoryFile !== SNAPSHOT_META_FILE, "must be a plain file name");
  need("stateFile", m.stateFile === null || (typeof m.stateFile === "string" && FILE_NAME.test(m.stateFile)), "must be null or a plain file name");
  need("sha256", typeof m.sha256 === "string" && HEX64.test(m.sha256), "must be 64 lowercase hex digits");
  for (const field of ["memMib", "memorySizeBytes", "stateSizeBytes", "uncompressedSizeBytes"]) {
    need(field, Number.isSafeInteger(m[field]) && (m[field] as number) >= 0, "must be a non-negative integer");
  }
  for (const field of ["revision", "hypervisorVersion", "createdAt", "stateSha256"]) need(field, typeof m[field] === "string", "must be a string");
  const chunked = m.memoryChunkBytes !== undefined || m.memoryChunkSha256s !== undefined;
  if (chunked) {
    const chunkBytes = m.memoryChunkBytes;
    need("memoryChunkBytes", Number.isSafeInteger(chunkBytes) && (chunkBytes as number) > 0, "must be a positive integer when chunk digests are recorded");
    const expectedChunks = Number.isSafeInteger(chunkBytes) && (chunkBytes as number) > 0 && Number.isSafeInteger(m.memorySizeBytes)
      ? Math.ceil((m.memorySizeBytes as number) / (chunkBytes as number))
      : -1;
    need(
      "memoryChunkSha256s",
      Array.isArray(m.memoryChunkSha256s) &&
        m.memoryChunkSha256s.every((d) => typeof d === "string" && HEX64.test(d)) &&
        m.memoryChunkSha256s.length === expectedChunks,
      "must list one 64-hex-digit digest per memoryChunkBytes chunk of the memory file",
    );
  }
  const host = m.host as Record<string, unknown> | undefined;
  need("host", typeof host === "object" && host !== null && ["cpuModel", "hostKernel", "vmmVersion"].every((k) => typeof host[k] === "string"), "must hold cpuModel, hostKernel and vmmVersion");
  return problems;
}
