// Snapshot meta records → mvm.v1.SnapshotMeta.

import { create } from "@bufbuild/protobuf";
import type { SnapshotMeta } from "../../core/data-plane-ports.js";
import { HostCompatibilitySchema, SnapshotMetaSchema, SnapshotType, type SnapshotMeta as ProtoSnapshotMeta } from "../../../gen/mvm/v1/snapshot_pb.js";
import { compressionToProto, hypervisorToProto } from "./enums.js";
import { isoToTimestamp } from "./timestamps.js";

export function snapshotMetaToProto(meta: SnapshotMeta): ProtoSnapshotMeta {
  return create(SnapshotMetaSchema, {
    type: meta.type === "diff" ? SnapshotType.DIFF : SnapshotType.FULL,
    hypervisor: hypervisorToProto(meta.hypervisor),
    hypervisorVersion: meta.hypervisorVersion,
    revision: meta.revision,
    memMib: meta.memMib,
    compression: compressionToProto(meta.compression),
    memorySizeBytes: BigInt(meta.memorySizeBytes),
    stateSizeBytes: BigInt(meta.stateSizeBytes),
    uncompressedSizeBytes: BigInt(meta.uncompressedSizeBytes),
    sha256: meta.sha256,
    stateSha256: meta.stateSha256,
    createdAt: isoToTimestamp(meta.createdAt),
    host: create(HostCompatibilitySchema, { cpuModel: meta.host.cpuModel, hostKernel: meta.host.hostKernel, vmmVersion: meta.host.vmmVersion }),
  });
}
