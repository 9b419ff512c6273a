// Garbage collection's report between the domain and mvm.v1 (NodeService.CollectGarbage).

import { create } from "@bufbuild/protobuf";
import type { ResourceRef } from "../../../gen/mvm/v1/common_pb.js";
import { GarbageItemSchema, GarbageKind, type GarbageItem as ProtoGarbageItem } from "../../../gen/mvm/v1/node_pb.js";
import type { GarbageItem, GarbageKind as DomainGarbageKind, GarbageOwner } from "../../core/use-cases/garbage.js";
import { targetToProto } from "./desired-state.js";

const TO_PROTO: Readonly<Record<DomainGarbageKind, GarbageKind>> = {
  process: GarbageKind.PROCESS,
  tap: GarbageKind.TAP,
  cgroup: GarbageKind.CGROUP,
  bridge: GarbageKind.BRIDGE,
  snapshot: GarbageKind.SNAPSHOT,
  revision: GarbageKind.REVISION,
};
/** An item as a client reads it from an agent, which may be newer and know more kinds. */
export type ReportedGarbageItem = Omit<GarbageItem, "kind"> & { kind: DomainGarbageKind | "unknown" };

const FROM_PROTO = new Map(Object.entries(TO_PROTO).map(([k, v]) => [v, k as DomainGarbageKind] as const));

export function garbageItemToProto(item: GarbageItem): ProtoGarbageItem {
  return create(GarbageItemSchema, {
    kind: TO_PROTO[item.kind],
    name: item.name,
    owner: targetToProto(item.owner),
    sizeBytes: BigInt(item.sizeBytes),
    removed: item.removed,
    error: item.error,
  });
}

function ownerFromProto(ref: ResourceRef | undefined): GarbageOwner {
  switch (ref?.ref.case) {
    case "instance":
      return { tenantId: ref.ref.value.tenantId, poolId: ref.ref.value.poolId, instanceId: ref.ref.value.instanceId };
    case "pool":
      return { tenantId: ref.ref.value.tenantId, poolId: ref.ref.value.poolId };
    case "tenant":
      return { tenantId: ref.ref.value.tenantId };
    default:
      return { tenantId: "" };
  }
}

/** An item as an agent sent it; a kind this build does not know is kept as `unknown (<number>)` in its name. */
export function garbageItemFromProto(item: ProtoGarbageItem): ReportedGarbageItem {
  const kind = FROM_PROTO.get(item.kind);
  return {
    kind: kind ?? "unknown",
    name: kind === undefined ? `${item.name} (kind ${item.kind})` : item.name,
    owner: ownerFromProto(item.owner),
    sizeBytes: Number(item.sizeBytes),
    removed: item.removed,
    error: item.error,
  };
}
