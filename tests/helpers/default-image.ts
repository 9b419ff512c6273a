// The default debian image (bookworm, no extra packages) for tests that need a real guest, built with the real
// builder into a cache under .cache/test-images/ that survives between runs: the first run takes a minute or two
// (kernel download, mmdebstrap), later ones link the cached artifacts in well under a second.

import { join } from "node:path";
import type { BuildProgressEvent, BuiltImage } from "../../src/core/data-plane-ports.js";
import type { ImageSource } from "../../src/core/model.js";
import { createDebianImageBuilder } from "../../src/runtime/images/debian-image-builder.js";
import { REPO_ROOT } from "./transpile.js";

export const TEST_IMAGE_CACHE_DIR = join(REPO_ROOT, ".cache", "test-images");

export const DEFAULT_TEST_IMAGE_SOURCE: Readonly<ImageSource> = Object.freeze({
  kind: "debian",
  suite: "bookworm",
  packages: [],
  extraFiles: {},
});

export interface DefaultTestImage {
  /** The revision directory. */
  dir: string;
  /** Absolute paths of the artifacts. */
  kernel: string;
  initrd: string;
  rootfs: string;
  built: BuiltImage;
}

const building = new Map<string, Promise<DefaultTestImage>>();

/** Builds (or finds) the default image; its revision directories live in `<cacheDir>/revisions`. */
export function ensureDefaultTestImage(
  cacheDir: string = TEST_IMAGE_CACHE_DIR,
  onProgress: (e: BuildProgressEvent) => void = () => undefined,
): Promise<DefaultTestImage> {
  let pending = building.get(cacheDir);
  if (pending === undefined) {
    pending = build(cacheDir, onProgress);
    building.set(cacheDir, pending);
    pending.catch(() => building.delete(cacheDir));
  }
  return pending;
}

async function build(cacheDir: string, onProgress: (e: BuildProgressEvent) => void): Promise<DefaultTestImage> {
  const builder = createDebianImageBuilder({ cacheDir });
  const revisionsDir = join(cacheDir, "revisions");
  const built = await builder.build({ ...DEFAULT_TEST_IMAGE_SOURCE, packages: [], extraFiles: {} } as ImageSource, revisionsDir, onProgress);
  const dir = join(revisionsDir, built.revision);
  if (built.initrd === null) throw new Error("the debian builder produced no initramfs");
  return {
    dir,
    kernel: join(dir, built.kernel.path),
    initrd: join(dir, built.initrd.path),
    rootfs: join(dir, built.rootfs.path),
    built,
  };
}
