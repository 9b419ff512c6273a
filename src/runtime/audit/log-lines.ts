// Reading a line-oriented log in chunks, forwards (verify, read, watch) or backwards from the end (tail, and finding
// the last entry on append), so memory stays bounded by the chunk size and the longest line whatever the file size.

import type { FileHandle } from "node:fs/promises";

export const CHUNK_BYTES = 64 * 1024;
const NEWLINE = 0x0a;

export interface LogLine {
  text: string;
  /** Byte offset of the line's first byte. */
  start: number;
  /** Byte offset just past the line's last byte (its "\n" when terminated). */
  end: number;
  /** Whether the line ends with "\n"; only the last line of a file can lack it. */
  terminated: boolean;
}

async function readAt(handle: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let filled = 0;
  while (filled < length) {
    const { bytesRead } = await handle.read(buf, filled, length - filled, position + filled);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  return buf.subarray(0, filled);
}

/** Lines from byte `from` (which must be a line start) up to byte `to`, oldest first. */
export async function* linesForward(handle: FileHandle, from: number, to: number): AsyncGenerator<LogLine> {
  let carry: Buffer = Buffer.alloc(0);
  let carryStart = from;
  let position = from;
  while (position < to) {
    const chunk = await readAt(handle, position, Math.min(CHUNK_BYTES, to - position));
    if (chunk.length === 0) break;
    position += chunk.length;
    const buf = carry.length === 0 ? chunk : Buffer.concat([carry, chunk]);
    let lineStart = 0;
    for (let nl = buf.indexOf(NEWLINE); nl !== -1; nl = buf.indexOf(NEWLINE, lineStart)) {
      yield { text: buf.toString("utf8", lineStart, nl), start: carryStart + lineStart, end: carryStart + nl + 1, terminated: true };
      lineStart = nl + 1;
    }
    carry = buf.subarray(lineStart);
    carryStart += lineStart;
  }
  if (carry.length > 0) yield { text: carry.toString("utf8"), start: carryStart, end: carryStart + carry.length, terminated: false };
}

/** Lines of the first `size` bytes, newest first; an unterminated trailing fragment comes first when there is one. */
export async function* linesBackward(handle: FileHandle, size: number): AsyncGenerator<LogLine> {
  // `carry` holds bytes [position, position + carry.length) not yet yielded. Once the trailing fragment is dealt with
  // (`seenLastNewline`), carry always ends with the "\n" of the next line to yield.
  let carry: Buffer = Buffer.alloc(0);
  let position = size;
  let seenLastNewline = false;
  while (position > 0) {
    const start = Math.max(0, position - CHUNK_BYTES);
    const chunk = await readAt(handle, start, position - start);
    position = start;
    const buf = carry.length === 0 ? chunk : Buffer.concat([chunk, carry]);
    let segEnd = buf.length;
    if (!seenLastNewline) {
      const nl = buf.lastIndexOf(NEWLINE);
      if (nl === -1) {
        carry = buf;
        continue;
      }
      seenLastNewline = true;
      if (nl + 1 < buf.length) {
        yield { text: buf.toString("utf8", nl + 1), start: position + nl + 1, end: position + buf.length, terminated: false };
      }
      segEnd = nl + 1;
    }
    for (;;) {
      const prev = segEnd >= 2 ? buf.lastIndexOf(NEWLINE, segEnd - 2) : -1;
      if (prev === -1) break;
      yield { text: buf.toString("utf8", prev + 1, segEnd - 1), start: position + prev + 1, end: position + segEnd, terminated: true };
      segEnd = prev + 1;
    }
    carry = buf.subarray(0, segEnd);
  }
  if (carry.length === 0) return;
  if (!seenLastNewline) yield { text: carry.toString("utf8"), start: 0, end: carry.length, terminated: false };
  else yield { text: carry.toString("utf8", 0, carry.length - 1), start: 0, end: carry.length, terminated: true };
}
