// ReconcileDeps made of test doubles (MemoryStore, FakeDataPlane, an image builder that builds nothing): for the
// reconcile unit tests only.

import type { BuiltImage, ImageBuilder } from "../../../../src/core/data-plane-ports.js";
import type { DesiredState } from "../../../../src/core/desired-state.js";
import type { ImageSource } from "../../../../src/core/model.js";
import type { ReconcileDeps } from "../../../../src/core/use-cases/reconcile.js";
import { FakeDataPlane } from "../../../../src/runtime/fake/fake-data-plane.js";
import { MemoryStore } from "../../../../src/runtime/fake/memory-store.js";
import { fakeDataPlaneDeps } from "../../../helpers/fake-data-plane-deps.js";

/** A stable non-cryptographic digest (FNV-1a, 64 bits as two halves): enough to tell test documents apart. */
export function testDigest(text: string): string {
  let a = 0x811c9dc5;
  let b = 0x01000193;
  for (let i = 0; i < text.length; i++) {
    a = Math.imul(a ^ text.charCodeAt(i), 0x01000193) >>> 0;
    b = Math.imul(b ^ text.charCodeAt(i), 0x811c9dc5) >>> 0;
  }
  return a.toString(16).padStart(8, "0") + b.toString(16).padStart(8, "0");
}

/** Image sources whose debian suite is "broken" fail to build. */
export class FakeImageBuilder implements ImageBuilder {
  builds: ImageSource[] = [];
  async build(source: ImageSource): Promise<BuiltImage> {
    this.builds.push(source);
    if (source.kind === "debian" && source.suite === "broken") throw new Error("test double: build failed");
    const revision = testDigest(JSON.stringify(source)).padEnd(16, "0");
    const artifact = (path: string) => ({ path, sha256: revision, sizeBytes: 1 });
    return { revision, kernel: artifact("vmlinux"), initrd: artifact("initramfs.cpio.gz"), rootfs: artifact("rootfs.ext4"), builder: "fake", flakeLockHash: "" };
  }
}

export interface ReconcileFixture {
  deps: ReconcileDeps;
  plane: FakeDataPlane;
  store: MemoryStore;
  builder: FakeImageBuilder;
  nodeId: string;
}

export async function reconcileFixture(): Promise<ReconcileFixture> {
  const plane = new FakeDataPlane();
  const store = new MemoryStore();
  const builder = new FakeImageBuilder();
  const base = fakeDataPlaneDeps(plane, store);
  const deps: ReconcileDeps = {
    ...base,
    imageBuilder: builder,
    revisionsDir: (t, p) => `/data/${t}/${p}/revisions`,
    digestDesiredState: (doc: DesiredState) => testDigest(JSON.stringify(doc)),
  };
  return { deps, plane, store, builder, nodeId: (await store.node()).nodeId };
}
