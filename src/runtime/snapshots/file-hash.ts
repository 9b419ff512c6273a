// SHA-256 of a whole file on a worker thread. A wake must check its snapshot's hash before the VMM starts, and does
// so side by side with preparing the network, cgroup and disks; hashing tens of MiB on the main thread (or through
// the thread pool in small reads, each a round trip back to it) competes with exactly that work, while a worker
// reading large blocks synchronously keeps a core busy on the hash alone. The worker is started once and kept,
// unreferenced, so a hash costs no thread start-up.

import { Worker } from "node:worker_threads";

export interface FileDigest {
  sha256: string;
  sizeBytes: number;
}

// Plain JavaScript run with `eval`, so the same code works from the compiled program and from the TypeScript tests.
const WORKER_SOURCE = `
const { parentPort } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const { openSync, readSync, closeSync } = require("node:fs");
const BLOCK = 4 * 1024 * 1024;
const buffer = Buffer.allocUnsafe(BLOCK);
parentPort.on("message", ({ id, path }) => {
  let fd = -1;
  try {
    fd = openSync(path, "r");
    const hash = createHash("sha256");
    let sizeBytes = 0;
    for (;;) {
      const got = readSync(fd, buffer, 0, BLOCK, null);
      if (got === 0) break;
      hash.update(buffer.subarray(0, got));
      sizeBytes += got;
    }
    parentPort.postMessage({ id, sha256: hash.digest("hex"), sizeBytes });
  } catch (e) {
    parentPort.postMessage({ id, error: { message: e.message, code: e.code } });
  } finally {
    if (fd >= 0) closeSync(fd);
  }
});
`;

interface Pending {
  resolve(digest: FileDigest): void;
  reject(error: Error): void;
}

type WorkerReply = { id: number; sha256: string; sizeBytes: number } | { id: number; error: { message: string; code?: string } };

let worker: Worker | null = null;
let nextId = 1;
const pending = new Map<number, Pending>();

function hashWorker(): Worker {
  if (worker !== null) return worker;
  const started = new Worker(WORKER_SOURCE, { eval: true });
  started.unref();
  started.on("message", (reply: WorkerReply) => {
    const waiter = pending.get(reply.id);
    if (waiter === undefined) return;
    pending.delete(reply.id);
    if ("error" in reply) waiter.reject(Object.assign(new Error(reply.error.message), { code: reply.error.code }));
    else waiter.resolve({ sha256: reply.sha256, sizeBytes: reply.sizeBytes });
  });
  const fail = (error: Error) => {
    if (worker === started) worker = null;
    for (const [id, waiter] of pending) {
      pending.delete(id);
      waiter.reject(error);
    }
  };
  started.on("error", fail);
  started.on("exit", (code) => fail(new Error(`the file hashing thread exited with code ${code}`)));
  worker = started;
  return started;
}

/** SHA-256 (hex) and size of the file at `path`, computed off the main thread. Errors keep their `code` (ENOENT). */
export function hashFile(path: string): Promise<FileDigest> {
  const target = hashWorker();
  const id = nextId++;
  // While a hash is in flight the thread keeps the process alive for its answer; idle, it must not.
  target.ref();
  const settled = () => {
    if (pending.size === 0) target.unref();
  };
  return new Promise<FileDigest>((resolve, reject) => {
    pending.set(id, {
      resolve: (digest) => {
        settled();
        resolve(digest);
      },
      reject: (error) => {
        settled();
        reject(error);
      },
    });
    target.postMessage({ id, path });
  });
}
