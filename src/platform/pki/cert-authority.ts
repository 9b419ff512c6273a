// A node's certificate authority and the certificates it issues (SPEC §8.2). ECDSA P-256 with SHA-256 throughout.
// Lifetimes are short by default and every issued certificate ends no later than its CA, so an expiring CA is
// visible as one date instead of a set of certificates that outlive it.

import {
  createPrivateKey,
  createPublicKey,
  KeyObject,
  randomBytes,
  X509Certificate as NodeX509Certificate,
} from "node:crypto";
import { isIP } from "node:net";
import { certificateUris, formatIdentityArg, spiffeId, trustDomainSpiffeId, assertTrustDomain, type Identity } from "./identity.js";
import { PkiError, pkiInvalid, type PkiViolation } from "./pki-error.js";
import { webcrypto, x509 } from "./x509.js";

type CryptoKey = webcrypto.CryptoKey;

/** Default lifetime of a CA: 5 years. Rotation never replaces the CA, so it must outlive many node certificates. */
export const DEFAULT_CA_LIFETIME_DAYS = 5 * 365;
/**
 * Default lifetime of a server certificate (a node's): 30 days. `renewalDue` reports it due once a third of that is
 * left, so a weekly renewal check has two chances before expiry.
 */
export const DEFAULT_SERVER_LIFETIME_HOURS = 30 * 24;
/** Default lifetime of a client certificate (admin, coordinator, tenant): 7 days. */
export const DEFAULT_CLIENT_LIFETIME_HOURS = 7 * 24;
/** Upper bound of any lifetime flag: 10 years, in hours. */
export const MAX_LIFETIME_HOURS = 10 * 365 * 24;
export const MAX_CA_LIFETIME_DAYS = 20 * 365;
/** notBefore is set this far in the past, so a peer whose clock runs a little behind accepts a fresh certificate. */
export const CLOCK_SKEW_ALLOWANCE_MS = 5 * 60_000;

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

const EC_KEY_ALGORITHM = { name: "ECDSA", namedCurve: "P-256" } as const;
const SIGNING_ALGORITHM = { name: "ECDSA", hash: "SHA-256" } as const;
/** OpenSSL's name for P-256, as reported by node:crypto key details. */
const P256_OPENSSL_NAME = "prime256v1";

export const DNS_NAME_RULE =
  "must be a DNS name (dot-separated labels of 1-63 characters of [a-z0-9-], no leading or trailing hyphen, " +
  "253 characters at most) or an IPv4 or IPv6 address";
const DNS_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * What a certificate is for. `server`: serverAuth and clientAuth (a node or a coordinator also dials its peers with
 * the certificate it serves with). `client`: clientAuth only.
 */
export type CertificateKind = "server" | "client";

/** A CA ready to sign: its PEMs and the parsed forms signing needs. */
export interface CertificateAuthority {
  certPem: string;
  /** PKCS#8 PEM. */
  keyPem: string;
  certificate: NodeX509Certificate;
  /** The trust domain named in the CA's own `spiffe://<trust-domain>` URI SAN; null for an imported CA without one. */
  trustDomain: string | null;
  signingKey: CryptoKey;
}

export interface CreateCertificateAuthorityOptions {
  trustDomain: string;
  /** Default DEFAULT_CA_LIFETIME_DAYS (5 years). */
  lifetimeDays?: number;
  /** The current time; default the system clock. */
  now?: Date;
}

export interface IssueCertificateOptions {
  identity: Identity;
  trustDomain: string;
  kind: CertificateKind;
  /**
   * Default DEFAULT_SERVER_LIFETIME_HOURS (30 days) or DEFAULT_CLIENT_LIFETIME_HOURS (7 days), cut short to end
   * with the CA. An explicit lifetime that would outlast the CA is refused instead.
   */
  lifetimeHours?: number;
  /** DNS subject alternative names. Default none. */
  dnsNames?: readonly string[];
  /** IP subject alternative names (IPv4 or IPv6). Default none. */
  ipAddresses?: readonly string[];
  /** Start of validity. Default: now minus CLOCK_SKEW_ALLOWANCE_MS. The lifetime counts from here when given. */
  notBefore?: Date;
  /** The current time; default the system clock. */
  now?: Date;
  /** Test only: issue without the SPIFFE URI SAN, to check that such a certificate grants no identity. */
  withoutSpiffeIdForTests?: boolean;
}

export interface IssuedCertificate {
  certPem: string;
  /** PKCS#8 PEM of a fresh P-256 key. */
  keyPem: string;
  /** Upper-case hex, as node:crypto prints it. */
  serialNumber: string;
  spiffeId: string;
  notBefore: Date;
  notAfter: Date;
}

/** PEM blocks end with a newline, so files concatenate and diff cleanly. */
function normalisePem(pem: string): string {
  return `${pem.replace(/\r\n/g, "\n").trimEnd()}\n`;
}

function generateKeyPair(): Promise<CryptoKeyPair> {
  return webcrypto.subtle.generateKey(EC_KEY_ALGORITHM, true, ["sign", "verify"]) as Promise<CryptoKeyPair>;
}

interface CryptoKeyPair {
  privateKey: CryptoKey;
  publicKey: CryptoKey;
}

function privateKeyPem(key: CryptoKey): string {
  return normalisePem(KeyObject.from(key).export({ type: "pkcs8", format: "pem" }).toString());
}

/**
 * A random positive serial of 16 bytes. The top bit is cleared (DER integers are signed) and the next one set, so
 * the encoding is always exactly 16 bytes and never needs a leading zero.
 */
function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = ((bytes[0] as number) & 0x7f) | 0x40;
  return bytes.toString("hex");
}

function checkLifetime(value: number, max: number, field: string): PkiViolation[] {
  return Number.isInteger(value) && value >= 1 && value <= max
    ? []
    : [{ field, rule: `must be a whole number from 1 to ${max} (got ${String(value)})` }];
}

export function isValidDnsName(name: string): boolean {
  return name.length <= 253 && name.split(".").every((label) => DNS_LABEL.test(label));
}

/**
 * Splits `--san` values into DNS names and IP addresses, lower-casing DNS names; anything else is refused, naming
 * `field`. Duplicates are dropped, first occurrence kept.
 */
export function classifySubjectAltNames(
  values: readonly string[],
  field = "--san",
): { dnsNames: string[]; ipAddresses: string[] } {
  const dnsNames: string[] = [];
  const ipAddresses: string[] = [];
  const violations: PkiViolation[] = [];
  for (const raw of values) {
    const value = raw.trim();
    if (isIP(value) !== 0) {
      if (!ipAddresses.includes(value)) ipAddresses.push(value);
    } else if (isValidDnsName(value.toLowerCase())) {
      if (!dnsNames.includes(value.toLowerCase())) dnsNames.push(value.toLowerCase());
    } else {
      violations.push({ field, rule: `${DNS_NAME_RULE} (got ${JSON.stringify(raw)})` });
    }
  }
  if (violations.length > 0) throw pkiInvalid(violations);
  return { dnsNames, ipAddresses };
}

/** The trust domain a CA names in its `spiffe://<trust-domain>` URI SAN, or null when it names none or several. */
function caTrustDomain(cert: NodeX509Certificate): string | null {
  const roots = certificateUris(cert.raw).filter((u) => /^spiffe:\/\/[^/]+$/.test(u));
  return roots.length === 1 ? (roots[0] as string).slice("spiffe://".length) : null;
}

/** A self-signed CA for `trustDomain`: basicConstraints CA (path length 0), keyCertSign and cRLSign, an SKI. */
export async function createCertificateAuthority(options: CreateCertificateAuthorityOptions): Promise<CertificateAuthority> {
  assertTrustDomain(options.trustDomain);
  const lifetimeDays = options.lifetimeDays ?? DEFAULT_CA_LIFETIME_DAYS;
  const violations = checkLifetime(lifetimeDays, MAX_CA_LIFETIME_DAYS, "--ca-lifetime-days");
  if (violations.length > 0) throw pkiInvalid(violations);
  const now = options.now ?? new Date();
  const keys = await generateKeyPair();
  // A random suffix keeps two CAs of one trust domain apart by name as well as by key identifier.
  const name = `CN=mvm CA ${randomBytes(4).toString("hex")}, O=${options.trustDomain}`;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: name,
    issuer: name,
    notBefore: new Date(now.getTime() - CLOCK_SKEW_ALLOWANCE_MS),
    notAfter: new Date(now.getTime() + lifetimeDays * DAY_MS),
    publicKey: keys.publicKey,
    signingKey: keys.privateKey,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      new x509.SubjectAlternativeNameExtension([{ type: "url", value: trustDomainSpiffeId(options.trustDomain) }]),
    ],
  });
  const certPem = normalisePem(cert.toString("pem"));
  return {
    certPem,
    keyPem: privateKeyPem(keys.privateKey),
    certificate: new NodeX509Certificate(certPem),
    trustDomain: options.trustDomain,
    signingKey: keys.privateKey,
  };
}

function spkiDer(key: KeyObject): Buffer {
  return key.export({ type: "spki", format: "der" });
}

/**
 * Loads a CA from PEM (certificate; key as PKCS#8 or SEC1, unencrypted). Refused: text that is no certificate or
 * no key, a key that is not ECDSA P-256, a key that does not belong to the certificate, a certificate that is not a
 * CA (basicConstraints) or may not sign certificates (keyUsage), and an expired CA. Fields are named as the
 * `--ca-cert` and `--ca-key` flags.
 */
export async function importCertificateAuthority(certPem: string, keyPem: string, now = new Date()): Promise<CertificateAuthority> {
  let certificate: NodeX509Certificate;
  try {
    certificate = new NodeX509Certificate(certPem);
  } catch {
    throw pkiInvalid([{ field: "--ca-cert", rule: "must be a PEM X.509 certificate" }]);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch {
    throw pkiInvalid([{ field: "--ca-key", rule: "must be an unencrypted PEM private key (PKCS#8 or SEC1)" }]);
  }
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== P256_OPENSSL_NAME) {
    throw pkiInvalid([{ field: "--ca-key", rule: "must be an ECDSA P-256 key" }]);
  }
  if (!spkiDer(createPublicKey(key)).equals(spkiDer(certificate.publicKey))) {
    throw pkiInvalid([{ field: "--ca-key", rule: "must be the private key of the --ca-cert certificate (the public keys differ)" }]);
  }
  if (!certificate.ca) {
    throw pkiInvalid([{ field: "--ca-cert", rule: "must be a CA certificate (basicConstraints CA:TRUE)" }]);
  }
  const usage = new x509.X509Certificate(certificate.raw).getExtension(x509.KeyUsagesExtension);
  if (usage !== null && (usage.usages & x509.KeyUsageFlags.keyCertSign) === 0) {
    throw pkiInvalid([{ field: "--ca-cert", rule: "must allow certificate signing (keyUsage keyCertSign)" }]);
  }
  if (new Date(certificate.validTo).getTime() <= now.getTime()) {
    throw new PkiError("failed_precondition", `the CA certificate expired on ${new Date(certificate.validTo).toISOString()}`);
  }
  const pkcs8 = key.export({ type: "pkcs8", format: "der" });
  const signingKey = await webcrypto.subtle.importKey("pkcs8", pkcs8, EC_KEY_ALGORITHM, false, ["sign"]);
  return {
    certPem: normalisePem(certificate.toString()),
    keyPem: normalisePem(key.export({ type: "pkcs8", format: "pem" }).toString()),
    certificate,
    trustDomain: caTrustDomain(certificate),
    signingKey,
  };
}

function defaultLifetimeHours(kind: CertificateKind): number {
  return kind === "server" ? DEFAULT_SERVER_LIFETIME_HOURS : DEFAULT_CLIENT_LIFETIME_HOURS;
}

/**
 * Issues a leaf certificate for `identity` signed by `ca`: a fresh P-256 key, a random serial, the SPIFFE ID as the
 * only URI SAN plus the DNS and IP names asked for, EKU by `kind`, SKI and AKI (the CA's own key identifier).
 */
export async function issueCertificate(ca: CertificateAuthority, options: IssueCertificateOptions): Promise<IssuedCertificate> {
  assertTrustDomain(options.trustDomain, "trust_domain");
  const uri = spiffeId(options.trustDomain, options.identity);
  if (ca.trustDomain !== null && ca.trustDomain !== options.trustDomain) {
    throw new PkiError(
      "failed_precondition",
      `the CA belongs to trust domain ${ca.trustDomain}, not ${options.trustDomain}`,
    );
  }
  const violations: PkiViolation[] = [];
  if (options.lifetimeHours !== undefined) {
    violations.push(...checkLifetime(options.lifetimeHours, MAX_LIFETIME_HOURS, "--lifetime-hours"));
  }
  const names = classifySubjectAltNames([...(options.dnsNames ?? []), ...(options.ipAddresses ?? [])]);
  if (violations.length > 0) throw pkiInvalid(violations);

  const now = options.now ?? new Date();
  const caNotAfter = new Date(ca.certificate.validTo);
  if (caNotAfter.getTime() <= now.getTime()) {
    throw new PkiError("failed_precondition", `the CA certificate expired on ${caNotAfter.toISOString()}`);
  }
  const start = options.notBefore ?? now;
  const notBefore = options.notBefore ?? new Date(now.getTime() - CLOCK_SKEW_ALLOWANCE_MS);
  let notAfter = new Date(start.getTime() + (options.lifetimeHours ?? defaultLifetimeHours(options.kind)) * HOUR_MS);
  if (notAfter.getTime() > caNotAfter.getTime()) {
    if (options.lifetimeHours !== undefined) {
      throw pkiInvalid([
        { field: "--lifetime-hours", rule: `must end by the CA's expiry, ${caNotAfter.toISOString()}` },
      ]);
    }
    notAfter = caNotAfter;
  }

  const caCert = new x509.X509Certificate(ca.certificate.raw);
  const keys = await generateKeyPair();
  const caKeyId = caCert.getExtension(x509.SubjectKeyIdentifierExtension);
  const authorityKeyId = caKeyId
    ? new x509.AuthorityKeyIdentifierExtension(caKeyId.keyId)
    : await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey);
  const altNames: Array<{ type: "url" | "dns" | "ip"; value: string }> = [];
  if (!options.withoutSpiffeIdForTests) altNames.push({ type: "url", value: uri });
  for (const dns of names.dnsNames) altNames.push({ type: "dns", value: dns });
  for (const ip of names.ipAddresses) altNames.push({ type: "ip", value: ip });
  const usages =
    options.kind === "server"
      ? [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]
      : [x509.ExtendedKeyUsage.clientAuth];
  const extensions: InstanceType<typeof x509.Extension>[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension(usages, false),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    authorityKeyId,
  ];
  if (altNames.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(altNames, false));

  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: `CN=${formatIdentityArg(options.identity)}, O=${options.trustDomain}`,
    issuer: caCert.subjectName,
    notBefore,
    notAfter,
    publicKey: keys.publicKey,
    signingKey: ca.signingKey,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions,
  });
  const certPem = normalisePem(cert.toString("pem"));
  const parsed = new NodeX509Certificate(certPem);
  return {
    certPem,
    keyPem: privateKeyPem(keys.privateKey),
    serialNumber: parsed.serialNumber,
    spiffeId: uri,
    notBefore: new Date(parsed.validFrom),
    notAfter: new Date(parsed.validTo),
  };
}

/** Whether `cert` names `ca` as its issuer and carries a valid signature by the CA's key. Dates are not checked. */
export function isIssuedBy(cert: NodeX509Certificate, ca: NodeX509Certificate): boolean {
  return cert.checkIssued(ca) && cert.verify(ca.publicKey);
}

/** Whether `keyPem` is the private key of `cert`. */
export function keyMatchesCertificate(keyPem: string, cert: NodeX509Certificate): boolean {
  try {
    return spkiDer(createPublicKey(createPrivateKey(keyPem))).equals(spkiDer(cert.publicKey));
  } catch {
    return false;
  }
}
