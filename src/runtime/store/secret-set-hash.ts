// The hash of a tenant's secret set (Store.putTenantSecrets, Tenant.secrets_hash): a coordinator holding the same set
// computes the same value without the node ever sending secrets back.

import { createHash } from "node:crypto";
import type { SecretFiles } from "../../core/tenant-secrets.js";

export function secretSetHash(files: SecretFiles): string {
  const names = Object.keys(files).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  if (names.length === 0) return "";
  const hash = createHash("sha256");
  for (const name of names) {
    const content = files[name]!;
    hash.update(`${name}\0${content.byteLength}\0`);
    hash.update(content);
  }
  return hash.digest("hex");
}
