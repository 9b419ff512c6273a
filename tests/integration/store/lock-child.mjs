// A second process for the lock tests, running the real file-lock module.
// argv: <file-lock.js URL> <atomic-file.js URL> count <lock path> <counter path> <n>
//         increments the JSON counter n times, each read-modify-write under the lock; prints `done`.
//       <file-lock.js URL> <atomic-file.js URL> hold <lock path>
//         takes the lock, prints `locked`, and keeps it until killed.

import { readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";

const [fileLockUrl, atomicFileUrl, mode, lockPath, counterPath, countArg] = process.argv.slice(2);
const { withFileLock } = await import(fileLockUrl);
const { writeFileAtomic } = await import(atomicFileUrl);

if (mode === "count") {
  for (let n = 0; n < Number(countArg); n++) {
    await withFileLock(
      lockPath,
      async () => {
        const { count } = JSON.parse(await readFile(counterPath, "utf8"));
        // Give a process that wrongly holds the lock too the chance to interleave.
        await sleep(0);
        await writeFileAtomic(counterPath, JSON.stringify({ count: count + 1 }));
      },
      { timeoutMs: 60_000 },
    );
  }
  process.stdout.write("done\n");
} else if (mode === "hold") {
  await withFileLock(lockPath, async () => {
    process.stdout.write("locked\n");
    await new Promise(() => setInterval(() => undefined, 60_000));
  });
} else {
  throw new Error(`unknown mode ${mode}`);
}
