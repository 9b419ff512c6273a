// Instance records ↔ mvm.v1.Instance, and conditions ↔ mvm.v1.Condition.

import { create } from "@bufbuild/protobuf";
import type { Condition, Instance } from "../../core/model.js";
import { ConditionSchema, InstanceRefSchema, type Condition as ProtoCondition, type InstanceRef } from "../../../gen/mvm/v1/common_pb.js";
import {
  IdleMetricsSchema,
  InstanceNetSchema,
  InstanceSchema,
  InstanceVmmSchema,
  type Instance as ProtoInstance,
} from "../../../gen/mvm/v1/instance_pb.js";
import {
  conditionStatusFromProto,
  conditionStatusToProto,
  hypervisorKindFromProto,
  hypervisorToProto,
  instanceStatusFromProto,
  instanceStatusToProto,
} from "./enums.js";
import { isoToTimestamp, optionalIsoToTimestamp, optionalTimestampToIso, requiredTimestampToIso } from "./timestamps.js";

export function conditionToProto(c: Condition): ProtoCondition {
  return create(ConditionSchema, {
    type: c.type,
    status: conditionStatusToProto(c.status),
    reason: c.reason,
    message: c.message,
    lastTransitionAt: isoToTimestamp(c.lastTransitionAt),
  });
}

export function conditionFromProto(c: ProtoCondition): Condition {
  return {
    type: c.type,
    status: conditionStatusFromProto(c.status),
    reason: c.reason,
    message: c.message,
    lastTransitionAt: requiredTimestampToIso(c.lastTransitionAt),
  };
}

export function instanceRefOf(i: { tenantId: string; poolId: string; instanceId: string }): InstanceRef {
  return create(InstanceRefSchema, { tenantId: i.tenantId, poolId: i.poolId, instanceId: i.instanceId });
}

export function instanceToProto(i: Instance): ProtoInstance {
  return create(InstanceSchema, {
    schemaVersion: i.schemaVersion,
    instanceId: i.instanceId,
    tenantId: i.tenantId,
    poolId: i.poolId,
    status: instanceStatusToProto(i.status),
    revision: i.revision,
    net: create(InstanceNetSchema, { ...i.net }),
    vmm:
      i.vmm === null
        ? undefined
        : create(InstanceVmmSchema, {
            hypervisor: hypervisorToProto(i.vmm.hypervisor),
            pid: i.vmm.pid,
            pidStartTime: BigInt(i.vmm.pidStartTime),
            apiSocket: i.vmm.apiSocket,
          }),
    conditions: i.conditions.map(conditionToProto),
    idle: create(IdleMetricsSchema, {
      idleS: i.idle.idleS,
      cpuPct: i.idle.cpuPct,
      netBytes: BigInt(i.idle.netBytes),
      lastSampleAt: optionalIsoToTimestamp(i.idle.lastSampleAt),
    }),
    createdAt: isoToTimestamp(i.createdAt),
    updatedAt: isoToTimestamp(i.updatedAt),
    lastStartedAt: optionalIsoToTimestamp(i.lastStartedAt),
    lastStoppedAt: optionalIsoToTimestamp(i.lastStoppedAt),
    lastSnapshotAt: optionalIsoToTimestamp(i.lastSnapshotAt),
    healthy: i.healthy,
    lastHealthCheckAt: optionalIsoToTimestamp(i.lastHealthCheckAt),
  });
}

/**
 * The domain record of a message. The contract does not carry the VMM's network namespace, so a record read back
 * has `vmm.netns` null; everything else survives the round trip.
 */
export function instanceFromProto(i: ProtoInstance): Instance {
  const net = i.net ?? create(InstanceNetSchema);
  const idle = i.idle ?? create(IdleMetricsSchema);
  return {
    schemaVersion: i.schemaVersion,
    instanceId: i.instanceId,
    tenantId: i.tenantId,
    poolId: i.poolId,
    status: instanceStatusFromProto(i.status) ?? "created",
    revision: i.revision,
    net: { tapName: net.tapName, mac: net.mac, guestIp: net.guestIp, gatewayIp: net.gatewayIp, prefixLen: net.prefixLen },
    vmm:
      i.vmm === undefined
        ? null
        : {
            hypervisor: hypervisorKindFromProto(i.vmm.hypervisor),
            pid: i.vmm.pid,
            pidStartTime: Number(i.vmm.pidStartTime),
            apiSocket: i.vmm.apiSocket,
            netns: null,
          },
    conditions: i.conditions.map(conditionFromProto),
    idle: { idleS: idle.idleS, cpuPct: idle.cpuPct, netBytes: Number(idle.netBytes), lastSampleAt: optionalTimestampToIso(idle.lastSampleAt) },
    createdAt: requiredTimestampToIso(i.createdAt),
    updatedAt: requiredTimestampToIso(i.updatedAt),
    lastStartedAt: optionalTimestampToIso(i.lastStartedAt),
    lastStoppedAt: optionalTimestampToIso(i.lastStoppedAt),
    lastSnapshotAt: optionalTimestampToIso(i.lastSnapshotAt),
    healthy: i.healthy,
    lastHealthCheckAt: optionalTimestampToIso(i.lastHealthCheckAt),
  };
}
