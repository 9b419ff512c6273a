// Instance records ↔ mvm.v1.Instance, and conditions ↔ mvm.v1.Condition.

import { create } from "@bufbuild/protobuf";
import type { Condition, Instance } from "../../core/model.js";
import { ConditionSchema, InstanceRefSchema, type Condition as ProtoCondition, type InstanceRef } from "../../../gen/mvm/v1/common_pb.js";
import { IdleMetricsSchema, InstanceNetSchema, type IdleMetrics as ProtoIdleMetrics, type Instance as ProtoInstance } from "../../../gen/mvm/v1/instance_pb.js";
import {
  conditionStatusFromProto,
  conditionStatusToProto,
  hypervisorKindFromProto,
  hypervisorToProto,
  instanceStatusFromProto,
  instanceStatusToProto,
} from "./enums.js";
import { isoToTimestamp, optionalTimestampToIso, requiredTimestampToIso } from "./timestamps.js";

export function conditionToProto(c: Condition): ProtoCondition {
  return {
    $typeName: "mvm.v1.Condition",
    type: c.type,
    status: conditionStatusToProto(c.status),
    reason: c.reason,
    message: c.message,
    lastTransitionAt: isoToTimestamp(c.lastTransitionAt),
  };
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

// The messages are written as literals, not built with create(): every GetInstance and every entry of a list or a
// watch goes through here, and create()'s reflection cost more than the rest of the reply. Each literal has exactly
// the properties create() would give (message fields only when present); tests/unit/api/convert.test.ts compares.
export function instanceToProto(i: Instance): ProtoInstance {
  const out: ProtoInstance = {
    $typeName: "mvm.v1.Instance",
    schemaVersion: i.schemaVersion,
    instanceId: i.instanceId,
    tenantId: i.tenantId,
    poolId: i.poolId,
    status: instanceStatusToProto(i.status),
    revision: i.revision,
    conditions: i.conditions.map(conditionToProto),
    healthy: i.healthy,
    net: {
      $typeName: "mvm.v1.InstanceNet",
      tapName: i.net.tapName,
      mac: i.net.mac,
      guestIp: i.net.guestIp,
      gatewayIp: i.net.gatewayIp,
      prefixLen: i.net.prefixLen,
    },
  };
  if (i.vmm !== null) {
    out.vmm = {
      $typeName: "mvm.v1.InstanceVmm",
      hypervisor: hypervisorToProto(i.vmm.hypervisor),
      pid: i.vmm.pid,
      pidStartTime: BigInt(i.vmm.pidStartTime),
      apiSocket: i.vmm.apiSocket,
    };
  }
  const idle: ProtoIdleMetrics = { $typeName: "mvm.v1.IdleMetrics", idleS: i.idle.idleS, cpuPct: i.idle.cpuPct, netBytes: BigInt(i.idle.netBytes) };
  if (i.idle.lastSampleAt !== null) idle.lastSampleAt = isoToTimestamp(i.idle.lastSampleAt);
  out.idle = idle;
  out.createdAt = isoToTimestamp(i.createdAt);
  out.updatedAt = isoToTimestamp(i.updatedAt);
  if (i.lastStartedAt !== null) out.lastStartedAt = isoToTimestamp(i.lastStartedAt);
  if (i.lastStoppedAt !== null) out.lastStoppedAt = isoToTimestamp(i.lastStoppedAt);
  if (i.lastSnapshotAt !== null) out.lastSnapshotAt = isoToTimestamp(i.lastSnapshotAt);
  if (i.lastHealthCheckAt !== null) out.lastHealthCheckAt = isoToTimestamp(i.lastHealthCheckAt);
  return out;
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
