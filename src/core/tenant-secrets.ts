// A tenant's secret set: files the host puts on every instance's secrets disk under `user-secrets/` (SPEC §6.5). The
// limits keep the disk one fixed size, so that a set rotated while an instance sleeps still fits the disk the guest
// saw at boot.

import type { FieldViolation } from "./errors.js";

export type SecretFiles = Record<string, Uint8Array>;

export const SECRET_NAME_PATTERN = /^[A-Za-z0-9._-]{1,255}$/;
export const SECRET_NAME_RULE = "must be 1 to 255 characters of [A-Za-z0-9._-], not . or ..";
export const MAX_SECRET_FILES = 256;
export const MAX_SECRET_BYTES = 1024 * 1024;

export function secretFilesViolations(files: SecretFiles, field: string): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const names = Object.keys(files);
  if (names.length > MAX_SECRET_FILES) violations.push({ field, rule: `must hold at most ${MAX_SECRET_FILES} files (has ${names.length})` });
  let total = 0;
  for (const name of names) {
    if (!SECRET_NAME_PATTERN.test(name) || name === "." || name === "..") violations.push({ field: `${field}[${JSON.stringify(name)}]`, rule: SECRET_NAME_RULE });
    total += files[name]!.byteLength;
  }
  if (total > MAX_SECRET_BYTES) violations.push({ field, rule: `must hold at most ${MAX_SECRET_BYTES} bytes in all (has ${total})` });
  return violations;
}
