// Worker pools ↔ mvm.v1.WorkerPool (the user-written part nested in PoolSpec), and PoolSpec → the use cases'
// PoolSpecInput: in full for CreatePool, or only the fields an update mask names for UpdatePool.

import { create } from "@bufbuild/protobuf";
import type { FieldViolation } from "../../core/errors.js";
import {
  DEFAULT_SLEEP_POLICY,
  type DesiredCounts,
  type ImageSource,
  type Instance,
  type SleepPolicy,
  type WorkerPool,
} from "../../core/model.js";
import type { PoolSpecInput } from "../../core/use-cases/pools.js";
import {
  DesiredCountsSchema,
  ImageSourceSchema,
  PoolResourcesSchema,
  PoolSpecSchema,
  SleepPolicySchema,
  WorkerPoolSchema,
  type DesiredCounts as ProtoDesiredCounts,
  type ImageSource as ProtoImageSource,
  type PoolSpec as ProtoPoolSpec,
  type SleepPolicy as ProtoSleepPolicy,
  type WorkerPool as ProtoWorkerPool,
} from "../../../gen/mvm/v1/pool_pb.js";
import {
  compressionFromProto,
  compressionToProto,
  hypervisorChoiceFromProto,
  hypervisorToProto,
  seccompPolicyFromProto,
  seccompPolicyToProto,
} from "./enums.js";
import { isoToTimestamp, requiredTimestampToIso } from "./timestamps.js";

export const DEFAULT_DEBIAN_SUITE = "bookworm";

export function imageSourceToProto(image: ImageSource): ProtoImageSource {
  if (image.kind === "debian") {
    return create(ImageSourceSchema, {
      source: { case: "debian", value: { suite: image.suite, packages: [...image.packages], extraFiles: { ...image.extraFiles } } },
    });
  }
  return create(ImageSourceSchema, { source: { case: "nix", value: { flakeRef: image.flakeRef, profile: image.profile } } });
}

/** The image a message names, or undefined (with a violation at `field`) when neither case is set. */
export function imageSourceFromProto(image: ProtoImageSource | undefined, field: string, violations: FieldViolation[]): ImageSource | undefined {
  switch (image?.source.case) {
    case "debian": {
      const d = image.source.value;
      return { kind: "debian", suite: d.suite === "" ? DEFAULT_DEBIAN_SUITE : d.suite, packages: [...d.packages], extraFiles: { ...d.extraFiles } };
    }
    case "nix":
      return { kind: "nix", flakeRef: image.source.value.flakeRef, profile: image.source.value.profile };
    default:
      violations.push({ field, rule: "is required: set exactly one of debian or nix" });
      return undefined;
  }
}

export function sleepPolicyToProto(p: SleepPolicy): ProtoSleepPolicy {
  return create(SleepPolicySchema, { ...p });
}

const SLEEP_POLICY_FIELDS = ["warmAfterIdleS", "sleepAfterIdleS", "cpuIdlePct", "netIdleBytes"] as const;

/** The thresholds set on the message; absent ones keep their current (or default) values. */
export function sleepPolicyPatchFromProto(p: ProtoSleepPolicy | undefined): Partial<SleepPolicy> {
  const out: Partial<SleepPolicy> = {};
  if (!p) return out;
  for (const field of SLEEP_POLICY_FIELDS) {
    const value = p[field];
    if (value !== undefined) out[field] = value;
  }
  return out;
}

export function desiredCountsToProto(c: DesiredCounts): ProtoDesiredCounts {
  return create(DesiredCountsSchema, { ...c });
}

export function desiredCountsFromProto(c: ProtoDesiredCounts): DesiredCounts {
  return { running: c.running, warm: c.warm, sleeping: c.sleeping };
}

export function poolSpecToProto(pool: WorkerPool): ProtoPoolSpec {
  return create(PoolSpecSchema, {
    image: imageSourceToProto(pool.image),
    resources: create(PoolResourcesSchema, { ...pool.resources }),
    desiredCounts: desiredCountsToProto(pool.desiredCounts),
    hypervisor: hypervisorToProto(pool.hypervisor),
    seccompPolicy: seccompPolicyToProto(pool.seccompPolicy),
    snapshotCompression: compressionToProto(pool.snapshotCompression),
    metadataEnabled: pool.metadataEnabled,
    sleepPolicy: sleepPolicyToProto(pool.sleepPolicy),
    pinned: pool.pinned,
    critical: pool.critical,
    userData: pool.userData ?? "",
  });
}

/** Instances of a pool now running, warm and sleeping. */
export function observedCounts(instances: readonly Instance[]): DesiredCounts {
  const counts = { running: 0, warm: 0, sleeping: 0 };
  for (const i of instances) {
    if (i.status === "running" || i.status === "warm" || i.status === "sleeping") counts[i.status]++;
  }
  return counts;
}

export function poolToProto(pool: WorkerPool, observed?: DesiredCounts): ProtoWorkerPool {
  return create(WorkerPoolSchema, {
    schemaVersion: pool.schemaVersion,
    tenantId: pool.tenantId,
    poolId: pool.poolId,
    spec: poolSpecToProto(pool),
    currentRevision: pool.currentRevision,
    // The domain keeps no pool conditions yet; reconcile (issue 7) will add `NotBuilt` and `Reconciled`.
    conditions: [],
    observedCounts: desiredCountsToProto(observed ?? { running: 0, warm: 0, sleeping: 0 }),
    createdAt: isoToTimestamp(pool.createdAt),
    updatedAt: isoToTimestamp(pool.updatedAt),
  });
}

export function poolFromProto(p: ProtoWorkerPool): WorkerPool {
  const violations: FieldViolation[] = [];
  const spec = p.spec ?? create(PoolSpecSchema);
  const resources = spec.resources ?? create(PoolResourcesSchema);
  return {
    schemaVersion: p.schemaVersion,
    tenantId: p.tenantId,
    poolId: p.poolId,
    image: imageSourceFromProto(spec.image, "spec.image", violations) ?? { kind: "debian", suite: DEFAULT_DEBIAN_SUITE, packages: [], extraFiles: {} },
    resources: { vcpus: resources.vcpus, memMib: resources.memMib, dataDiskMib: resources.dataDiskMib },
    desiredCounts: desiredCountsFromProto(spec.desiredCounts ?? create(DesiredCountsSchema)),
    hypervisor: hypervisorChoiceFromProto(spec.hypervisor, "spec.hypervisor", violations) ?? "auto",
    seccompPolicy: seccompPolicyFromProto(spec.seccompPolicy, "spec.seccomp_policy", violations) ?? "default",
    snapshotCompression: compressionFromProto(spec.snapshotCompression, "spec.snapshot_compression", violations) ?? "none",
    metadataEnabled: spec.metadataEnabled ?? true,
    ...(spec.userData !== "" ? { userData: spec.userData } : {}),
    sleepPolicy: { ...DEFAULT_SLEEP_POLICY, ...sleepPolicyPatchFromProto(spec.sleepPolicy) },
    pinned: spec.pinned,
    critical: spec.critical,
    currentRevision: p.currentRevision,
    createdAt: requiredTimestampToIso(p.createdAt),
    updatedAt: requiredTimestampToIso(p.updatedAt),
  };
}

/**
 * A complete spec for CreatePool: image and resources are required; every other field takes its default when
 * unset. Field paths are prefixed with `prefix` (`spec`), as the request names them.
 */
export function poolSpecInputFromProto(spec: ProtoPoolSpec | undefined, prefix: string, violations: FieldViolation[]): PoolSpecInput {
  if (!spec) {
    violations.push({ field: prefix, rule: "is required (image and resources at least)" });
    return {};
  }
  const out: PoolSpecInput = {};
  const image = imageSourceFromProto(spec.image, `${prefix}.image`, violations);
  if (image) out.image = image;
  if (spec.resources) out.resources = { vcpus: spec.resources.vcpus, memMib: spec.resources.memMib, dataDiskMib: spec.resources.dataDiskMib };
  else violations.push({ field: `${prefix}.resources`, rule: "is required (vcpus and mem_mib at least)" });
  if (spec.desiredCounts) out.desiredCounts = desiredCountsFromProto(spec.desiredCounts);
  const hypervisor = hypervisorChoiceFromProto(spec.hypervisor, `${prefix}.hypervisor`, violations);
  if (hypervisor) out.hypervisor = hypervisor;
  const seccomp = seccompPolicyFromProto(spec.seccompPolicy, `${prefix}.seccomp_policy`, violations);
  if (seccomp) out.seccompPolicy = seccomp;
  const compression = compressionFromProto(spec.snapshotCompression, `${prefix}.snapshot_compression`, violations);
  if (compression) out.snapshotCompression = compression;
  if (spec.metadataEnabled !== undefined) out.metadataEnabled = spec.metadataEnabled;
  if (spec.sleepPolicy) out.sleepPolicy = sleepPolicyPatchFromProto(spec.sleepPolicy);
  out.pinned = spec.pinned;
  out.critical = spec.critical;
  if (spec.userData !== "") out.userData = spec.userData;
  return out;
}

/** Update-mask paths of PoolSpec, snake_case, and the leaves each parent covers. */
const POOL_MASK_LEAVES: Readonly<Record<string, readonly string[]>> = {
  image: [],
  resources: ["vcpus", "mem_mib", "data_disk_mib"],
  desired_counts: ["running", "warm", "sleeping"],
  hypervisor: [],
  seccomp_policy: [],
  snapshot_compression: [],
  metadata_enabled: [],
  sleep_policy: ["warm_after_idle_s", "sleep_after_idle_s", "cpu_idle_pct", "net_idle_bytes"],
  pinned: [],
  critical: [],
  user_data: [],
};

function snakeCase(path: string): string {
  return path.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

function camelCase(snake: string): string {
  return snake.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}

/**
 * The fields of `spec` an update mask names. Paths are snake_case (camelCase from the JSON mapping is accepted),
 * relative to PoolSpec; an unknown path is a violation at `update_mask.paths[i]`. A whole message path
 * (`resources`) applies every field of the message; for `sleep_policy` only its set thresholds.
 */
export function poolSpecPatchFromMask(
  spec: ProtoPoolSpec | undefined,
  paths: readonly string[],
  violations: FieldViolation[],
): PoolSpecInput {
  const s = spec ?? create(PoolSpecSchema);
  const out: PoolSpecInput = {};
  if (paths.length === 0) {
    violations.push({ field: "update_mask", rule: "must name at least one field (for example resources.mem_mib or pinned)" });
    return out;
  }
  paths.forEach((raw, index) => {
    const path = snakeCase(raw);
    const [head = "", leaf, ...rest] = path.split(".");
    const leaves = POOL_MASK_LEAVES[head];
    if (leaves === undefined || rest.length > 0 || (leaf !== undefined && !leaves.includes(leaf))) {
      violations.push({ field: `update_mask.paths[${index}]`, rule: `must name a field of PoolSpec (got ${JSON.stringify(raw)})` });
      return;
    }
    switch (head) {
      case "image": {
        const image = imageSourceFromProto(s.image, "spec.image", violations);
        if (image) out.image = image;
        break;
      }
      case "resources": {
        const r = s.resources ?? create(PoolResourcesSchema);
        const all = { vcpus: r.vcpus, memMib: r.memMib, dataDiskMib: r.dataDiskMib };
        out.resources = { ...out.resources, ...(leaf === undefined ? all : { [camelCase(leaf)]: all[camelCase(leaf) as keyof typeof all] }) };
        break;
      }
      case "desired_counts": {
        const all = desiredCountsFromProto(s.desiredCounts ?? create(DesiredCountsSchema));
        out.desiredCounts = { ...out.desiredCounts, ...(leaf === undefined ? all : { [leaf]: all[leaf as keyof DesiredCounts] }) };
        break;
      }
      case "hypervisor":
        out.hypervisor = hypervisorChoiceFromProto(s.hypervisor, "spec.hypervisor", violations) ?? "auto";
        break;
      case "seccomp_policy":
        out.seccompPolicy = seccompPolicyFromProto(s.seccompPolicy, "spec.seccomp_policy", violations) ?? "default";
        break;
      case "snapshot_compression":
        out.snapshotCompression = compressionFromProto(s.snapshotCompression, "spec.snapshot_compression", violations) ?? "none";
        break;
      case "metadata_enabled":
        out.metadataEnabled = s.metadataEnabled ?? true;
        break;
      case "sleep_policy": {
        const patch = sleepPolicyPatchFromProto(s.sleepPolicy);
        if (leaf === undefined) out.sleepPolicy = { ...out.sleepPolicy, ...patch };
        else {
          const key = camelCase(leaf) as keyof SleepPolicy;
          // A named threshold left unset on the message goes back to its default.
          out.sleepPolicy = { ...out.sleepPolicy, [key]: patch[key] ?? DEFAULT_SLEEP_POLICY[key] };
        }
        break;
      }
      case "pinned":
        out.pinned = s.pinned;
        break;
      case "critical":
        out.critical = s.critical;
        break;
      case "user_data":
        out.userData = s.userData;
        break;
    }
  });
  return out;
}

/**
 * A use-case PoolSpecInput as a PoolSpec plus the update-mask paths of the fields it sets (the inverse of
 * poolSpecPatchFromMask), for clients that act through the API: UpdatePool reads only the masked fields.
 */
export function poolSpecInputToProto(input: PoolSpecInput): { spec: ProtoPoolSpec; paths: string[] } {
  const paths: string[] = [];
  const spec = create(PoolSpecSchema);
  if (input.image !== undefined) {
    spec.image = imageSourceToProto(input.image);
    paths.push("image");
  }
  if (input.resources !== undefined) {
    spec.resources = create(PoolResourcesSchema, { ...input.resources });
    for (const key of ["vcpus", "memMib", "dataDiskMib"] as const) if (input.resources[key] !== undefined) paths.push(`resources.${snakeCase(key)}`);
  }
  if (input.desiredCounts !== undefined) {
    spec.desiredCounts = create(DesiredCountsSchema, { ...input.desiredCounts });
    for (const key of ["running", "warm", "sleeping"] as const) if (input.desiredCounts[key] !== undefined) paths.push(`desired_counts.${key}`);
  }
  if (input.hypervisor !== undefined) {
    spec.hypervisor = hypervisorToProto(input.hypervisor);
    paths.push("hypervisor");
  }
  if (input.seccompPolicy !== undefined) {
    spec.seccompPolicy = seccompPolicyToProto(input.seccompPolicy);
    paths.push("seccomp_policy");
  }
  if (input.snapshotCompression !== undefined) {
    spec.snapshotCompression = compressionToProto(input.snapshotCompression);
    paths.push("snapshot_compression");
  }
  if (input.metadataEnabled !== undefined) {
    spec.metadataEnabled = input.metadataEnabled;
    paths.push("metadata_enabled");
  }
  if (input.sleepPolicy !== undefined) {
    spec.sleepPolicy = create(SleepPolicySchema, { ...input.sleepPolicy });
    for (const key of SLEEP_POLICY_FIELDS) if (input.sleepPolicy[key] !== undefined) paths.push(`sleep_policy.${snakeCase(key)}`);
  }
  if (input.pinned !== undefined) {
    spec.pinned = input.pinned;
    paths.push("pinned");
  }
  if (input.userData !== undefined) {
    spec.userData = input.userData;
    paths.push("user_data");
  }
  if (input.critical !== undefined) {
    spec.critical = input.critical;
    paths.push("critical");
  }
  return { spec, paths };
}
