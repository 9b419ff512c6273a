// What `mvm agent certs status` shows about one certificate: who it names, for which names it is valid, when it
// expires, and whether it still chains to the node's CA and matches its key.

import { X509Certificate as NodeX509Certificate } from "node:crypto";
import { isIssuedBy, keyMatchesCertificate } from "./cert-authority.js";
import { formatIdentityArg, identityFromPeerCertificate } from "./identity.js";
import { x509 } from "./x509.js";

/** Renewal is due once less than this share of a certificate's lifetime is left. */
export const RENEW_WHEN_REMAINING_FRACTION = 1 / 3;

const DAY_MS = 86_400_000;

export interface CertificateStatus {
  /** `ca`, `node`, or the name an issued certificate was written under. */
  role: string;
  path: string;
  /** RFC 4514-style, e.g. `CN=node/n-0a1b2c3d4e5f, O=mvm.local`. */
  subject: string;
  issuer: string;
  serialNumber: string;
  /** Every URI SAN; for a leaf, its SPIFFE ID. */
  uris: string[];
  /** The identity the certificate grants in the trust domain (`admin`, `node/<id>`, ...), or null when none. */
  identity: string | null;
  dnsNames: string[];
  ipAddresses: string[];
  isCa: boolean;
  /** ISO 8601. */
  notBefore: string;
  notAfter: string;
  /** Whole days until notAfter, rounded down; negative once expired. */
  daysLeft: number;
  expired: boolean;
  /** Less than RENEW_WHEN_REMAINING_FRACTION of the lifetime is left (or it already expired). */
  renewalDue: boolean;
  /** Signed by the CA and naming it as issuer (for the CA itself: self-signed). */
  chainsToCa: boolean;
  /** The private key stored beside it belongs to it; null when no key was checked. */
  keyMatches: boolean | null;
}

export interface DescribeCertificateInput {
  role: string;
  path: string;
  certPem: string;
  caCertPem: string;
  trustDomain: string;
  keyPem?: string;
  now?: Date;
}

export function renewalDue(notBefore: Date, notAfter: Date, now: Date): boolean {
  const lifetime = notAfter.getTime() - notBefore.getTime();
  return notAfter.getTime() - now.getTime() < lifetime * RENEW_WHEN_REMAINING_FRACTION;
}

/** The subject alternative names of a certificate, by type. IP addresses as node:crypto prints them. */
export function subjectAltNames(cert: NodeX509Certificate): { uris: string[]; dnsNames: string[]; ipAddresses: string[] } {
  const out = { uris: [] as string[], dnsNames: [] as string[], ipAddresses: [] as string[] };
  for (const san of new x509.X509Certificate(cert.raw).getExtensions(x509.SubjectAlternativeNameExtension)) {
    for (const name of san.names.items) {
      if (name.type === "url") out.uris.push(name.value);
      else if (name.type === "dns") out.dnsNames.push(name.value);
      else if (name.type === "ip") out.ipAddresses.push(name.value);
    }
  }
  return out;
}

export function describeCertificate(input: DescribeCertificateInput): CertificateStatus {
  const now = input.now ?? new Date();
  const cert = new NodeX509Certificate(input.certPem);
  const ca = new NodeX509Certificate(input.caCertPem);
  const parsed = new x509.X509Certificate(cert.raw);
  const notBefore = new Date(cert.validFrom);
  const notAfter = new Date(cert.validTo);
  const identity = identityFromPeerCertificate(cert, input.trustDomain);
  return {
    role: input.role,
    path: input.path,
    subject: parsed.subject,
    issuer: parsed.issuer,
    serialNumber: cert.serialNumber,
    ...subjectAltNames(cert),
    identity: identity === null ? null : formatIdentityArg(identity),
    isCa: cert.ca,
    notBefore: notBefore.toISOString(),
    notAfter: notAfter.toISOString(),
    daysLeft: Math.floor((notAfter.getTime() - now.getTime()) / DAY_MS),
    expired: notAfter.getTime() <= now.getTime(),
    renewalDue: renewalDue(notBefore, notAfter, now),
    chainsToCa: isIssuedBy(cert, ca),
    keyMatches: input.keyPem === undefined ? null : keyMatchesCertificate(input.keyPem, cert),
  };
}
