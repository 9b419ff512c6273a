// One entry of the image cache: `<area>/<name>/`, built at most once even when several builds (in this process or
// others: the agent and a CLI) want it at the same time, and never visible half-made.

import { chmod, mkdir, mkdtemp, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { withFileLock } from "../store/file-lock.js";

/** A cold step (mmdebstrap over a slow mirror) can take many minutes; waiters wait for it rather than redo it. */
const CACHE_LOCK_TIMEOUT_MS = 2 * 60 * 60_000;

/**
 * The entry `<area>/<name>` as `read` sees it; when `read` finds none, `build` fills a fresh temporary directory
 * which is then renamed to the entry, under a lock file `<area>/<name>.lock` so that concurrent callers wait for the
 * first one and then read its result.
 */
export async function ensureCacheEntry<T>(
  area: string,
  name: string,
  read: (dir: string) => Promise<T | null>,
  build: (work: string) => Promise<void>,
): Promise<T> {
  const dir = join(area, name);
  const cached = await read(dir);
  if (cached !== null) return cached;
  await mkdir(area, { recursive: true });
  return withFileLock(
    join(area, `${name}.lock`),
    async () => {
      const done = await read(dir);
      if (done !== null) return done;
      // A directory there that `read` rejects is a leftover of an older format or a damaged entry: replaced.
      await rm(dir, { recursive: true, force: true });
      const work = await mkdtemp(join(area, ".tmp-"));
      try {
        // Nothing in the cache is secret; later readers (a jailed VMM's uid) need to reach the artifacts.
        await chmod(work, 0o755);
        await build(work);
        await rename(work, dir);
      } finally {
        await rm(work, { recursive: true, force: true });
      }
      const built = await read(dir);
      if (built === null) throw new Error(`cache entry ${dir} is incomplete right after it was built`);
      return built;
    },
    { timeoutMs: CACHE_LOCK_TIMEOUT_MS, label: `image cache entry ${dir}` },
  );
}
