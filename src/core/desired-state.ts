// Desired state (SPEC §9): the document a coordinator pushes to a node, or an operator applies from a file. It is
// validated completely before anything is applied: every fault is collected with its field path, and one `invalid`
// error carries them all, so a user fixes a document in one round rather than one error at a time.
//
// Input is the JSON form, in snake_case (files) or camelCase (the proto JSON mapping), mixed freely. From the proto
// JSON mapping it also takes enum names (`HYPERVISOR_QEMU`; `*_UNSPECIFIED` selects the default), 64-bit integers
// written as decimal strings, `null` for "not set", and an image as a oneof (`{"debian": {...}}`) as well as in the
// model's form (`{"kind": "debian", ...}`). Keys inside maps (labels, extra_files) are data and kept as written.
// An unknown key is an error, never ignored: a misspelt field must not silently do nothing.

import { invalid } from "./errors.js";
import type { FieldViolation } from "./errors.js";
import { idViolations } from "./ids.js";
import {
  COMPRESSIONS,
  DEFAULT_QUOTA,
  DEFAULT_SLEEP_POLICY,
  HYPERVISORS,
  SECCOMP_POLICIES,
} from "./model.js";
import type {
  Compression,
  DesiredCounts,
  HypervisorChoice,
  ImageSource,
  PoolResources,
  SeccompPolicy,
  SleepPolicy,
  TenantQuota,
} from "./model.js";
import { bridgeName, netIdViolations } from "./naming.js";
import { desiredCountsExcess, type DesiredTotalExcess } from "./quota.js";
import { cidrsOverlap, cidrViolations, formatCidr, gatewayAddress, parseCidr } from "./subnet.js";
import type { Cidr } from "./subnet.js";
import {
  booleanViolations,
  debianImageViolations,
  desiredCountsViolations,
  enumViolations,
  IMAGE_KINDS,
  isPlainObject,
  labelsViolations,
  nixImageViolations,
  quotaViolations,
  resourcesViolations,
  sleepPolicyViolations,
  toSnakeCase,
  userDataViolations,
} from "./validation.js";

export const DESIRED_STATE_SCHEMA_VERSION = 1;

export interface DesiredPool {
  poolId: string;
  image: ImageSource;
  resources: PoolResources;
  desiredCounts: DesiredCounts;
  hypervisor: HypervisorChoice;
  seccompPolicy: SeccompPolicy;
  snapshotCompression: Compression;
  metadataEnabled: boolean;
  /** "" for none. */
  userData: string;
  sleepPolicy: SleepPolicy;
  pinned: boolean;
  critical: boolean;
}

export interface DesiredTenantNetwork {
  netId: number;
  ipv4Subnet: string;
}

export interface DesiredTenant {
  tenantId: string;
  /** null: the node allocates one (single-node use); a coordinator always assigns it. */
  network: DesiredTenantNetwork | null;
  quotas: TenantQuota;
  labels: Record<string, string>;
  /** Opaque digest of the tenant's secrets; a change triggers a secrets rotation. "" when the tenant has none. */
  secretsHash: string;
  pools: DesiredPool[];
}

export interface DesiredState {
  schemaVersion: number;
  /** The node this document is for; the agent refuses a document meant for another node. */
  nodeId: string;
  tenants: DesiredTenant[];
  pruneUnknownTenants: boolean;
  pruneUnknownPools: boolean;
}

/** Field path of the document itself, for faults that belong to no field. */
export const ROOT_FIELD = "desired_state";

export const NODE_ID_RULE = "must be 1-253 characters of [A-Za-z0-9._-], starting with a letter or digit";
const NODE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/;

export const SECRETS_HASH_MAX_LENGTH = 256;
export const SECRETS_HASH_RULE = `must be at most ${SECRETS_HASH_MAX_LENGTH} printable characters without whitespace`;
const SECRETS_HASH_PATTERN = /^[\x21-\x7e]*$/;

const REQUIRED = "is required";

const TOP_FIELDS = ["schema_version", "node_id", "tenants", "prune_unknown_tenants", "prune_unknown_pools"] as const;
const TENANT_FIELDS = ["tenant_id", "network", "quotas", "labels", "secrets_hash", "pools"] as const;
const NETWORK_FIELDS = ["net_id", "ipv4_subnet", "gateway_ip", "bridge_name"] as const;
const QUOTA_FIELDS = [
  "max_vcpus",
  "max_mem_mib",
  "max_running",
  "max_warm",
  "max_pools",
  "max_instances_per_pool",
  "max_disk_gib",
] as const;
const POOL_FIELDS = [
  "pool_id",
  "tenant_id",
  "image",
  "resources",
  "desired_counts",
  "hypervisor",
  "seccomp_policy",
  "snapshot_compression",
  "metadata_enabled",
  "sleep_policy",
  "pinned",
  "critical",
  "user_data",
] as const;
const RESOURCE_FIELDS = ["vcpus", "mem_mib", "data_disk_mib"] as const;
const COUNT_FIELDS = ["running", "warm", "sleeping"] as const;
const SLEEP_POLICY_FIELDS = ["warm_after_idle_s", "sleep_after_idle_s", "cpu_idle_pct", "net_idle_bytes"] as const;
const DEBIAN_FIELDS = ["suite", "packages", "extra_files"] as const;
const NIX_FIELDS = ["flake_ref", "profile"] as const;

/** Proto enum value prefixes: `HYPERVISOR_QEMU` is `qemu`. */
const HYPERVISOR_PREFIX = "HYPERVISOR_";
const SECCOMP_POLICY_PREFIX = "SECCOMP_POLICY_";
const COMPRESSION_PREFIX = "COMPRESSION_";

function join(path: string, key: string): string {
  return path === "" ? key : `${path}.${key}`;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min((previous[j] as number) + 1, (current[j - 1] as number) + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length] as number;
}

function unknownFieldRule(key: string, known: readonly string[]): string {
  const snake = toSnakeCase(key);
  const near = known.find((k) => editDistance(snake, k) <= 2);
  return near === undefined
    ? `unknown field (expected one of: ${known.join(", ")})`
    : `unknown field (did you mean ${near}?)`;
}

/**
 * The object's fields keyed by their snake_case names, or null (with a violation) when `value` is not an object.
 * Unknown keys, and a field given both in snake_case and in camelCase, are violations. `null` values are dropped:
 * in the proto JSON mapping null means "not set".
 */
function readFields(
  value: unknown,
  path: string,
  known: readonly string[],
  violations: FieldViolation[],
): Map<string, unknown> | null {
  if (!isPlainObject(value)) {
    violations.push({ field: path === "" ? ROOT_FIELD : path, rule: "must be an object" });
    return null;
  }
  const fields = new Map<string, unknown>();
  const spelledAs = new Map<string, string>();
  for (const [key, fieldValue] of Object.entries(value)) {
    const name = toSnakeCase(key);
    if (!known.includes(name)) {
      violations.push({ field: join(path, key), rule: unknownFieldRule(key, known) });
      continue;
    }
    const earlier = spelledAs.get(name);
    if (earlier !== undefined) {
      violations.push({ field: join(path, name), rule: `given twice, as ${earlier} and ${key}` });
      continue;
    }
    spelledAs.set(name, key);
    if (fieldValue !== null) fields.set(name, fieldValue);
  }
  return fields;
}

/** The proto JSON mapping writes 64-bit integers as decimal strings; they are read back as numbers. */
function integerInput(value: unknown): unknown {
  return typeof value === "string" && /^-?(0|[1-9][0-9]*)$/.test(value) ? Number(value) : value;
}

function enumInput<T extends string>(
  value: unknown,
  allowed: readonly T[],
  fallback: T,
  protoPrefix: string,
  field: string,
  violations: FieldViolation[],
): T {
  if (value === undefined) return fallback;
  if (typeof value === "string") {
    if ((allowed as readonly string[]).includes(value)) return value as T;
    if (value === `${protoPrefix}UNSPECIFIED`) return fallback;
    if (value.startsWith(protoPrefix)) {
      const name = value.slice(protoPrefix.length).toLowerCase();
      if ((allowed as readonly string[]).includes(name)) return name as T;
    }
  }
  violations.push(...enumViolations(value, allowed, field));
  return fallback;
}

function userDataInput(value: unknown, field: string, violations: FieldViolation[]): string {
  if (value === undefined) return "";
  const found = userDataViolations(value, field);
  violations.push(...found);
  return found.length === 0 ? (value as string) : "";
}

function booleanInput(value: unknown, fallback: boolean, field: string, violations: FieldViolation[]): boolean {
  const found = booleanViolations(value, field);
  violations.push(...found);
  return typeof value === "boolean" ? value : fallback;
}

/** Appends `found` and tells whether it was empty. */
function record(violations: FieldViolation[], found: readonly FieldViolation[]): boolean {
  violations.push(...found);
  return found.length === 0;
}

// The parse functions below return what they could read, leaving out (undefined) any part that was invalid, so
// that cross-field and cross-tenant checks still run on the valid parts and report their faults in the same pass.

function parseQuotas(value: unknown, path: string, violations: FieldViolation[]): TenantQuota | undefined {
  if (value === undefined) return { ...DEFAULT_QUOTA };
  const fields = readFields(value, path, QUOTA_FIELDS, violations);
  if (!fields) return undefined;
  const given: Partial<Record<keyof TenantQuota, unknown>> = {
    maxVcpus: integerInput(fields.get("max_vcpus")),
    maxMemMib: integerInput(fields.get("max_mem_mib")),
    maxRunning: integerInput(fields.get("max_running")),
    maxWarm: integerInput(fields.get("max_warm")),
    maxPools: integerInput(fields.get("max_pools")),
    maxInstancesPerPool: integerInput(fields.get("max_instances_per_pool")),
    maxDiskGib: integerInput(fields.get("max_disk_gib")),
  };
  if (!record(violations, quotaViolations(given, path))) return undefined;
  const quotas: TenantQuota = { ...DEFAULT_QUOTA };
  for (const [name, limit] of Object.entries(given) as Array<[keyof TenantQuota, unknown]>) {
    if (typeof limit === "number") quotas[name] = limit;
  }
  return quotas;
}

interface NetworkDraft {
  network: DesiredTenantNetwork | null;
  /** Present only when net_id is valid. */
  netId?: number;
  /** Present only when ipv4_subnet is valid. */
  subnet?: Cidr;
}

function parseNetwork(value: unknown, path: string, violations: FieldViolation[]): NetworkDraft {
  if (value === undefined) return { network: null };
  const fields = readFields(value, path, NETWORK_FIELDS, violations);
  if (!fields) return { network: null };
  const draft: NetworkDraft = { network: null };

  const netId = integerInput(fields.get("net_id"));
  if (netId === undefined) violations.push({ field: `${path}.net_id`, rule: REQUIRED });
  else if (record(violations, netIdViolations(netId, `${path}.net_id`))) draft.netId = netId as number;

  const subnetText = fields.get("ipv4_subnet");
  if (subnetText === undefined) violations.push({ field: `${path}.ipv4_subnet`, rule: REQUIRED });
  else if (record(violations, cidrViolations(subnetText, `${path}.ipv4_subnet`))) {
    draft.subnet = parseCidr(subnetText as string, `${path}.ipv4_subnet`);
  }

  // Derived fields are accepted (a TenantNetwork copied from an API answer has them) but must match the derivation.
  const gateway = fields.get("gateway_ip");
  if (gateway !== undefined && draft.subnet !== undefined && gateway !== gatewayAddress(draft.subnet)) {
    violations.push({
      field: `${path}.gateway_ip`,
      rule: `must be ${gatewayAddress(draft.subnet)}, the first host address of ipv4_subnet (or be left out)`,
    });
  }
  const bridge = fields.get("bridge_name");
  if (bridge !== undefined && draft.netId !== undefined && bridge !== bridgeName(draft.netId)) {
    violations.push({
      field: `${path}.bridge_name`,
      rule: `must be ${bridgeName(draft.netId)}, derived from net_id (or be left out)`,
    });
  }
  if (draft.netId !== undefined && draft.subnet !== undefined) {
    draft.network = { netId: draft.netId, ipv4Subnet: subnetText as string };
  }
  return draft;
}

function parseDebian(value: unknown, path: string, violations: FieldViolation[]): ImageSource | undefined {
  const fields = readFields(value, path, DEBIAN_FIELDS, violations);
  if (!fields) return undefined;
  return debianFromFields(fields, path, violations);
}

function debianFromFields(
  fields: Map<string, unknown>,
  path: string,
  violations: FieldViolation[],
): ImageSource | undefined {
  const given = { suite: fields.get("suite"), packages: fields.get("packages"), extraFiles: fields.get("extra_files") };
  if (!record(violations, debianImageViolations(given, path))) return undefined;
  return {
    kind: "debian",
    suite: given.suite as string,
    packages: [...((given.packages as string[] | undefined) ?? [])],
    extraFiles: { ...((given.extraFiles as Record<string, string> | undefined) ?? {}) },
  };
}

function nixFromFields(fields: Map<string, unknown>, path: string, violations: FieldViolation[]): ImageSource | undefined {
  const given = { flakeRef: fields.get("flake_ref"), profile: fields.get("profile") };
  if (!record(violations, nixImageViolations(given, path))) return undefined;
  return { kind: "nix", flakeRef: given.flakeRef as string, profile: given.profile as string };
}

/** Either `{kind: "debian", suite, ...}` (the model's form) or `{debian: {suite, ...}}` (the proto oneof). */
function parseImage(value: unknown, path: string, violations: FieldViolation[]): ImageSource | undefined {
  if (value === undefined) {
    violations.push({ field: path, rule: REQUIRED });
    return undefined;
  }
  if (!isPlainObject(value)) {
    violations.push({ field: path, rule: "must be an object" });
    return undefined;
  }
  if ("kind" in value) {
    const kind = value.kind;
    if (kind === "debian" || kind === "nix") {
      const known = ["kind", ...(kind === "debian" ? DEBIAN_FIELDS : NIX_FIELDS)];
      const fields = readFields(value, path, known, violations) as Map<string, unknown>;
      return kind === "debian" ? debianFromFields(fields, path, violations) : nixFromFields(fields, path, violations);
    }
    violations.push(...enumViolations(kind, IMAGE_KINDS, `${path}.kind`));
    return undefined;
  }
  const fields = readFields(value, path, IMAGE_KINDS, violations) as Map<string, unknown>;
  const chosen = IMAGE_KINDS.filter((k) => fields.has(k));
  if (chosen.length !== 1) {
    const rule =
      chosen.length === 0
        ? "must set exactly one of debian, nix (or kind)"
        : "must set exactly one of debian, nix, not both";
    violations.push({ field: path, rule });
    return undefined;
  }
  const kind = chosen[0] as (typeof IMAGE_KINDS)[number];
  const innerPath = `${path}.${kind}`;
  if (kind === "debian") return parseDebian(fields.get(kind), innerPath, violations);
  const inner = readFields(fields.get(kind), innerPath, NIX_FIELDS, violations);
  return inner ? nixFromFields(inner, innerPath, violations) : undefined;
}

function parseResources(value: unknown, path: string, violations: FieldViolation[]): PoolResources | undefined {
  if (value === undefined) {
    violations.push({ field: path, rule: REQUIRED });
    return undefined;
  }
  const fields = readFields(value, path, RESOURCE_FIELDS, violations);
  if (!fields) return undefined;
  const given = {
    vcpus: integerInput(fields.get("vcpus")),
    memMib: integerInput(fields.get("mem_mib")),
    dataDiskMib: integerInput(fields.get("data_disk_mib")) ?? 0,
  };
  let ok = true;
  if (given.vcpus === undefined) ok = record(violations, [{ field: `${path}.vcpus`, rule: REQUIRED }]);
  if (given.memMib === undefined) ok = record(violations, [{ field: `${path}.mem_mib`, rule: REQUIRED }]) && ok;
  ok = record(violations, resourcesViolations(given, path)) && ok;
  return ok ? (given as PoolResources) : undefined;
}

function parseCounts(value: unknown, path: string, violations: FieldViolation[]): DesiredCounts | undefined {
  if (value === undefined) return { running: 0, warm: 0, sleeping: 0 };
  const fields = readFields(value, path, COUNT_FIELDS, violations);
  if (!fields) return undefined;
  const given = {
    running: integerInput(fields.get("running")) ?? 0,
    warm: integerInput(fields.get("warm")) ?? 0,
    sleeping: integerInput(fields.get("sleeping")) ?? 0,
  };
  return record(violations, desiredCountsViolations(given, path)) ? (given as DesiredCounts) : undefined;
}

function parseSleepPolicy(value: unknown, path: string, violations: FieldViolation[]): SleepPolicy {
  if (value === undefined) return { ...DEFAULT_SLEEP_POLICY };
  const fields = readFields(value, path, SLEEP_POLICY_FIELDS, violations);
  if (!fields) return { ...DEFAULT_SLEEP_POLICY };
  const merged = {
    warmAfterIdleS: integerInput(fields.get("warm_after_idle_s")) ?? DEFAULT_SLEEP_POLICY.warmAfterIdleS,
    sleepAfterIdleS: integerInput(fields.get("sleep_after_idle_s")) ?? DEFAULT_SLEEP_POLICY.sleepAfterIdleS,
    cpuIdlePct: fields.get("cpu_idle_pct") ?? DEFAULT_SLEEP_POLICY.cpuIdlePct,
    netIdleBytes: integerInput(fields.get("net_idle_bytes")) ?? DEFAULT_SLEEP_POLICY.netIdleBytes,
  };
  // Checked merged with the defaults, so a lone sleep_after_idle_s below the default warm_after_idle_s is caught.
  violations.push(...sleepPolicyViolations(merged, path));
  return merged as SleepPolicy;
}

interface PoolDraft {
  pool: DesiredPool;
  path: string;
  /** Each present only when valid. */
  poolId?: string;
  resources?: PoolResources;
  counts?: DesiredCounts;
}

function parsePool(
  value: unknown,
  path: string,
  tenantId: string | undefined,
  violations: FieldViolation[],
): PoolDraft | null {
  const fields = readFields(value, path, POOL_FIELDS, violations);
  if (!fields) return null;
  const poolId = fields.get("pool_id");
  const idOk =
    poolId === undefined
      ? record(violations, [{ field: `${path}.pool_id`, rule: REQUIRED }])
      : record(violations, idViolations(poolId, `${path}.pool_id`));
  const ownerId = fields.get("tenant_id");
  if (ownerId !== undefined && tenantId !== undefined && ownerId !== tenantId) {
    violations.push({
      field: `${path}.tenant_id`,
      rule: `must be the enclosing tenant's id ${tenantId} (or be left out), got ${JSON.stringify(ownerId)}`,
    });
  }
  const image = parseImage(fields.get("image"), `${path}.image`, violations);
  const resources = parseResources(fields.get("resources"), `${path}.resources`, violations);
  const counts = parseCounts(fields.get("desired_counts"), `${path}.desired_counts`, violations);
  const pool: DesiredPool = {
    poolId: poolId as string,
    image: image as ImageSource,
    resources: resources as PoolResources,
    desiredCounts: counts as DesiredCounts,
    hypervisor: enumInput(fields.get("hypervisor"), HYPERVISORS, "auto", HYPERVISOR_PREFIX, `${path}.hypervisor`, violations),
    seccompPolicy: enumInput(
      fields.get("seccomp_policy"),
      SECCOMP_POLICIES,
      "default",
      SECCOMP_POLICY_PREFIX,
      `${path}.seccomp_policy`,
      violations,
    ),
    snapshotCompression: enumInput(
      fields.get("snapshot_compression"),
      COMPRESSIONS,
      "none",
      COMPRESSION_PREFIX,
      `${path}.snapshot_compression`,
      violations,
    ),
    metadataEnabled: booleanInput(fields.get("metadata_enabled"), true, `${path}.metadata_enabled`, violations),
    sleepPolicy: parseSleepPolicy(fields.get("sleep_policy"), `${path}.sleep_policy`, violations),
    pinned: booleanInput(fields.get("pinned"), false, `${path}.pinned`, violations),
    critical: booleanInput(fields.get("critical"), false, `${path}.critical`, violations),
    userData: userDataInput(fields.get("user_data"), `${path}.user_data`, violations),
  };
  const draft: PoolDraft = { pool, path };
  if (idOk) draft.poolId = poolId as string;
  if (resources) draft.resources = resources;
  if (counts) draft.counts = counts;
  return draft;
}

interface TenantDraft {
  tenant: DesiredTenant;
  path: string;
  tenantId?: string;
  network: NetworkDraft;
}

/** Desired counts against the tenant's quota (quota.ts): what reconcile would be refused for anyway, caught before it starts. */
function poolsWithinQuota(
  pools: readonly PoolDraft[],
  quotas: TenantQuota,
  path: string,
  violations: FieldViolation[],
): void {
  const poolsPath = `${path}.pools`;
  if (pools.length > quotas.maxPools) {
    violations.push({ field: poolsPath, rule: `${pools.length} pools, above quotas.max_pools (${quotas.maxPools})` });
  }
  const excess = desiredCountsExcess(pools, quotas);
  for (const { index, instances } of excess.poolsAboveInstanceLimit) {
    violations.push({
      field: `${(pools[index] as PoolDraft).path}.desired_counts`,
      rule: `running + warm + sleeping is ${instances}, above quotas.max_instances_per_pool (${quotas.maxInstancesPerPool})`,
    });
  }
  const what: Record<DesiredTotalExcess["limit"], string> = {
    maxRunning: "desired running instances",
    maxWarm: "desired warm instances",
    maxVcpus: "vCPUs of desired running + warm instances",
    maxMemMib: "memory (MiB) of desired running + warm instances",
    maxDiskGib: "data disks (GiB) of desired instances",
  };
  for (const { limit, total } of excess.totals) {
    const shown = Number.isInteger(total) ? String(total) : total.toFixed(2);
    violations.push({
      field: poolsPath,
      rule: `${what[limit]} total ${shown} across pools, above quotas.${toSnakeCase(limit)} (${quotas[limit]})`,
    });
  }
}

function parseTenant(value: unknown, path: string, violations: FieldViolation[]): TenantDraft | null {
  const fields = readFields(value, path, TENANT_FIELDS, violations);
  if (!fields) return null;
  const tenantId = fields.get("tenant_id");
  const idOk =
    tenantId === undefined
      ? record(violations, [{ field: `${path}.tenant_id`, rule: REQUIRED }])
      : record(violations, idViolations(tenantId, `${path}.tenant_id`));
  const network = parseNetwork(fields.get("network"), `${path}.network`, violations);
  const quotas = parseQuotas(fields.get("quotas"), `${path}.quotas`, violations);
  const labels = fields.get("labels") ?? {};
  violations.push(...labelsViolations(labels, `${path}.labels`));
  const secretsHash = fields.get("secrets_hash") ?? "";
  if (
    typeof secretsHash !== "string" ||
    secretsHash.length > SECRETS_HASH_MAX_LENGTH ||
    !SECRETS_HASH_PATTERN.test(secretsHash)
  ) {
    violations.push({ field: `${path}.secrets_hash`, rule: SECRETS_HASH_RULE });
  }

  const poolsValue = fields.get("pools") ?? [];
  const pools: PoolDraft[] = [];
  if (!Array.isArray(poolsValue)) {
    violations.push({ field: `${path}.pools`, rule: "must be a list" });
  } else {
    const ownerId = idOk ? (tenantId as string) : undefined;
    poolsValue.forEach((p: unknown, i) => {
      const draft = parsePool(p, `${path}.pools[${i}]`, ownerId, violations);
      if (draft) pools.push(draft);
    });
    const firstIndex = new Map<string, string>();
    for (const draft of pools) {
      if (draft.poolId === undefined) continue;
      const earlier = firstIndex.get(draft.poolId);
      if (earlier === undefined) firstIndex.set(draft.poolId, draft.path);
      else violations.push({ field: `${draft.path}.pool_id`, rule: `duplicate: ${earlier} has pool_id ${draft.poolId}` });
    }
    if (quotas) poolsWithinQuota(pools, quotas, path, violations);
  }

  const draft: TenantDraft = {
    tenant: {
      tenantId: tenantId as string,
      network: network.network,
      quotas: quotas ?? { ...DEFAULT_QUOTA },
      labels: { ...(labels as Record<string, string>) },
      secretsHash: secretsHash as string,
      pools: pools.map((p) => p.pool),
    },
    path,
    network,
  };
  if (idOk) draft.tenantId = tenantId as string;
  return draft;
}

/** Tenant IDs, net_ids and subnets are fleet-wide: no two tenants of one document may share or overlap them. */
function tenantsDisjoint(tenants: readonly TenantDraft[], violations: FieldViolation[]): void {
  const byId = new Map<string, string>();
  const byNetId = new Map<number, string>();
  const subnets: Array<{ subnet: Cidr; path: string; text: string }> = [];
  for (const t of tenants) {
    if (t.tenantId !== undefined) {
      const earlier = byId.get(t.tenantId);
      if (earlier === undefined) byId.set(t.tenantId, t.path);
      else violations.push({ field: `${t.path}.tenant_id`, rule: `duplicate: ${earlier} has tenant_id ${t.tenantId}` });
    }
    const { netId, subnet } = t.network;
    if (netId !== undefined) {
      const earlier = byNetId.get(netId);
      if (earlier === undefined) byNetId.set(netId, t.path);
      else violations.push({ field: `${t.path}.network.net_id`, rule: `duplicate: ${earlier}.network has net_id ${netId}` });
    }
    if (subnet !== undefined) {
      const clash = subnets.find((s) => cidrsOverlap(s.subnet, subnet));
      if (clash) {
        violations.push({
          field: `${t.path}.network.ipv4_subnet`,
          rule: `overlaps ${clash.path}.network.ipv4_subnet (${clash.text})`,
        });
      }
      subnets.push({ subnet, path: t.path, text: formatCidr(subnet) });
    }
  }
}

/**
 * Parses and fully validates a desired-state document (already decoded from JSON or YAML). Throws `invalid` with
 * every violation found; returns the document with every default filled in.
 */
export function parseDesiredState(input: unknown): DesiredState {
  const violations: FieldViolation[] = [];
  const fields = readFields(input, "", TOP_FIELDS, violations);
  if (!fields) throw invalid(violations);

  const version = integerInput(fields.get("schema_version"));
  if (version === undefined) {
    violations.push({ field: "schema_version", rule: `${REQUIRED}: must be ${DESIRED_STATE_SCHEMA_VERSION}` });
  } else if (version !== DESIRED_STATE_SCHEMA_VERSION) {
    violations.push({
      field: "schema_version",
      rule: `must be ${DESIRED_STATE_SCHEMA_VERSION}, the version this build reads (got ${JSON.stringify(version)})`,
    });
  }

  const nodeId = fields.get("node_id");
  if (nodeId === undefined) violations.push({ field: "node_id", rule: REQUIRED });
  else if (typeof nodeId !== "string" || !NODE_ID_PATTERN.test(nodeId)) {
    violations.push({ field: "node_id", rule: NODE_ID_RULE });
  }

  const tenantsValue = fields.get("tenants") ?? [];
  const tenants: TenantDraft[] = [];
  if (!Array.isArray(tenantsValue)) {
    violations.push({ field: "tenants", rule: "must be a list" });
  } else {
    tenantsValue.forEach((t: unknown, i) => {
      const draft = parseTenant(t, `tenants[${i}]`, violations);
      if (draft) tenants.push(draft);
    });
    tenantsDisjoint(tenants, violations);
  }

  const pruneUnknownTenants = booleanInput(fields.get("prune_unknown_tenants"), false, "prune_unknown_tenants", violations);
  const pruneUnknownPools = booleanInput(fields.get("prune_unknown_pools"), false, "prune_unknown_pools", violations);

  if (violations.length > 0) throw invalid(violations);
  return {
    schemaVersion: DESIRED_STATE_SCHEMA_VERSION,
    nodeId: nodeId as string,
    tenants: tenants.map((t) => t.tenant),
    pruneUnknownTenants,
    pruneUnknownPools,
  };
}
