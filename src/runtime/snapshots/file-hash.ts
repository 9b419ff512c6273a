// SHA-256 of files on worker threads. A wake must check its snapshot before the VMM starts, side by side with
// preparing the network, cgroup and disks; hashing tens of MiB on the main thread (or through the thread pool in small
// reads, each a round trip back to it) competes with exactly that work. Workers read large blocks synchronously and
// keep their cores on the hash alone; they are started once and kept, unreferenced, so a hash costs no thread start.
//
// Besides the digest of the whole file, a pass records the digest of every `chunkBytes` chunk. The whole-file
// digest is inherently sequential; the chunk digests can be checked by several workers at once, and together they
// vouch for every byte just as well.

import os from "node:os";
import { Worker } from "node:worker_threads";

export interface FileDigest {
  sha256: string;
  sizeBytes: number;
  /** SHA-256 of each `chunkBytes` chunk, in order (the last may be shorter; none for an empty file). */
  chunkSha256s: string[];
}

/** Default chunk size of `hashFile`'s chunk digests. */
export const HASH_CHUNK_BYTES = 16 * 1024 * 1024;
const MIB = 1024 * 1024;
/** Chunks per snapshot file that `snapshotChunkBytes` aims at. */
const SNAPSHOT_CHUNKS = 64;

/**
 * Chunk size (whole MiB, at least 1) for the digests of a snapshot file of `sizeBytes`: about 64 chunks, so that the
 * workers checking them at wake get nearly equal shares. With a fixed 16 MiB, a 66 MiB stream made 5 chunks, split 3
 * to 2 between two workers: the wake waited on 48 MiB where 33 would do.
 */
export function snapshotChunkBytes(sizeBytes: number): number {
  return Math.max(1, Math.ceil(sizeBytes / SNAPSHOT_CHUNKS / MIB)) * MIB;
}

// Plain JavaScript run with `eval`, so the same code works from the compiled program and from the TypeScript tests.
// A request hashes the file from `start` (a multiple of chunkBytes) up to `end` (exclusive; -1: end of file).
const WORKER_SOURCE = `
const { parentPort } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const { openSync, readSync, closeSync } = require("node:fs");
const BLOCK = 4 * 1024 * 1024;
const buffer = Buffer.allocUnsafe(BLOCK);
parentPort.on("message", ({ id, path, start, end, chunkBytes, whole }) => {
  let fd = -1;
  try {
    fd = openSync(path, "r");
    const all = whole ? createHash("sha256") : null;
    const chunks = [];
    let chunk = createHash("sha256");
    let inChunk = 0;
    let position = start;
    for (;;) {
      let want = Math.min(BLOCK, chunkBytes - inChunk);
      if (end >= 0) want = Math.min(want, end - position);
      if (want <= 0) break;
      const got = readSync(fd, buffer, 0, want, position);
      if (got === 0) break;
      const bytes = buffer.subarray(0, got);
      if (all) all.update(bytes);
      chunk.update(bytes);
      inChunk += got;
      position += got;
      if (inChunk === chunkBytes) {
        chunks.push(chunk.digest("hex"));
        chunk = createHash("sha256");
        inChunk = 0;
      }
    }
    if (inChunk > 0) chunks.push(chunk.digest("hex"));
    parentPort.postMessage({ id, sha256: all ? all.digest("hex") : "", sizeBytes: position - start, chunkSha256s: chunks });
  } catch (e) {
    parentPort.postMessage({ id, error: { message: e.message, code: e.code } });
  } finally {
    if (fd >= 0) closeSync(fd);
  }
});
`;

interface HashRequest {
  path: string;
  start: number;
  end: number;
  chunkBytes: number;
  whole: boolean;
}

type WorkerReply =
  | { id: number; sha256: string; sizeBytes: number; chunkSha256s: string[] }
  | { id: number; error: { message: string; code?: string } };

interface Pending {
  resolve(digest: FileDigest): void;
  reject(error: Error): void;
}

interface HashWorker {
  thread: Worker;
  pending: Map<number, Pending>;
  /** Takes the worker out of the pool and fails everything it holds. */
  fail(error: Error): void;
}

/**
 * How long one request may take. Far beyond what reading a snapshot needs (hundreds of MB/s), but finite: a read that
 * hangs (a stuck network filesystem) must not hold a wake, and with it the tenant's lock, forever.
 */
export const HASH_REQUEST_TIMEOUT_MS = 10 * 60_000;

const POOL_SIZE = Math.max(1, Math.min(4, os.availableParallelism()));
const pool: HashWorker[] = [];
let nextId = 1;

function startWorker(): HashWorker {
  // No inherited node flags: the source is CommonJS, which --input-type=module or a loader would take for something else.
  const worker: HashWorker = {
    thread: new Worker(WORKER_SOURCE, { eval: true, execArgv: [] }),
    pending: new Map(),
    fail: (error) => fail(error),
  };
  worker.thread.on("message", (reply: WorkerReply) => {
    const waiter = worker.pending.get(reply.id);
    if (waiter === undefined) return;
    worker.pending.delete(reply.id);
    if ("error" in reply) waiter.reject(Object.assign(new Error(reply.error.message), { code: reply.error.code }));
    else waiter.resolve({ sha256: reply.sha256, sizeBytes: reply.sizeBytes, chunkSha256s: reply.chunkSha256s });
  });
  const fail = (error: Error) => {
    const at = pool.indexOf(worker);
    if (at >= 0) pool.splice(at, 1);
    for (const [id, waiter] of worker.pending) {
      worker.pending.delete(id);
      waiter.reject(error);
    }
  };
  worker.thread.on("error", fail);
  worker.thread.on("exit", (code) => fail(new Error(`a file hashing thread exited with code ${code}`)));
  // After the listeners: adding a "message" listener refs the thread again.
  worker.thread.unref();
  return worker;
}

/**
 * An idle worker, else the least busy. The whole pool is started on first use: a sleep hashes with one worker, and
 * the wake that follows finds every worker it shares chunks among already running (a start costs ~20 ms).
 */
function leastBusyWorker(): HashWorker {
  while (pool.length < POOL_SIZE) pool.push(startWorker());
  const idle = pool.find((w) => w.pending.size === 0);
  if (idle !== undefined) return idle;
  return pool.reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
}

function run(request: HashRequest, timeoutMs: number): Promise<FileDigest> {
  const worker = leastBusyWorker();
  const id = nextId++;
  // While a hash is in flight its thread keeps the process alive for the answer; idle, it must not.
  worker.thread.ref();
  // A thread stuck in a read cannot be interrupted: it is given up on (out of the pool, its requests failed) and
  // asked to terminate, which takes effect whenever the read returns.
  const timer = setTimeout(() => {
    worker.fail(new Error(`hashing ${request.path} took longer than ${timeoutMs} ms`));
    worker.thread.unref();
    void worker.thread.terminate().catch(() => undefined);
  }, timeoutMs);
  timer.unref();
  const settled = () => {
    clearTimeout(timer);
    if (worker.pending.size === 0) worker.thread.unref();
  };
  return new Promise<FileDigest>((resolve, reject) => {
    worker.pending.set(id, {
      resolve: (digest) => {
        settled();
        resolve(digest);
      },
      reject: (error) => {
        settled();
        reject(error);
      },
    });
    worker.thread.postMessage({ id, ...request });
  });
}

/** Whole-file SHA-256, size and chunk digests in one pass. Errors keep their `code` (ENOENT). */
export function hashFile(path: string, chunkBytes: number = HASH_CHUNK_BYTES, timeoutMs: number = HASH_REQUEST_TIMEOUT_MS): Promise<FileDigest> {
  return run({ path, start: 0, end: -1, chunkBytes, whole: true }, timeoutMs);
}

/**
 * The chunk digests of the first `sizeBytes` bytes of `path`, computed by several workers at once (contiguous runs
 * of chunks each), in order.
 */
export async function hashChunks(path: string, chunkBytes: number, sizeBytes: number, timeoutMs: number = HASH_REQUEST_TIMEOUT_MS): Promise<string[]> {
  const chunkCount = Math.ceil(sizeBytes / chunkBytes);
  const parts = Math.max(1, Math.min(POOL_SIZE, chunkCount));
  const perPart = Math.ceil(chunkCount / parts);
  const runs: Promise<FileDigest>[] = [];
  for (let first = 0; first < chunkCount; first += perPart) {
    const start = first * chunkBytes;
    const end = Math.min(sizeBytes, (first + perPart) * chunkBytes);
    runs.push(run({ path, start, end, chunkBytes, whole: false }, timeoutMs));
  }
  return (await Promise.all(runs)).flatMap((digest) => digest.chunkSha256s);
}
