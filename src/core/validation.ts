// Field rules shared by every input edge (CLI flags, API requests, desired-state files). Each function returns the
// violations it finds and never throws, so a caller can gather every fault of an input before refusing it. Field
// paths are snake_case, as users write them in files and flags. A field that is `undefined` is "not given" and is
// not checked here: callers that require a field say so themselves, and partial updates stay expressible.

import type { FieldViolation } from "./errors.js";
import type { DesiredCounts, SleepPolicy, TenantQuota } from "./model.js";

export const RESOURCE_LIMITS = {
  vcpus: { min: 1, max: 32 },
  memMib: { min: 128, max: 262144 },
  /** 16 TiB: the largest data disk mvm creates. */
  dataDiskMib: { min: 0, max: 16777216 },
} as const;

/** Largest value of a proto uint32 field: quotas and counts travel as uint32 on the wire. */
export const UINT32_MAX = 4294967295;

/** Sleep-policy bounds; a threshold of one day in idle seconds is no policy at all beyond this. */
export const SLEEP_POLICY_LIMITS = {
  /** At least 1 s: with 0 a running instance would be warmed at its first sample, busy or not. */
  idleS: { min: 1, max: UINT32_MAX },
  cpuIdlePct: { min: 0, max: 100 },
  netIdleBytes: { min: 0, max: Number.MAX_SAFE_INTEGER },
} as const;

export const LABEL_LIMITS = { count: 64, nameLength: 63, prefixLength: 253, valueLength: 63 } as const;

export const IMAGE_LIMITS = {
  suiteLength: 32,
  packages: 1000,
  packageNameLength: 128,
  extraFiles: 256,
  extraFilePathLength: 4096,
  /** Per file, in UTF-16 code units; extra files are small configuration, not payloads. */
  extraFileContentLength: 1024 * 1024,
  flakeRefLength: 1024,
  profileLength: 63,
} as const;

/** `maxVcpus` → `max_vcpus`; `ipv4Subnet` → `ipv4_subnet`. Snake-case input comes back unchanged. */
export function toSnakeCase(camel: string): string {
  return camel.replace(/[A-Z]/g, (c, offset: number) => (offset === 0 ? c.toLowerCase() : `_${c.toLowerCase()}`));
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

/** The rule text for an integer range; the maximum is left out when it is only the wire type's limit. */
function integerRule(min: number, max: number): string {
  if (max >= UINT32_MAX) return min === 0 ? "must be a non-negative integer" : `must be an integer of at least ${min}`;
  return `must be an integer from ${min} to ${max}`;
}

export function isIntegerIn(value: unknown, min: number, max: number): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= min && value <= max;
}

/** Violations of "an integer in [min, max]" by `value`; `undefined` means not given and passes. */
export function integerViolations(value: unknown, min: number, max: number, field: string): FieldViolation[] {
  if (value === undefined || isIntegerIn(value, min, max)) return [];
  return [{ field, rule: integerRule(min, max) }];
}

export function resourcesViolations(
  r: { vcpus?: unknown; memMib?: unknown; dataDiskMib?: unknown },
  path: string,
): FieldViolation[] {
  if (!isPlainObject(r)) return [{ field: path, rule: "must be an object" }];
  const { vcpus, memMib, dataDiskMib } = RESOURCE_LIMITS;
  return [
    ...integerViolations(r.vcpus, vcpus.min, vcpus.max, `${path}.vcpus`),
    ...integerViolations(r.memMib, memMib.min, memMib.max, `${path}.mem_mib`),
    ...integerViolations(r.dataDiskMib, dataDiskMib.min, dataDiskMib.max, `${path}.data_disk_mib`),
  ];
}

const QUOTA_FIELDS: ReadonlyArray<keyof TenantQuota> = [
  "maxVcpus",
  "maxMemMib",
  "maxRunning",
  "maxWarm",
  "maxPools",
  "maxInstancesPerPool",
  "maxDiskGib",
];

/** Every limit is a uint32; 0 is allowed and means "none of this" (a tenant frozen at zero pools, say). */
export function quotaViolations(q: Partial<Record<keyof TenantQuota, unknown>>, path: string): FieldViolation[] {
  if (!isPlainObject(q)) return [{ field: path, rule: "must be an object" }];
  return QUOTA_FIELDS.flatMap((name) => integerViolations(q[name], 0, UINT32_MAX, `${path}.${toSnakeCase(name)}`));
}

const COUNT_FIELDS: ReadonlyArray<keyof DesiredCounts> = ["running", "warm", "sleeping"];

export function desiredCountsViolations(
  c: Partial<Record<keyof DesiredCounts, unknown>>,
  path: string,
): FieldViolation[] {
  if (!isPlainObject(c)) return [{ field: path, rule: "must be an object" }];
  return COUNT_FIELDS.flatMap((name) => integerViolations(c[name], 0, UINT32_MAX, `${path}.${name}`));
}

export const MAX_USER_DATA_BYTES = 65_536;

/** A pool's user data: text, at most MAX_USER_DATA_BYTES of UTF-8. */
export function userDataViolations(value: unknown, field: string): FieldViolation[] {
  if (typeof value !== "string") return [{ field, rule: "must be text" }];
  const bytes = new TextEncoder().encode(value).byteLength;
  return bytes > MAX_USER_DATA_BYTES ? [{ field, rule: `must be at most ${MAX_USER_DATA_BYTES} bytes of UTF-8 (is ${bytes})` }] : [];
}

export function sleepPolicyViolations(p: Partial<Record<keyof SleepPolicy, unknown>>, path: string): FieldViolation[] {
  if (!isPlainObject(p)) return [{ field: path, rule: "must be an object" }];
  const { idleS, cpuIdlePct, netIdleBytes } = SLEEP_POLICY_LIMITS;
  const violations = [
    ...integerViolations(p.warmAfterIdleS, idleS.min, idleS.max, `${path}.warm_after_idle_s`),
    ...integerViolations(p.sleepAfterIdleS, idleS.min, idleS.max, `${path}.sleep_after_idle_s`),
    ...integerViolations(p.netIdleBytes, netIdleBytes.min, netIdleBytes.max, `${path}.net_idle_bytes`),
  ];
  const pct = p.cpuIdlePct;
  if (pct !== undefined && !(typeof pct === "number" && Number.isFinite(pct) && pct >= cpuIdlePct.min && pct <= cpuIdlePct.max)) {
    violations.push({ field: `${path}.cpu_idle_pct`, rule: `must be a number from ${cpuIdlePct.min} to ${cpuIdlePct.max}` });
  }
  // Idle time keeps counting while an instance is warm, so sleeping comes at or after warming on one clock.
  const warm = p.warmAfterIdleS;
  const sleep = p.sleepAfterIdleS;
  if (isIntegerIn(warm, idleS.min, idleS.max) && isIntegerIn(sleep, idleS.min, idleS.max) && sleep < warm) {
    violations.push({
      field: `${path}.sleep_after_idle_s`,
      rule: `must be at least warm_after_idle_s (${warm}), got ${sleep}`,
    });
  }
  return violations;
}

/** Kubernetes-style label name: alphanumeric at both ends, `-`, `_` and `.` inside. */
const LABEL_NAME_PATTERN = /^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$/;
/** Optional key prefix: a lowercase DNS subdomain such as `mvm.example.com`. */
const LABEL_PREFIX_PATTERN = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$/;

export const LABEL_KEY_RULE =
  `key must be [prefix/]name: name 1-${LABEL_LIMITS.nameLength} characters of [A-Za-z0-9._-], alphanumeric at both ` +
  `ends; optional prefix a lowercase DNS subdomain of at most ${LABEL_LIMITS.prefixLength} characters`;
export const LABEL_VALUE_RULE =
  `value must be a string of at most ${LABEL_LIMITS.valueLength} characters of [A-Za-z0-9._-], ` +
  `alphanumeric at both ends (or empty)`;

export function isValidLabelKey(key: string): boolean {
  const slash = key.indexOf("/");
  const name = slash < 0 ? key : key.slice(slash + 1);
  if (name.length > LABEL_LIMITS.nameLength || !LABEL_NAME_PATTERN.test(name)) return false;
  if (slash < 0) return true;
  const prefix = key.slice(0, slash);
  return prefix.length <= LABEL_LIMITS.prefixLength && LABEL_PREFIX_PATTERN.test(prefix);
}

export function isValidLabelValue(value: unknown): value is string {
  return (
    typeof value === "string" &&
    (value === "" || (value.length <= LABEL_LIMITS.valueLength && LABEL_NAME_PATTERN.test(value)))
  );
}

/** A map entry's path: `labels["app.kubernetes.io/name"]`; quoting keeps dots and slashes in keys unambiguous. */
export function mapEntryPath(path: string, key: string): string {
  return `${path}[${JSON.stringify(key)}]`;
}

export function labelsViolations(labels: unknown, path: string): FieldViolation[] {
  if (labels === undefined) return [];
  if (!isPlainObject(labels)) return [{ field: path, rule: "must be a map of string keys to string values" }];
  const entries = Object.entries(labels);
  const violations: FieldViolation[] = [];
  if (entries.length > LABEL_LIMITS.count) {
    violations.push({ field: path, rule: `must have at most ${LABEL_LIMITS.count} labels, got ${entries.length}` });
  }
  for (const [key, value] of entries) {
    const field = mapEntryPath(path, key);
    if (!isValidLabelKey(key)) violations.push({ field, rule: LABEL_KEY_RULE });
    if (!isValidLabelValue(value)) violations.push({ field, rule: LABEL_VALUE_RULE });
  }
  return violations;
}

export const IMAGE_KINDS = ["debian", "nix"] as const;

const DEBIAN_SUITE_PATTERN = /^[a-z]+(?:-[a-z]+)*$/;
/** Debian policy §5.6.7: lowercase alphanumerics, `+`, `-` and `.`, at least 2 characters, alphanumeric first. */
const DEBIAN_PACKAGE_PATTERN = /^[a-z0-9][a-z0-9+.-]+$/;
/**
 * Flake references are handed to `nix` as one argument (never through a shell), but they are still held to
 * URL-ish characters so that nothing a shell, a log line or a path would misread can get in: no whitespace, no
 * quotes, `$`, backticks, `;`, `|`, `<`, `>`, parentheses, braces, `*`, `!` or backslash. `?`, `#`, `&` and `=` stay:
 * real references need them (`git+https://host/r?ref=main&rev=abc#pkg`). No leading `-`, so it is never an option.
 */
const FLAKE_REF_PATTERN = /^[A-Za-z0-9._~:/?#@&=%+,][A-Za-z0-9._~:/?#@&=%+,-]*$/;
const NIX_PROFILE_PATTERN = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;

export const DEBIAN_SUITE_RULE = `must be a Debian suite name of [a-z] words joined by '-' (e.g. bookworm), at most ${IMAGE_LIMITS.suiteLength} characters`;
export const DEBIAN_PACKAGE_RULE =
  "must be a Debian package name: at least 2 characters of [a-z0-9+.-], starting with a letter or digit";
export const EXTRA_FILE_PATH_RULE =
  "must be an absolute guest path with no empty, '.' or '..' segments and no control characters";
export const FLAKE_REF_RULE =
  "must be a non-empty flake reference with no whitespace, quotes or shell metacharacters " +
  "($ ` ; | < > ( ) { } * ! \\) and no leading '-'";
export const NIX_PROFILE_RULE = `must be 1-${IMAGE_LIMITS.profileLength} characters of [a-z0-9-] with no leading or trailing hyphen`;

const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f]/;

function isValidExtraFilePath(path: string): boolean {
  if (!path.startsWith("/") || path.length > IMAGE_LIMITS.extraFilePathLength || CONTROL_CHARACTERS.test(path)) {
    return false;
  }
  const segments = path.slice(1).split("/");
  return segments.every((s) => s !== "" && s !== "." && s !== "..");
}

/** A debian image source's own fields (`suite`, `packages`, `extraFiles`), reported under `path`. */
export function debianImageViolations(
  d: { suite?: unknown; packages?: unknown; extraFiles?: unknown },
  path: string,
): FieldViolation[] {
  if (!isPlainObject(d)) return [{ field: path, rule: "must be an object" }];
  const violations: FieldViolation[] = [];
  if (typeof d.suite !== "string" || d.suite.length > IMAGE_LIMITS.suiteLength || !DEBIAN_SUITE_PATTERN.test(d.suite)) {
    violations.push({ field: `${path}.suite`, rule: DEBIAN_SUITE_RULE });
  }
  if (d.packages !== undefined) {
    if (!Array.isArray(d.packages)) {
      violations.push({ field: `${path}.packages`, rule: "must be a list of Debian package names" });
    } else {
      if (d.packages.length > IMAGE_LIMITS.packages) {
        violations.push({ field: `${path}.packages`, rule: `must list at most ${IMAGE_LIMITS.packages} packages` });
      }
      d.packages.forEach((name: unknown, i) => {
        if (typeof name !== "string" || name.length > IMAGE_LIMITS.packageNameLength || !DEBIAN_PACKAGE_PATTERN.test(name)) {
          violations.push({ field: `${path}.packages[${i}]`, rule: DEBIAN_PACKAGE_RULE });
        }
      });
    }
  }
  if (d.extraFiles !== undefined) {
    const field = `${path}.extra_files`;
    if (!isPlainObject(d.extraFiles)) {
      violations.push({ field, rule: "must be a map of absolute guest paths to file contents" });
    } else {
      const entries = Object.entries(d.extraFiles);
      if (entries.length > IMAGE_LIMITS.extraFiles) {
        violations.push({ field, rule: `must have at most ${IMAGE_LIMITS.extraFiles} files, got ${entries.length}` });
      }
      for (const [file, content] of entries) {
        const entry = mapEntryPath(field, file);
        if (!isValidExtraFilePath(file)) violations.push({ field: entry, rule: EXTRA_FILE_PATH_RULE });
        if (typeof content !== "string") {
          violations.push({ field: entry, rule: "content must be a string" });
        } else if (content.length > IMAGE_LIMITS.extraFileContentLength) {
          violations.push({ field: entry, rule: `content must be at most ${IMAGE_LIMITS.extraFileContentLength} characters` });
        }
      }
    }
  }
  return violations;
}

/** A nix image source's own fields (`flakeRef`, `profile`), reported under `path`. */
export function nixImageViolations(n: { flakeRef?: unknown; profile?: unknown }, path: string): FieldViolation[] {
  if (!isPlainObject(n)) return [{ field: path, rule: "must be an object" }];
  const violations: FieldViolation[] = [];
  const ref = n.flakeRef;
  if (typeof ref !== "string" || ref.length > IMAGE_LIMITS.flakeRefLength || !FLAKE_REF_PATTERN.test(ref)) {
    violations.push({ field: `${path}.flake_ref`, rule: FLAKE_REF_RULE });
  }
  const profile = n.profile;
  if (typeof profile !== "string" || profile.length > IMAGE_LIMITS.profileLength || !NIX_PROFILE_PATTERN.test(profile)) {
    violations.push({ field: `${path}.profile`, rule: NIX_PROFILE_RULE });
  }
  return violations;
}

/** An `ImageSource` of the model (discriminated by `kind`). */
export function imageSourceViolations(image: unknown, path: string): FieldViolation[] {
  if (!isPlainObject(image)) return [{ field: path, rule: "must be an object" }];
  switch (image.kind) {
    case "debian":
      return debianImageViolations(image, path);
    case "nix":
      return nixImageViolations(image, path);
    default:
      return enumViolations(image.kind, IMAGE_KINDS, `${path}.kind`);
  }
}

export function enumViolations<T extends string>(value: unknown, allowed: readonly T[], field: string): FieldViolation[] {
  if (typeof value === "string" && (allowed as readonly string[]).includes(value)) return [];
  return [{ field, rule: `must be one of ${allowed.join(", ")}` }];
}

export function booleanViolations(value: unknown, field: string): FieldViolation[] {
  return value === undefined || typeof value === "boolean" ? [] : [{ field, rule: "must be true or false" }];
}
