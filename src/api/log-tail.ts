// Reading an instance's log files for StreamInstanceLogs: the last N lines, then (when following) new lines as
// they are appended. Files are read in bounded chunks from the end, never whole, so a long console log costs only
// what is sent. A file that shrinks (rotated or recreated by a new boot) is read again from its start.

import { open, stat } from "node:fs/promises";

const CHUNK_BYTES = 64 * 1024;
const MAX_TAIL_BYTES = 8 * 1024 * 1024;
/** A line longer than this is cut (the rest follows as further lines), so one runaway line cannot exhaust memory. */
export const MAX_LINE_BYTES = 16 * 1024;

async function sizeOf(path: string): Promise<number | null> {
  try {
    return (await stat(path)).size;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw e;
  }
}

function splitLines(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split("\n")) {
    for (let i = 0; i < line.length || i === 0; i += MAX_LINE_BYTES) out.push(line.slice(i, i + MAX_LINE_BYTES).replace(/\r$/, ""));
  }
  return out;
}

/** The last `n` complete lines of `path` and the offset just after them; no file is no lines at offset 0. */
export async function lastLines(path: string, n: number): Promise<{ lines: string[]; offset: number }> {
  const size = await sizeOf(path);
  if (size === null || size === 0 || n === 0) return { lines: [], offset: size ?? 0 };
  const handle = await open(path, "r");
  try {
    // Only complete lines: a last line without its newline is still being written and comes with the follow.
    let end = size;
    const chunks: Buffer[] = [];
    let newlines = 0;
    let position = size;
    let sawEnd = false;
    // Bounded: a file of few, huge lines stops being read after MAX_TAIL_BYTES.
    while (position > 0 && newlines <= n && size - position < MAX_TAIL_BYTES) {
      const length = Math.min(CHUNK_BYTES, position);
      position -= length;
      const buffer = Buffer.alloc(length);
      await handle.read(buffer, 0, length, position);
      if (!sawEnd) {
        const lastNewline = buffer.lastIndexOf(0x0a);
        if (lastNewline < 0) {
          end = position;
          continue;
        }
        end = position + lastNewline + 1;
        chunks.unshift(buffer.subarray(0, lastNewline + 1));
        sawEnd = true;
      } else chunks.unshift(buffer);
      for (const b of chunks[0] ?? []) if (b === 0x0a) newlines++;
    }
    if (!sawEnd) return { lines: [], offset: 0 };
    const text = Buffer.concat(chunks).toString("utf8");
    const lines = splitLines(text.slice(0, -1));
    return { lines: lines.slice(Math.max(0, lines.length - n)), offset: end };
  } finally {
    await handle.close();
  }
}

/** Follows one file from `offset`: each call returns the complete lines appended since the previous one. */
export class LogFollower {
  private pending = "";

  constructor(
    readonly path: string,
    private offset: number,
  ) {}

  async poll(): Promise<string[]> {
    const size = await sizeOf(this.path);
    if (size === null) return [];
    if (size < this.offset) {
      this.offset = 0;
      this.pending = "";
    }
    if (size === this.offset) return [];
    const handle = await open(this.path, "r");
    try {
      const length = Math.min(size - this.offset, 4 * CHUNK_BYTES);
      const buffer = Buffer.alloc(length);
      const { bytesRead } = await handle.read(buffer, 0, length, this.offset);
      this.offset += bytesRead;
      const text = this.pending + buffer.subarray(0, bytesRead).toString("utf8");
      const cut = text.lastIndexOf("\n");
      if (cut < 0) {
        this.pending = text.length > MAX_LINE_BYTES ? "" : text;
        return text.length > MAX_LINE_BYTES ? splitLines(text) : [];
      }
      this.pending = text.slice(cut + 1);
      return splitLines(text.slice(0, cut));
    } finally {
      await handle.close();
    }
  }
}
