// Rewrites records r0..rN-1 forever, in order, each to its next version, and prints `ack <index> <version>` once a
// write has returned. The crash test SIGKILLs it at a random moment.
// argv: <atomic-file.js URL> <records dir> <atomic|in-place> <payload bytes> <JSON array of current versions>
// `in-place` truncates and writes in chunks, like a naive writer; the test uses it to show it would catch tearing.

import { open } from "node:fs/promises";
import { join } from "node:path";
import { recordContent } from "./record-content.mjs";

const [atomicFileUrl, dir, mode, payloadArg, versionsArg] = process.argv.slice(2);
const { writeFileAtomic } = await import(atomicFileUrl);
const payloadBytes = Number(payloadArg);
const base = JSON.parse(versionsArg);
const CHUNK_BYTES = 16 * 1024;

async function writeInPlace(path, text) {
  const handle = await open(path, "w");
  try {
    const bytes = Buffer.from(text);
    for (let at = 0; at < bytes.length; at += CHUNK_BYTES) await handle.write(bytes, at, Math.min(CHUNK_BYTES, bytes.length - at));
  } finally {
    await handle.close();
  }
}

const write = mode === "in-place" ? writeInPlace : (path, text) => writeFileAtomic(path, text, { mode: 0o600 });
process.stdout.write("ready\n");
for (let round = 1; ; round++) {
  for (let i = 0; i < base.length; i++) {
    const version = base[i] + round;
    await write(join(dir, `r${i}.json`), recordContent(`r${i}`, version, payloadBytes));
    process.stdout.write(`ack ${i} ${version}\n`);
  }
}
