// The RevisionFiles port on the local filesystem: `<revisionsDir>/<revision>/` directories as the image builder leaves
// them. Only names that are revision IDs are listed: the builder's own `.tmp-*` work directories belong to builds
// that may be running.

import { lstat, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { RevisionFiles, RevisionOnDisk } from "../../core/data-plane-ports.js";
import { invalidField } from "../../core/errors.js";
import { errnoCode } from "../store/process-identity.js";

const REVISION_NAME = /^[0-9a-f]{8,64}$/;

async function entriesOf(dir: string) {
  try {
    return await readdir(dir, { withFileTypes: true });
  } catch (e) {
    if (errnoCode(e) === "ENOENT") return [];
    throw e;
  }
}

/** Allocated bytes of the files under `dir` that no other path links to: what removing `dir` frees. */
async function unsharedBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await entriesOf(dir)) {
    const path = join(dir, e.name);
    if (e.isDirectory()) total += await unsharedBytes(path);
    else {
      const st = await lstat(path).catch(() => null);
      if (st !== null && st.nlink === 1) total += st.blocks * 512;
    }
  }
  return total;
}

export function createRevisionFiles(revisionsDir: (tenantId: string, poolId: string) => string): RevisionFiles {
  const checked = (revision: string) => {
    if (!REVISION_NAME.test(revision)) throw invalidField("revision", "must be a revision ID (8 to 64 lowercase hex digits)");
    return revision;
  };
  return {
    async list(tenantId, poolId): Promise<RevisionOnDisk[]> {
      const dir = revisionsDir(tenantId, poolId);
      const names = (await entriesOf(dir)).filter((e) => e.isDirectory() && REVISION_NAME.test(e.name)).map((e) => e.name);
      return Promise.all(
        names.map(async (revision) => {
          const st = await lstat(join(dir, revision));
          return { revision, freedBytes: await unsharedBytes(join(dir, revision)), changedAtMs: st.mtimeMs };
        }),
      );
    },
    async remove(tenantId, poolId, revision) {
      await rm(join(revisionsDir(tenantId, poolId), checked(revision)), { recursive: true, force: true });
    },
  };
}
