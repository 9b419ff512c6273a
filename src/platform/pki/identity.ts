// Who a certificate speaks for (SPEC §8.2). An identity is carried as exactly one SPIFFE-style URI SAN,
// `spiffe://<trust-domain>/<path>`, with one of four paths: `admin`, `coordinator`, `node/<id>`, `tenant/<id>`.
// Parsing is exact: anything else (another trust domain, extra segments, upper case, a query) is not an identity.

import type { PeerCertificate } from "node:tls";
import type { X509Certificate as NodeX509Certificate } from "node:crypto";
import { pkiInvalid, type PkiViolation } from "./pki-error.js";
import { x509 } from "./x509.js";

export type Identity =
  | { kind: "admin" }
  | { kind: "coordinator" }
  | { kind: "node"; nodeId: string }
  | { kind: "tenant"; tenantId: string };

/**
 * The tenant/pool ID rule of SPEC §4, the same as core's ID_RULE (src/platform may not import src/core). Node and
 * tenant IDs inside an identity follow it, which keeps them safe as a URI path segment and as a file name.
 */
export const ID_RULE = "must be 1-63 characters of [a-z0-9-] with no leading or trailing hyphen";
const ID_PATTERN = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

export const IDENTITY_ARG_RULE = `must be admin, coordinator, node/<id> or tenant/<id>, where <id> ${ID_RULE}`;

export const TRUST_DOMAIN_RULE =
  "must be a lower-case DNS-style name: dot-separated labels of 1-63 characters of [a-z0-9-] with no leading or " +
  "trailing hyphen, 253 characters at most";
const TRUST_DOMAIN_MAX_LENGTH = 253;

export const DEFAULT_TRUST_DOMAIN = "mvm.local";

const SPIFFE_SCHEME = "spiffe://";

export function isValidIdentityId(value: unknown): value is string {
  return typeof value === "string" && ID_PATTERN.test(value);
}

export function isValidTrustDomain(value: unknown): value is string {
  return (
    typeof value === "string" &&
    value.length <= TRUST_DOMAIN_MAX_LENGTH &&
    value.split(".").every((label) => ID_PATTERN.test(label))
  );
}

export function trustDomainViolations(value: unknown, field: string): PkiViolation[] {
  return isValidTrustDomain(value) ? [] : [{ field, rule: TRUST_DOMAIN_RULE }];
}

export function assertTrustDomain(value: unknown, field = "--trust-domain"): asserts value is string {
  const violations = trustDomainViolations(value, field);
  if (violations.length > 0) throw pkiInvalid(violations);
}

/** The identity named by a path such as `node/n-0a1b2c3d4e5f`, or null when the path is not one of the four forms. */
function identityFromPath(path: string): Identity | null {
  if (path === "admin") return { kind: "admin" };
  if (path === "coordinator") return { kind: "coordinator" };
  const slash = path.indexOf("/");
  if (slash < 0) return null;
  const head = path.slice(0, slash);
  const id = path.slice(slash + 1);
  if (!isValidIdentityId(id)) return null;
  if (head === "node") return { kind: "node", nodeId: id };
  if (head === "tenant") return { kind: "tenant", tenantId: id };
  return null;
}

/** `admin`, `coordinator`, `node/<id>` or `tenant/<id>`: the spelling of the `--identity` flag. */
export function formatIdentityArg(identity: Identity): string {
  switch (identity.kind) {
    case "admin":
    case "coordinator":
      return identity.kind;
    case "node":
      return `node/${identity.nodeId}`;
    case "tenant":
      return `tenant/${identity.tenantId}`;
  }
}

/** Parses the `--identity` flag; anything but the four forms is refused, naming `field` and the rule. */
export function parseIdentityArg(value: unknown, field = "--identity"): Identity {
  const identity = typeof value === "string" ? identityFromPath(value) : null;
  if (identity === null) {
    const got = typeof value === "string" ? JSON.stringify(value) : value === undefined ? "nothing" : typeof value;
    throw pkiInvalid([{ field, rule: `${IDENTITY_ARG_RULE} (got ${got})` }]);
  }
  return identity;
}

/** `spiffe://<trustDomain>/<path>`. Throws on an invalid trust domain or ID, so a bad name never reaches a certificate. */
export function spiffeId(trustDomain: string, identity: Identity): string {
  assertTrustDomain(trustDomain, "trust_domain");
  const path = formatIdentityArg(identity);
  if (identityFromPath(path) === null) throw pkiInvalid([{ field: "identity", rule: IDENTITY_ARG_RULE }]);
  return `${SPIFFE_SCHEME}${trustDomain}/${path}`;
}

/** The SPIFFE ID of the trust domain itself (`spiffe://<trustDomain>`), carried by the CA certificate. */
export function trustDomainSpiffeId(trustDomain: string): string {
  assertTrustDomain(trustDomain, "trust_domain");
  return `${SPIFFE_SCHEME}${trustDomain}`;
}

/** The identity in `uri` when it is one of ours in `trustDomain`; null for anything else, never a throw. */
export function identityFromSpiffe(uri: string, trustDomain: string): Identity | null {
  const prefix = `${SPIFFE_SCHEME}${trustDomain}/`;
  if (!isValidTrustDomain(trustDomain) || !uri.startsWith(prefix)) return null;
  return identityFromPath(uri.slice(prefix.length));
}

/** Every URI in a certificate's subject alternative names; an unreadable certificate has none. */
export function certificateUris(der: Uint8Array): string[] {
  let cert: InstanceType<typeof x509.X509Certificate>;
  try {
    cert = new x509.X509Certificate(der);
  } catch {
    return [];
  }
  const uris: string[] = [];
  for (const san of cert.getExtensions(x509.SubjectAlternativeNameExtension)) {
    for (const name of san.names.items) if (name.type === "url") uris.push(name.value);
  }
  return uris;
}

function isSpiffeUri(uri: string): boolean {
  return uri.slice(0, SPIFFE_SCHEME.length).toLowerCase() === SPIFFE_SCHEME;
}

/**
 * The identity a peer certificate carries in `trustDomain`, or null when it carries none, or more than one SPIFFE
 * ID (an X.509-SVID holds exactly one), or one of another trust domain. Reads the DER, not Node's SAN summary
 * string, so no quoting or escaping of that string can smuggle a second name in. Chain validation is the TLS
 * layer's job: call this only on a certificate the handshake verified.
 */
export function identityFromPeerCertificate(
  cert: PeerCertificate | NodeX509Certificate | null | undefined,
  trustDomain: string,
): Identity | null {
  const der: unknown = cert?.raw;
  if (!(der instanceof Uint8Array) || der.length === 0) return null;
  const spiffeUris = certificateUris(der).filter(isSpiffeUri);
  if (spiffeUris.length !== 1) return null;
  return identityFromSpiffe(spiffeUris[0] as string, trustDomain);
}

export function sameIdentity(a: Identity, b: Identity): boolean {
  return formatIdentityArg(a) === formatIdentityArg(b);
}
