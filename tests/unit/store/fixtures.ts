// Records for store tests. Values are arbitrary but valid; what a test asserts on it sets itself.

import { DEFAULT_QUOTA, DEFAULT_SLEEP_POLICY, SCHEMA_VERSION } from "../../../src/core/model.js";
import type { BuildRevision, Instance, Tenant, WorkerPool } from "../../../src/core/model.js";

const T0 = "2025-01-02T03:04:05.000Z";

export function tenantRecord(tenantId: string, netId = 1): Tenant {
  return {
    schemaVersion: SCHEMA_VERSION,
    tenantId,
    quotas: { ...DEFAULT_QUOTA },
    network: { netId, ipv4Subnet: "10.240.1.0/24", gatewayIp: "10.240.1.1", bridgeName: `br-mvm-${netId}` },
    sshPublicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly tenant@mvm",
    secretsEpoch: 0,
    labels: { team: "a" },
    createdAt: T0,
    updatedAt: T0,
  };
}

export function poolRecord(tenantId: string, poolId: string): WorkerPool {
  return {
    schemaVersion: SCHEMA_VERSION,
    tenantId,
    poolId,
    image: { kind: "debian", suite: "bookworm", packages: ["curl"], extraFiles: {} },
    resources: { vcpus: 1, memMib: 512, dataDiskMib: 0 },
    desiredCounts: { running: 1, warm: 0, sleeping: 0 },
    hypervisor: "auto",
    seccompPolicy: "default",
    snapshotCompression: "none",
    metadataEnabled: true,
    sleepPolicy: { ...DEFAULT_SLEEP_POLICY },
    pinned: false,
    critical: false,
    currentRevision: "",
    createdAt: T0,
    updatedAt: T0,
  };
}

export function instanceRecord(tenantId: string, poolId: string, instanceId: string): Instance {
  return {
    schemaVersion: SCHEMA_VERSION,
    instanceId,
    tenantId,
    poolId,
    status: "created",
    revision: "r1",
    net: { tapName: "tn1i2", mac: "02:fc:00:01:00:02", guestIp: "10.240.1.3", gatewayIp: "10.240.1.1", prefixLen: 24 },
    vmm: null,
    conditions: [],
    idle: { idleS: 0, cpuPct: 0, netBytes: 0, lastSampleAt: null },
    createdAt: T0,
    updatedAt: T0,
    lastStartedAt: null,
    lastStoppedAt: null,
    lastSnapshotAt: null,
    healthy: false,
    lastHealthCheckAt: null,
  };
}

export function buildRecord(revision: string): BuildRevision {
  const artifact = (path: string) => ({ path, sha256: "0".repeat(64), sizeBytes: 1 });
  return {
    revision,
    image: { kind: "debian", suite: "bookworm", packages: [], extraFiles: {} },
    flakeLockHash: "",
    kernel: artifact("vmlinux"),
    initrd: null,
    rootfs: artifact("rootfs.ext4"),
    builder: "test",
    builtAt: T0,
    durationMs: 1,
  };
}

/** Resolves after `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
