// Just enough of ELF64 (little-endian) for the image builder: a kernel's notes (QEMU boots an ELF vmlinux through its
// PVH entry note) and a module's .modinfo section (name and dependencies).

import { open } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const PT_INTERP = 3;
const PT_NOTE = 4;
/** Xen's ELF note carrying the 32-bit PVH entry point; QEMU's `-kernel` needs it to boot an uncompressed vmlinux. */
export const XEN_ELFNOTE_PHYS32_ENTRY = 18;

export function isElf64(head: Buffer): boolean {
  return head.length >= 64 && head.subarray(0, 4).equals(ELF_MAGIC) && head[4] === ELFCLASS64 && head[5] === ELFDATA2LSB;
}

export interface ElfNote {
  name: string;
  type: number;
  desc: Buffer;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

export function parseNotes(segment: Buffer): ElfNote[] {
  const notes: ElfNote[] = [];
  let at = 0;
  while (at + 12 <= segment.length) {
    const nameSize = segment.readUInt32LE(at);
    const descSize = segment.readUInt32LE(at + 4);
    const type = segment.readUInt32LE(at + 8);
    const nameStart = at + 12;
    const descStart = nameStart + align4(nameSize);
    const next = descStart + align4(descSize);
    if (next > segment.length) break;
    const name = segment.subarray(nameStart, nameStart + nameSize).toString("latin1").replace(/\0+$/, "");
    notes.push({ name, type, desc: segment.subarray(descStart, descStart + descSize) });
    at = next;
  }
  return notes;
}

interface ProgramHeader {
  type: number;
  offset: number;
  fileSize: number;
}

/** Program headers of the ELF64 file open as `handle`; throws when it is not one. */
async function readProgramHeaders(handle: FileHandle, path: string): Promise<ProgramHeader[]> {
  const head = Buffer.alloc(64);
  await handle.read(head, 0, 64, 0);
  if (!isElf64(head)) throw new Error(`${path}: not a little-endian ELF64 file`);
  const phoff = Number(head.readBigUInt64LE(0x20));
  const phentsize = head.readUInt16LE(0x36);
  const phnum = head.readUInt16LE(0x38);
  const table = Buffer.alloc(phentsize * phnum);
  await handle.read(table, 0, table.length, phoff);
  const headers: ProgramHeader[] = [];
  for (let i = 0; i < phnum; i++) {
    const entry = table.subarray(i * phentsize, (i + 1) * phentsize);
    headers.push({ type: entry.readUInt32LE(0), offset: Number(entry.readBigUInt64LE(0x08)), fileSize: Number(entry.readBigUInt64LE(0x20)) });
  }
  return headers;
}

/** Notes of every PT_NOTE segment of the ELF64 file at `path`; throws when it is not one. */
export async function readElfNotes(path: string): Promise<ElfNote[]> {
  const handle = await open(path, "r");
  try {
    const notes: ElfNote[] = [];
    for (const header of await readProgramHeaders(handle, path)) {
      if (header.type !== PT_NOTE) continue;
      const segment = Buffer.alloc(header.fileSize);
      await handle.read(segment, 0, header.fileSize, header.offset);
      notes.push(...parseNotes(segment));
    }
    return notes;
  } finally {
    await handle.close();
  }
}

/** True for a statically linked executable: one that names no program interpreter (PT_INTERP). */
export async function isStaticExecutable(path: string): Promise<boolean> {
  const handle = await open(path, "r");
  try {
    return (await readProgramHeaders(handle, path)).every((h) => h.type !== PT_INTERP);
  } finally {
    await handle.close();
  }
}

export async function hasPvhEntryNote(path: string): Promise<boolean> {
  return (await readElfNotes(path)).some((n) => n.name === "Xen" && n.type === XEN_ELFNOTE_PHYS32_ENTRY);
}

/** Bytes of the named section of an ELF64 image held in memory, or null when it has none. */
export function elfSection(image: Buffer, sectionName: string): Buffer | null {
  if (!isElf64(image)) throw new Error("not a little-endian ELF64 image");
  const shoff = Number(image.readBigUInt64LE(0x28));
  const shentsize = image.readUInt16LE(0x3a);
  const shnum = image.readUInt16LE(0x3c);
  const shstrndx = image.readUInt16LE(0x3e);
  const header = (i: number): Buffer => image.subarray(shoff + i * shentsize, shoff + (i + 1) * shentsize);
  const names = header(shstrndx);
  const namesAt = Number(names.readBigUInt64LE(0x18));
  for (let i = 0; i < shnum; i++) {
    const h = header(i);
    const nameAt = namesAt + h.readUInt32LE(0);
    const end = image.indexOf(0, nameAt);
    if (image.toString("latin1", nameAt, end) !== sectionName) continue;
    const offset = Number(h.readBigUInt64LE(0x18));
    const size = Number(h.readBigUInt64LE(0x20));
    return image.subarray(offset, offset + size);
  }
  return null;
}
