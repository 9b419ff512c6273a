import { mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CHUNK_BYTES, linesBackward, linesForward } from "../../../src/runtime/audit/log-lines.js";
import type { LogLine } from "../../../src/runtime/audit/log-lines.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-log-lines-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function collect(gen: AsyncGenerator<LogLine>): Promise<LogLine[]> {
  const out: LogLine[] = [];
  for await (const l of gen) out.push(l);
  return out;
}

/** Lines a file with `content` holds, computed by splitting the whole string. */
function expectedLines(content: string): Array<{ text: string; terminated: boolean; start: number; end: number }> {
  const parts = content.split("\n");
  const out: Array<{ text: string; terminated: boolean; start: number; end: number }> = [];
  let offset = 0;
  parts.forEach((text, i) => {
    const terminated = i < parts.length - 1;
    if (!terminated && text === "") return;
    const len = Buffer.byteLength(text) + (terminated ? 1 : 0);
    out.push({ text, terminated, start: offset, end: offset + len });
    offset += len;
  });
  return out;
}

describe("log lines", () => {
  it("fast-check: forward and backward reading agree with a plain split, across chunk boundaries", async () => {
    const line = fc.oneof(
      fc.string({ maxLength: 40 }).map((s) => s.replace(/\n/g, "")),
      fc.integer({ min: CHUNK_BYTES - 20, max: CHUNK_BYTES + 20 }).map((n) => "é".repeat(Math.floor(n / 2))),
    );
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(line, { maxLength: 12 }), fc.option(line, { nil: undefined }), async (lines, fragment) => {
        const content = lines.map((l) => `${l}\n`).join("") + (fragment ?? "");
        const path = join(dir, `f${n++}`);
        await writeFile(path, content);
        const handle = await open(path, "r");
        try {
          const size = Buffer.byteLength(content);
          const expected = expectedLines(content);
          expect(await collect(linesForward(handle, 0, size))).toEqual(expected);
          expect(await collect(linesBackward(handle, size))).toEqual([...expected].reverse());
        } finally {
          await handle.close();
        }
      }),
      { numRuns: 60 },
    );
  });

  it("reads forward from a line start up to a limit", async () => {
    const path = join(dir, "partial");
    await writeFile(path, "one\ntwo\nthree\n");
    const handle = await open(path, "r");
    try {
      const lines = await collect(linesForward(handle, 4, 10));
      expect(lines.map((l) => [l.text, l.terminated])).toEqual([
        ["two", true],
        ["th", false],
      ]);
    } finally {
      await handle.close();
    }
  });
});
