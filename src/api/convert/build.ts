// Build revisions ↔ mvm.v1.BuildRevision.

import { create } from "@bufbuild/protobuf";
import { durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";
import type { FieldViolation } from "../../core/errors.js";
import type { BuildArtifact, BuildRevision } from "../../core/model.js";
import {
  BuildArtifactSchema,
  BuildRevisionSchema,
  type BuildArtifact as ProtoBuildArtifact,
  type BuildRevision as ProtoBuildRevision,
} from "../../../gen/mvm/v1/build_pb.js";
import { DEFAULT_DEBIAN_SUITE, imageSourceFromProto, imageSourceToProto } from "./pool.js";
import { isoToTimestamp, requiredTimestampToIso } from "./timestamps.js";

function artifactToProto(a: BuildArtifact): ProtoBuildArtifact {
  return create(BuildArtifactSchema, { path: a.path, sha256: a.sha256, sizeBytes: BigInt(a.sizeBytes) });
}

function artifactFromProto(a: ProtoBuildArtifact | undefined): BuildArtifact {
  return { path: a?.path ?? "", sha256: a?.sha256 ?? "", sizeBytes: Number(a?.sizeBytes ?? 0n) };
}

export function buildRevisionToProto(b: BuildRevision): ProtoBuildRevision {
  return create(BuildRevisionSchema, {
    revision: b.revision,
    image: imageSourceToProto(b.image),
    flakeLockHash: b.flakeLockHash,
    kernel: artifactToProto(b.kernel),
    initrd: b.initrd === null ? undefined : artifactToProto(b.initrd),
    rootfs: artifactToProto(b.rootfs),
    builder: b.builder,
    builtAt: isoToTimestamp(b.builtAt),
    duration: durationFromMs(b.durationMs),
  });
}

export function buildRevisionFromProto(b: ProtoBuildRevision): BuildRevision {
  const ignored: FieldViolation[] = [];
  return {
    revision: b.revision,
    image: imageSourceFromProto(b.image, "image", ignored) ?? { kind: "debian", suite: DEFAULT_DEBIAN_SUITE, packages: [], extraFiles: {} },
    flakeLockHash: b.flakeLockHash,
    kernel: artifactFromProto(b.kernel),
    initrd: b.initrd === undefined ? null : artifactFromProto(b.initrd),
    rootfs: artifactFromProto(b.rootfs),
    builder: b.builder,
    builtAt: requiredTimestampToIso(b.builtAt),
    durationMs: b.duration === undefined ? 0 : durationMs(b.duration),
  };
}
