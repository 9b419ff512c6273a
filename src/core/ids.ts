// Tenant, pool and instance identifiers (SPEC §4). Every ID from any input is checked here before it can reach a
// file path, a process argument or a record, so the rules are deliberately narrow: an ID that passes is safe as a
// single path segment and as a shell-free command argument.

import { MvmError, exhausted, invalid } from "./errors.js";
import type { FieldViolation } from "./errors.js";

export const ID_MAX_LENGTH = 63;

export const ID_RULE = "must be 1-63 characters of [a-z0-9-] with no leading or trailing hyphen";

const ID_PATTERN = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

export function isValidId(value: unknown): value is string {
  return typeof value === "string" && ID_PATTERN.test(value);
}

/** The violations of the tenant/pool ID rule by `value`, reported against `field`; empty when valid. */
export function idViolations(value: unknown, field: string): FieldViolation[] {
  return isValidId(value) ? [] : [{ field, rule: ID_RULE }];
}

export function assertId(value: unknown, field: string): asserts value is string {
  const violations = idViolations(value, field);
  if (violations.length > 0) throw invalid(violations);
}

export const INSTANCE_ID_RULE = "must be 'i-' followed by 8 lowercase hex digits";

const INSTANCE_ID_PATTERN = /^i-[0-9a-f]{8}$/;

/** Random bytes behind the 8 hex digits of an instance ID. */
const INSTANCE_ID_RANDOM_BYTES = 4;

/** Attempts before giving up on a fresh instance ID; 64 collisions in a 2^32 space means something is broken. */
export const INSTANCE_ID_MAX_ATTEMPTS = 64;

export function isValidInstanceId(value: unknown): value is string {
  return typeof value === "string" && INSTANCE_ID_PATTERN.test(value);
}

export function instanceIdViolations(value: unknown, field: string): FieldViolation[] {
  return isValidInstanceId(value) ? [] : [{ field, rule: INSTANCE_ID_RULE }];
}

export function assertInstanceId(value: unknown, field: string): asserts value is string {
  const violations = instanceIdViolations(value, field);
  if (violations.length > 0) throw invalid(violations);
}

/**
 * A fresh instance ID that `isTaken` does not know. `randomHex(n)` must return `n` random bytes as lowercase hex
 * (the `Ids` port). Collisions are retried a bounded number of times, then reported as `exhausted`.
 */
export function newInstanceId(randomHex: (bytes: number) => string, isTaken: (id: string) => boolean): string {
  for (let attempt = 0; attempt < INSTANCE_ID_MAX_ATTEMPTS; attempt++) {
    const candidate = `i-${randomHex(INSTANCE_ID_RANDOM_BYTES)}`;
    if (!INSTANCE_ID_PATTERN.test(candidate)) {
      throw new MvmError(
        "internal",
        `random source returned ${JSON.stringify(candidate.slice(2))}, not 8 lowercase hex digits`,
      );
    }
    if (!isTaken(candidate)) return candidate;
  }
  throw exhausted(`no free instance id after ${INSTANCE_ID_MAX_ATTEMPTS} attempts`);
}

export interface PoolPath {
  tenantId: string;
  poolId: string;
}

export interface InstancePath extends PoolPath {
  instanceId: string;
}

const POOL_PATH_SHAPE = "<tenant>/<pool>";
const INSTANCE_PATH_SHAPE = "<tenant>/<pool>/<instance>";

/** Splits `path` into exactly `shape`'s segments, or throws `invalid` saying which part of the shape is wrong. */
function splitPath(path: unknown, field: string, shape: string, segmentCount: number): string[] {
  if (typeof path !== "string") {
    throw invalid([{ field, rule: `must be ${shape} (got ${path === undefined ? "nothing" : typeof path})` }]);
  }
  const segments = path.split("/");
  if (segments.length !== segmentCount) {
    const got = path === "" ? "an empty string" : `${segments.length} segment${segments.length === 1 ? "" : "s"}`;
    throw invalid([{ field, rule: `must be ${shape} (got ${got})` }]);
  }
  const empty = segments.findIndex((s) => s === "");
  if (empty >= 0) {
    throw invalid([{ field, rule: `must be ${shape} (segment ${empty + 1} is empty)` }]);
  }
  return segments;
}

/** Parses `tenant/pool`; every segment is checked with the ID rule (`<field>.tenant_id`, `<field>.pool_id`). */
export function parsePoolPath(path: string, field = "path"): PoolPath {
  const [tenantId, poolId] = splitPath(path, field, POOL_PATH_SHAPE, 2) as [string, string];
  const violations = [...idViolations(tenantId, `${field}.tenant_id`), ...idViolations(poolId, `${field}.pool_id`)];
  if (violations.length > 0) throw invalid(violations);
  return { tenantId, poolId };
}

/** Parses `tenant/pool/instance`; the last segment must be an instance ID (`i-` + 8 hex digits). */
export function parseInstancePath(path: string, field = "path"): InstancePath {
  const [tenantId, poolId, instanceId] = splitPath(path, field, INSTANCE_PATH_SHAPE, 3) as [string, string, string];
  const violations = [
    ...idViolations(tenantId, `${field}.tenant_id`),
    ...idViolations(poolId, `${field}.pool_id`),
    ...instanceIdViolations(instanceId, `${field}.instance_id`),
  ];
  if (violations.length > 0) throw invalid(violations);
  return { tenantId, poolId, instanceId };
}

export function formatPoolPath(p: PoolPath): string {
  return `${p.tenantId}/${p.poolId}`;
}

export function formatInstancePath(p: InstancePath): string {
  return `${p.tenantId}/${p.poolId}/${p.instanceId}`;
}
