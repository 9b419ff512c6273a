// A small ext4 file system built in memory, for the secrets disk. Every start and wake rebuilds that disk; making it
// with `mkfs.ext4 -d` cost a staging directory on disk, a process spawned from the agent (fork copies its page
// tables) and a 1 MiB journal written and flushed, on the path a wake waits for. The guest mounts the disk read-only
// without replaying a journal (`ro,noload`), so none is needed.
//
// The layout is the plainest the ext4 driver and e2fsck accept: 4 KiB blocks, one block group (so at most 128 MiB),
// no journal, no checksums, no hashed directories; files and directories are single extents, because every object's
// blocks are allocated in one contiguous run. Features: filetype and extent (incompat), sparse_super and extra_isize
// (ro_compat). Reference: the ext4 on-disk layout in the kernel's Documentation/filesystems/ext4/.

const BLOCK_BYTES = 4096;
const LOG_BLOCK_SIZE = 2; // 1024 << 2
const BLOCKS_PER_GROUP = BLOCK_BYTES * 8;
const INODE_BYTES = 256;
const INODES_PER_BLOCK = BLOCK_BYTES / INODE_BYTES;
const EXTRA_ISIZE = 32;
const SUPERBLOCK_OFFSET = 1024;
const ROOT_INODE = 2;
const LOST_AND_FOUND_INODE = 11;
const FIRST_FREE_INODE = 12;
const MAX_NAME_BYTES = 255;
const MAX_LABEL_BYTES = 16;
/** Longest initialized extent, in blocks. */
const MAX_EXTENT_BLOCKS = 32768;

const FEATURE_INCOMPAT_FILETYPE = 0x2;
const FEATURE_INCOMPAT_EXTENTS = 0x40;
const FEATURE_RO_COMPAT_SPARSE_SUPER = 0x1;
const FEATURE_RO_COMPAT_EXTRA_ISIZE = 0x40;
const FLAGS_SIGNED_DIRECTORY_HASH = 0x1;
const INODE_FLAG_EXTENTS = 0x80000;
const EXTENT_MAGIC = 0xf30a;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const DIRENT_FILE = 1;
const DIRENT_DIRECTORY = 2;

export interface Ext4ImageOptions {
  /** Size of the whole file system, bytes: a multiple of 4096, at most 128 MiB. */
  sizeBytes: number;
  /** Volume label, at most 16 bytes. */
  label: string;
  /** Relative path ("a/b/c") → content. Directories on the way are made; each component at most 255 bytes. */
  files: Record<string, string | Uint8Array>;
  /** Permission bits of the root directory, of the directories made on the way, and of the files. */
  rootMode: number;
  directoryMode: number;
  fileMode: number;
  /** Seconds since the epoch for every time stamp. */
  nowSeconds: number;
  /** 16 random bytes each: the file system's UUID and its directory-hash seed. */
  uuid: Uint8Array;
  hashSeed: Uint8Array;
}

export interface Ext4Image {
  /** The first bytes of the image: everything that is not zero. The rest, up to `sizeBytes`, is zeros. */
  head: Buffer;
  sizeBytes: number;
}

export class Ext4ImageError extends Error {}

interface DirectoryNode {
  kind: "directory";
  inode: number;
  entries: Map<string, TreeNode>;
  parent: DirectoryNode | null;
  blocks: Buffer[];
  firstBlock: number;
}

interface FileNode {
  kind: "file";
  inode: number;
  content: Buffer;
  firstBlock: number;
}

type TreeNode = DirectoryNode | FileNode;

const blocksFor = (bytes: number) => Math.ceil(bytes / BLOCK_BYTES);
const align4 = (n: number) => (n + 3) & ~3;

function newDirectory(parent: DirectoryNode | null): DirectoryNode {
  return { kind: "directory", inode: 0, entries: new Map(), parent, blocks: [], firstBlock: 0 };
}

/** Splits a secrets path into components, refusing what would leave the disk or cannot be a name. */
function pathComponents(path: string): string[] {
  if (path.startsWith("/") || path.split("/").includes("..")) {
    throw new Ext4ImageError(`file name ${JSON.stringify(path)} leaves the disk`);
  }
  const parts = path.split("/");
  for (const part of parts) {
    if (part === "" || part === ".") throw new Ext4ImageError(`file name ${JSON.stringify(path)} has an empty or "." component`);
    if (part.includes("\0")) throw new Ext4ImageError(`file name ${JSON.stringify(path)} contains a NUL byte`);
    if (Buffer.byteLength(part) > MAX_NAME_BYTES) throw new Ext4ImageError(`file name ${JSON.stringify(path)} has a component over ${MAX_NAME_BYTES} bytes`);
  }
  if (parts[0] === "lost+found") throw new Ext4ImageError(`file name ${JSON.stringify(path)} is in lost+found, the file system's own directory`);
  return parts;
}

function buildTree(files: Ext4ImageOptions["files"]): DirectoryNode {
  const root = newDirectory(null);
  root.entries.set("lost+found", newDirectory(root));
  for (const [path, content] of Object.entries(files)) {
    const parts = pathComponents(path);
    let dir = root;
    for (const part of parts.slice(0, -1)) {
      const next = dir.entries.get(part) ?? newDirectory(dir);
      if (next.kind !== "directory") throw new Ext4ImageError(`file name ${JSON.stringify(path)} runs through a file`);
      dir.entries.set(part, next);
      dir = next;
    }
    const name = parts[parts.length - 1]!;
    if (dir.entries.has(name)) throw new Ext4ImageError(`file name ${JSON.stringify(path)} is also a directory`);
    const bytes = typeof content === "string" ? Buffer.from(content, "utf8") : Buffer.from(content.buffer, content.byteOffset, content.byteLength);
    dir.entries.set(name, { kind: "file", inode: 0, content: bytes, firstBlock: 0 });
  }
  return root;
}

/** Every node, parents before children, root first, lost+found second (it must be inode 11). */
function walk(root: DirectoryNode): TreeNode[] {
  const order: TreeNode[] = [root];
  for (let i = 0; i < order.length; i += 1) {
    const node = order[i]!;
    if (node.kind === "directory") for (const child of node.entries.values()) order.push(child);
  }
  return order;
}

/** The directory's entries laid out in blocks: ".", "..", then its children; an entry never crosses a block. */
function directoryBlocks(dir: DirectoryNode): Buffer[] {
  const entries: { inode: number; name: Buffer; type: number }[] = [
    { inode: dir.inode, name: Buffer.from("."), type: DIRENT_DIRECTORY },
    { inode: (dir.parent ?? dir).inode, name: Buffer.from(".."), type: DIRENT_DIRECTORY },
  ];
  for (const [name, node] of dir.entries) {
    entries.push({ inode: node.inode, name: Buffer.from(name, "utf8"), type: node.kind === "directory" ? DIRENT_DIRECTORY : DIRENT_FILE });
  }
  const blocks: Buffer[] = [];
  let block = Buffer.alloc(BLOCK_BYTES);
  let offset = 0;
  let lastOffset = -1;
  const closeBlock = () => {
    // The last entry of a block spans to its end.
    block.writeUInt16LE(BLOCK_BYTES - lastOffset, lastOffset + 4);
    blocks.push(block);
  };
  for (const entry of entries) {
    const length = 8 + align4(entry.name.length);
    if (offset + length > BLOCK_BYTES) {
      closeBlock();
      block = Buffer.alloc(BLOCK_BYTES);
      offset = 0;
    }
    block.writeUInt32LE(entry.inode, offset);
    block.writeUInt16LE(length, offset + 4);
    block.writeUInt8(entry.name.length, offset + 6);
    block.writeUInt8(entry.type, offset + 7);
    entry.name.copy(block, offset + 8);
    lastOffset = offset;
    offset += length;
  }
  closeBlock();
  return blocks;
}

function setBits(bitmap: Buffer, from: number, to: number): void {
  for (let bit = from; bit < to; bit += 1) bitmap[bit >> 3]! |= 1 << (bit & 7);
}

function writeInode(table: Buffer, inode: number, fields: { mode: number; sizeBytes: number; links: number; firstBlock: number; blockCount: number; now: number }): void {
  const at = (inode - 1) * INODE_BYTES;
  table.writeUInt16LE(fields.mode, at);
  table.writeUInt32LE(fields.sizeBytes, at + 0x04);
  for (const field of [0x08, 0x0c, 0x10]) table.writeUInt32LE(fields.now, at + field); // atime, ctime, mtime
  table.writeUInt16LE(fields.links, at + 0x1a);
  table.writeUInt32LE(fields.blockCount * (BLOCK_BYTES / 512), at + 0x1c);
  table.writeUInt32LE(INODE_FLAG_EXTENTS, at + 0x20);
  // i_block holds the extent tree's root: a header and, for a non-empty object, its one extent.
  const tree = at + 0x28;
  table.writeUInt16LE(EXTENT_MAGIC, tree);
  table.writeUInt16LE(fields.blockCount > 0 ? 1 : 0, tree + 2);
  table.writeUInt16LE(4, tree + 4);
  if (fields.blockCount > 0) {
    table.writeUInt32LE(0, tree + 12);
    table.writeUInt16LE(fields.blockCount, tree + 16);
    table.writeUInt16LE(0, tree + 18);
    table.writeUInt32LE(fields.firstBlock, tree + 20);
  }
  table.writeUInt16LE(EXTRA_ISIZE, at + 0x80);
  table.writeUInt32LE(fields.now, at + 0x90); // crtime
}

/** Builds the image, or throws Ext4ImageError naming what does not fit. */
export function buildExt4Image(options: Ext4ImageOptions): Ext4Image {
  const { sizeBytes } = options;
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % BLOCK_BYTES !== 0) {
    throw new Ext4ImageError(`size ${sizeBytes} must be a positive multiple of ${BLOCK_BYTES} bytes`);
  }
  const totalBlocks = sizeBytes / BLOCK_BYTES;
  if (totalBlocks > BLOCKS_PER_GROUP) throw new Ext4ImageError(`size ${sizeBytes} is over ${BLOCKS_PER_GROUP * BLOCK_BYTES} bytes (one block group)`);
  const label = Buffer.from(options.label, "utf8");
  if (label.length > MAX_LABEL_BYTES) throw new Ext4ImageError(`label ${JSON.stringify(options.label)} is over ${MAX_LABEL_BYTES} bytes`);
  if (options.uuid.length !== 16 || options.hashSeed.length !== 16) throw new Ext4ImageError("uuid and hash seed must be 16 bytes each");

  const root = buildTree(options.files);
  const nodes = walk(root);
  // Inode numbers: 2 for the root, 11 for lost+found, 12 on for the rest, in walk order.
  root.inode = ROOT_INODE;
  let nextInode = FIRST_FREE_INODE;
  for (const node of nodes.slice(1)) node.inode = node === root.entries.get("lost+found") ? LOST_AND_FOUND_INODE : nextInode++;
  const inodeCount = Math.max(2 * INODES_PER_BLOCK, Math.ceil(nextInode / INODES_PER_BLOCK) * INODES_PER_BLOCK);
  const inodeTableBlocks = inodeCount / INODES_PER_BLOCK;

  // Blocks: 0 boot record and superblock, 1 group descriptors, 2 block bitmap, 3 inode bitmap, then the inode table,
  // then each directory's and each file's data in walk order.
  const blockBitmapBlock = 2;
  const inodeBitmapBlock = 3;
  const inodeTableBlock = 4;
  let nextBlock = inodeTableBlock + inodeTableBlocks;
  for (const node of nodes) {
    if (node.kind === "directory") node.blocks = directoryBlocks(node);
    const count = node.kind === "directory" ? node.blocks.length : blocksFor(node.content.length);
    if (count > MAX_EXTENT_BLOCKS) throw new Ext4ImageError(`an object of ${count} blocks is over one extent`);
    node.firstBlock = nextBlock;
    nextBlock += count;
  }
  const usedBlocks = nextBlock;
  if (usedBlocks > totalBlocks) {
    throw new Ext4ImageError(`the files need ${usedBlocks * BLOCK_BYTES} bytes with the file system's own, over the size ${sizeBytes}`);
  }

  const head = Buffer.alloc(usedBlocks * BLOCK_BYTES);
  const now = options.nowSeconds >>> 0;
  const directories = nodes.filter((n) => n.kind === "directory").length;
  const freeBlocks = totalBlocks - usedBlocks;
  const freeInodes = inodeCount - (nextInode - 1);

  const sb = head.subarray(SUPERBLOCK_OFFSET, SUPERBLOCK_OFFSET + 1024);
  sb.writeUInt32LE(inodeCount, 0x00);
  sb.writeUInt32LE(totalBlocks, 0x04);
  sb.writeUInt32LE(freeBlocks, 0x0c);
  sb.writeUInt32LE(freeInodes, 0x10);
  sb.writeUInt32LE(0, 0x14); // first data block: 0 with blocks over 1 KiB
  sb.writeUInt32LE(LOG_BLOCK_SIZE, 0x18);
  sb.writeUInt32LE(LOG_BLOCK_SIZE, 0x1c);
  sb.writeUInt32LE(BLOCKS_PER_GROUP, 0x20);
  sb.writeUInt32LE(BLOCKS_PER_GROUP, 0x24);
  sb.writeUInt32LE(inodeCount, 0x28);
  sb.writeUInt32LE(now, 0x30); // last write
  sb.writeUInt16LE(0xffff, 0x36); // no mount-count check
  sb.writeUInt16LE(0xef53, 0x38);
  sb.writeUInt16LE(1, 0x3a); // cleanly unmounted
  sb.writeUInt16LE(1, 0x3c); // on errors: continue
  sb.writeUInt32LE(now, 0x40); // last check
  sb.writeUInt32LE(1, 0x4c); // dynamic revision
  sb.writeUInt32LE(FIRST_FREE_INODE - 1, 0x54);
  sb.writeUInt16LE(INODE_BYTES, 0x58);
  sb.writeUInt32LE(FEATURE_INCOMPAT_FILETYPE | FEATURE_INCOMPAT_EXTENTS, 0x60);
  sb.writeUInt32LE(FEATURE_RO_COMPAT_SPARSE_SUPER | FEATURE_RO_COMPAT_EXTRA_ISIZE, 0x64);
  Buffer.from(options.uuid).copy(sb, 0x68);
  label.copy(sb, 0x78);
  Buffer.from(options.hashSeed).copy(sb, 0xec);
  sb.writeUInt8(1, 0xfc); // default directory hash: half_md4
  sb.writeUInt32LE(now, 0x108); // made
  sb.writeUInt16LE(EXTRA_ISIZE, 0x15c);
  sb.writeUInt16LE(EXTRA_ISIZE, 0x15e);
  sb.writeUInt32LE(FLAGS_SIGNED_DIRECTORY_HASH, 0x160);

  const gd = head.subarray(BLOCK_BYTES, BLOCK_BYTES + 32);
  gd.writeUInt32LE(blockBitmapBlock, 0x00);
  gd.writeUInt32LE(inodeBitmapBlock, 0x04);
  gd.writeUInt32LE(inodeTableBlock, 0x08);
  gd.writeUInt16LE(freeBlocks, 0x0c);
  gd.writeUInt16LE(freeInodes, 0x0e);
  gd.writeUInt16LE(directories, 0x10);

  // Bits past the group's last block or inode are set, as the kernel and e2fsck expect.
  const blockBitmap = head.subarray(blockBitmapBlock * BLOCK_BYTES, (blockBitmapBlock + 1) * BLOCK_BYTES);
  setBits(blockBitmap, 0, usedBlocks);
  setBits(blockBitmap, totalBlocks, BLOCKS_PER_GROUP);
  const inodeBitmap = head.subarray(inodeBitmapBlock * BLOCK_BYTES, (inodeBitmapBlock + 1) * BLOCK_BYTES);
  setBits(inodeBitmap, 0, nextInode - 1);
  setBits(inodeBitmap, inodeCount, BLOCK_BYTES * 8);

  const table = head.subarray(inodeTableBlock * BLOCK_BYTES, (inodeTableBlock + inodeTableBlocks) * BLOCK_BYTES);
  for (const node of nodes) {
    if (node.kind === "directory") {
      const subdirectories = [...node.entries.values()].filter((n) => n.kind === "directory").length;
      const mode = node === root ? options.rootMode : node.inode === LOST_AND_FOUND_INODE ? 0o700 : options.directoryMode;
      writeInode(table, node.inode, {
        mode: S_IFDIR | (mode & 0o7777),
        sizeBytes: node.blocks.length * BLOCK_BYTES,
        links: 2 + subdirectories,
        firstBlock: node.firstBlock,
        blockCount: node.blocks.length,
        now,
      });
      node.blocks.forEach((block, i) => block.copy(head, (node.firstBlock + i) * BLOCK_BYTES));
    } else {
      const blockCount = blocksFor(node.content.length);
      writeInode(table, node.inode, { mode: S_IFREG | (options.fileMode & 0o7777), sizeBytes: node.content.length, links: 1, firstBlock: node.firstBlock, blockCount, now });
      node.content.copy(head, node.firstBlock * BLOCK_BYTES);
    }
  }
  return { head, sizeBytes };
}
