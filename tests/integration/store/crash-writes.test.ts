// SPEC §5/§11: kill -9 of a writer at any moment leaves every record whole — the old version or the new one, never
// torn, never missing. A child process running the real writeFileAtomic (transpiled from src/) rewrites records in a
// loop and is SIGKILLed 200 times at random moments; after each kill every record is checked byte for byte.

import { spawn } from "node:child_process";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseTempName, removeAbandonedTempFiles, writeFileAtomic } from "../../../src/runtime/store/atomic-file.js";
import { transpileModules } from "../../helpers/transpile.js";
import type { TranspiledModules } from "../../helpers/transpile.js";
import { recordContent } from "./record-content.mjs";
import { seededRandom } from "../../helpers/seeded-random.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const WRITER = join(HERE, "writer-child.mjs");
const KILLS = 200;
const RECORDS = 5;
/** Large enough that a write is many syscalls and pages, so a non-atomic write could be caught half done. */
const PAYLOAD_BYTES = 128 * 1024;
const MAX_KILL_DELAY_MS = 30;


interface KillOutcome {
  /** What is wrong with the records after the kill; empty when every record is whole and old or new. */
  problems: string[];
  /** Versions on disk now (the base for the next round). */
  versions: number[];
  /** Whether the kill landed while a temp file existed (a write was under way). */
  writeInFlight: boolean;
  acks: number;
}

let modules: TranspiledModules;
let scratch: string;

beforeAll(async () => {
  modules = await transpileModules(["src/runtime/store/atomic-file.ts"]);
  scratch = await mkdtemp(join(tmpdir(), "mvm-crash-"));
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
  await rm(modules.outDir, { recursive: true, force: true });
});

async function seedRecords(dir: string): Promise<number[]> {
  const versions = Array.from({ length: RECORDS }, () => 0);
  for (let i = 0; i < RECORDS; i++) await writeFileAtomic(join(dir, `r${i}.json`), recordContent(`r${i}`, 0, PAYLOAD_BYTES));
  return versions;
}

/** Starts a writer, kills it `killDelayMs` after it reports ready, and checks what it left. */
async function killWriterOnce(dir: string, mode: "atomic" | "in-place", base: number[], killDelayMs: number): Promise<KillOutcome> {
  const child = spawn(
    process.execPath,
    [WRITER, modules.urlOf("src/runtime/store/atomic-file.ts"), dir, mode, String(PAYLOAD_BYTES), JSON.stringify(base)],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let stdout = "";
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("close", (code, signal) => resolve({ code, signal })),
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
      if (stdout.startsWith("ready\n")) resolve();
    });
    child.on("close", () => reject(new Error(`writer exited before it was ready: ${stderr}`)));
  });
  await new Promise((r) => setTimeout(r, killDelayMs));
  child.kill("SIGKILL");
  const { code, signal } = await closed;
  if (signal !== "SIGKILL") throw new Error(`writer ended by itself (code ${code}) before the kill: ${stderr}`);

  // Acks are in order; the write after the last acked one is the only one that may have been under way.
  const acked = [...base];
  let lastAcked = -1;
  let acks = 0;
  for (const line of stdout.split("\n")) {
    const m = /^ack (\d+) (\d+)$/.exec(line);
    if (m === null) continue;
    lastAcked = Number(m[1]);
    acked[lastAcked] = Number(m[2]);
    acks++;
  }
  const inFlight = (lastAcked + 1) % RECORDS;

  const problems: string[] = [];
  const versions: number[] = [];
  for (let i = 0; i < RECORDS; i++) {
    const id = `r${i}`;
    const allowed = i === inFlight ? [acked[i] as number, (acked[i] as number) + 1] : [acked[i] as number];
    let text: string;
    try {
      text = await readFile(join(dir, `${id}.json`), "utf8");
    } catch (e) {
      problems.push(`${id}: missing (${(e as Error).message})`);
      versions.push(allowed[0] as number);
      continue;
    }
    let version: unknown;
    try {
      version = (JSON.parse(text) as { version: unknown }).version;
    } catch {
      problems.push(`${id}: torn, not JSON (${text.length} bytes)`);
      versions.push(allowed[0] as number);
      continue;
    }
    if (typeof version !== "number" || !allowed.includes(version)) {
      problems.push(`${id}: version ${String(version)}, expected one of ${allowed.join(", ")}`);
    } else if (text !== recordContent(id, version, PAYLOAD_BYTES)) {
      problems.push(`${id}: content of version ${version} is torn`);
    }
    versions.push(typeof version === "number" ? version : (allowed[0] as number));
  }

  const names = await readdir(dir);
  const strays = names.filter((n) => !/^r\d+\.json$/.test(n));
  const foreign = strays.filter((n) => parseTempName(n) === null);
  if (foreign.length > 0) problems.push(`unexpected files: ${foreign.join(", ")}`);
  const wrongTemp = strays.filter((n) => parseTempName(n) !== null && parseTempName(n)?.target !== `r${inFlight}.json`);
  if (wrongTemp.length > 0) problems.push(`temp files of writes that had finished: ${wrongTemp.join(", ")}`);
  const writeInFlight = strays.length > 0;
  // The writer is dead, so its temp file is abandoned and a sweep removes it.
  const removed = await removeAbandonedTempFiles(dir);
  if (removed.length !== strays.length) problems.push(`sweep removed ${removed.length} of ${strays.length} temp files`);
  return { problems, versions, writeInFlight, acks };
}

describe("writer killed with SIGKILL", () => {
  it(`leaves every record old or new, never torn or missing, over ${KILLS} kills`, async () => {
    const seed = Number(process.env.MVM_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
    console.log(`crash test seed: ${seed} (replay with MVM_CRASH_SEED=${seed})`);
    const random = seededRandom(seed);
    const dir = await mkdtemp(join(scratch, "atomic-"));
    let versions = await seedRecords(dir);
    let killsMidWrite = 0;
    let killsAfterProgress = 0;
    for (let kill = 0; kill < KILLS; kill++) {
      const delayMs = Math.floor(random() * (MAX_KILL_DELAY_MS + 1));
      const outcome = await killWriterOnce(dir, "atomic", versions, delayMs);
      expect(outcome.problems, `kill ${kill} after ${delayMs} ms (seed ${seed})`).toEqual([]);
      versions = outcome.versions;
      if (outcome.writeInFlight) killsMidWrite++;
      if (outcome.acks > 0) killsAfterProgress++;
    }
    console.log(
      `kills during a write: ${killsMidWrite}/${KILLS}; kills after some progress: ${killsAfterProgress}/${KILLS}; ` +
        `versions now ${versions.join(",")}`,
    );
    // The test only means something if the kills really interrupted writes.
    expect(killsMidWrite).toBeGreaterThanOrEqual(KILLS / 10);
    expect(killsAfterProgress).toBeGreaterThanOrEqual(KILLS / 4);
  });

  it("catches a writer that writes in place (the check can fail)", async () => {
    const random = seededRandom(1);
    const dir = await mkdtemp(join(scratch, "in-place-"));
    let versions = await seedRecords(dir);
    const found: string[] = [];
    for (let kill = 0; kill < 100 && found.length === 0; kill++) {
      const outcome = await killWriterOnce(dir, "in-place", versions, Math.floor(random() * (MAX_KILL_DELAY_MS + 1)));
      found.push(...outcome.problems);
      versions = outcome.versions;
    }
    expect(found.join("; ")).toMatch(/torn|missing|expected one of/);
  });
});
