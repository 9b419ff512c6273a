// The node's certificates on disk, under `<data root>/certs/` (SPEC §5, §8.2):
//   trust-domain   the trust domain, one line                  0644
//   ca.pem         CA certificate                               0644
//   ca-key.pem     CA private key (PKCS#8)                      0600
//   node.pem       node server certificate                      0644
//   node-key.pem   node private key (PKCS#8)                    0600
// Rotation renews node.pem under the same CA; the CA is only ever created or imported by `init`.
//
// Every file is replaced atomically. The node certificate and its key are two files that must change together, so
// a new pair is first written in full as node-next.pem / node-next-key.pem and then renamed into place, key first;
// whoever next opens the store finishes a pair interrupted half-way (or drops one that was never complete), so a
// crash at any step leaves a matching pair: the old one or the new one.
//
// One writer at a time: init and rotate take no lock, so the agent (or a single admin) should be the only one to
// run them on a host.

import { X509Certificate as NodeX509Certificate } from "node:crypto";
import { chmod, mkdir, readFile, realpath, rename, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import { syncDirectory, writeFileAtomic } from "./atomic-write.js";
import {
  classifySubjectAltNames,
  createCertificateAuthority,
  importCertificateAuthority,
  isValidDnsName,
  issueCertificate,
  keyMatchesCertificate,
  type CertificateAuthority,
  type CertificateKind,
  type IssuedCertificate,
} from "./cert-authority.js";
import { describeCertificate, subjectAltNames, type CertificateStatus } from "./certificate-info.js";
import {
  assertTrustDomain,
  DEFAULT_TRUST_DOMAIN,
  formatIdentityArg,
  ID_RULE,
  identityFromPeerCertificate,
  isValidIdentityId,
  type Identity,
} from "./identity.js";
import { PkiError, pkiInvalid, type PkiViolation } from "./pki-error.js";

export const CERTS_DIR_NAME = "certs";
const DIR_MODE = 0o700;
const PUBLIC_MODE = 0o644;
const SECRET_MODE = 0o600;

export interface CertPaths {
  dir: string;
  trustDomain: string;
  caCert: string;
  caKey: string;
  nodeCert: string;
  nodeKey: string;
  /** A complete new node certificate waiting to be renamed over nodeCert (see the file comment). */
  nodeCertNext: string;
  nodeKeyNext: string;
}

export function certPaths(dataRoot: string): CertPaths {
  const dir = join(resolve(dataRoot), CERTS_DIR_NAME);
  return {
    dir,
    trustDomain: join(dir, "trust-domain"),
    caCert: join(dir, "ca.pem"),
    caKey: join(dir, "ca-key.pem"),
    nodeCert: join(dir, "node.pem"),
    nodeKey: join(dir, "node-key.pem"),
    nodeCertNext: join(dir, "node-next.pem"),
    nodeKeyNext: join(dir, "node-next-key.pem"),
  };
}

/** What a TLS endpoint needs: the CA to verify peers with, and its own certificate and key. All PEM. */
export interface TlsMaterial {
  caPem: string;
  certPem: string;
  keyPem: string;
}

/** Anything that can hand out the current server certificate; CertStore is one, a test may pass its own. */
export interface ServerCertificateSource {
  serverMaterial(): Promise<TlsMaterial>;
}

export interface InitCertificatesOptions {
  /** The node's ID (the store's node record), named in the certificate as `node/<id>`. */
  nodeId: string;
  /** Default: the imported or existing CA's trust domain, else DEFAULT_TRUST_DOMAIN (`mvm.local`). */
  trustDomain?: string;
  /** Import this CA instead of creating one. */
  importCa?: { certPem: string; keyPem: string };
  /** Extra `--san` names (DNS names or IP addresses) for the node certificate. */
  extraSans?: readonly string[];
  /** The host name put in the node certificate. Default `os.hostname()`, lower-cased; left out if not a DNS name. */
  hostName?: string;
  /** Lifetime of a created CA. Default DEFAULT_CA_LIFETIME_DAYS. */
  caLifetimeDays?: number;
  /** Lifetime of the node certificate. Default DEFAULT_SERVER_LIFETIME_HOURS. */
  lifetimeHours?: number;
  now?: Date;
}

export interface InitCertificatesResult {
  /** `created`: a new CA; `imported`: the one given; `existing`: a CA already in the store (an interrupted init). */
  ca: "created" | "imported" | "existing";
  status: CertStoreStatus;
}

export interface IssueToDirectoryOptions {
  identity: Identity;
  /** Directory to write `<name>.pem`, `<name>-key.pem` and `ca.pem` into; created (0700) when missing. */
  outDir: string;
  /** File name stem. Default derived from the identity: `admin`, `coordinator`, `node-<id>`, `tenant-<id>`. */
  name?: string;
  /** Default `client`. */
  kind?: CertificateKind;
  /** Extra DNS names / IP addresses (for a `server` certificate). */
  sans?: readonly string[];
  lifetimeHours?: number;
  notBefore?: Date;
  now?: Date;
}

export interface IssuedFiles {
  identity: string;
  spiffeId: string;
  kind: CertificateKind;
  certPath: string;
  keyPath: string;
  caPath: string;
  serialNumber: string;
  notBefore: string;
  notAfter: string;
}

export interface RotatedNodeCertificate extends IssuedCertificate {
  previousSerialNumber: string;
  caPem: string;
}

export interface CertStoreStatus {
  directory: string;
  trustDomain: string;
  /** The CA first, then the node certificate. */
  certificates: CertificateStatus[];
}

export const NAME_RULE = ID_RULE;

/** The default file name stem for an identity's certificate. */
export function defaultCertName(identity: Identity): string {
  return formatIdentityArg(identity).replace("/", "-");
}

function errnoCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

async function unlinkIfPresent(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (e) {
    if (errnoCode(e) !== "ENOENT") throw e;
  }
}

async function readIfPresent(path: string): Promise<string | null> {
  try {
    return await readFile(path, "utf8");
  } catch (e) {
    if (errnoCode(e) === "ENOENT") return null;
    if (errnoCode(e) === "EACCES") throw new PkiError("failed_precondition", `cannot read ${path}: permission denied`);
    throw e;
  }
}

/** `path` with symbolic links resolved, or as given when it does not exist (yet). */
async function realPathOr(path: string): Promise<string> {
  return realpath(path).catch(() => path);
}

/** A key to check against its certificate: a missing one never matches (""), an unreadable one is not checked. */
async function readKeyForCheck(path: string): Promise<string | undefined> {
  return readIfPresent(path).then(
    (key) => key ?? "",
    () => undefined,
  );
}

function nodeHostName(given: string | undefined): string[] {
  const name = (given ?? hostname()).trim().toLowerCase();
  return name !== "" && name !== "localhost" && isValidDnsName(name) ? [name] : [];
}

export class CertStore implements ServerCertificateSource {
  readonly paths: CertPaths;

  private constructor(paths: CertPaths) {
    this.paths = paths;
  }

  /** The store under `<dataRoot>/certs/`. Touches nothing on disk. */
  static at(dataRoot: string): CertStore {
    return new CertStore(certPaths(dataRoot));
  }

  private notInitialised(): PkiError {
    return new PkiError(
      "failed_precondition",
      `no certificates in ${this.paths.dir}; run \`mvm agent certs init\` first`,
    );
  }

  private async readRequired(path: string): Promise<string> {
    const text = await readIfPresent(path);
    if (text === null) throw this.notInitialised();
    return text;
  }

  async trustDomain(): Promise<string> {
    const domain = (await this.readRequired(this.paths.trustDomain)).trim();
    assertTrustDomain(domain, this.paths.trustDomain);
    return domain;
  }

  /** The stored CA, checked as an import is (key matches, is a CA, not expired). */
  async certificateAuthority(now?: Date): Promise<CertificateAuthority> {
    const [certPem, keyPem] = await Promise.all([this.readRequired(this.paths.caCert), this.readRequired(this.paths.caKey)]);
    return importCertificateAuthority(certPem, keyPem, now);
  }

  /** The CA certificate alone, for peers that only verify; needs no access to the CA key. */
  async caCertificatePem(): Promise<string> {
    return this.readRequired(this.paths.caCert);
  }

  /** The CA certificate and the node's certificate and key, as the node's TLS server uses them. */
  async serverMaterial(): Promise<TlsMaterial> {
    await this.finishPendingNodeCertificate();
    const [caPem, certPem, keyPem] = await Promise.all([
      this.readRequired(this.paths.caCert),
      this.readRequired(this.paths.nodeCert),
      this.readRequired(this.paths.nodeKey),
    ]);
    return { caPem, certPem, keyPem };
  }

  /**
   * Creates (or imports) the CA and issues the node certificate. Refused when a node certificate already exists:
   * renewing is `rotate`, and replacing the CA would orphan every certificate it issued. A CA left by an
   * interrupted init is reused, unless a different one is being imported.
   */
  async init(options: InitCertificatesOptions): Promise<InitCertificatesResult> {
    if (!isValidIdentityId(options.nodeId)) throw pkiInvalid([{ field: "--node-id", rule: ID_RULE }]);
    if (options.trustDomain !== undefined) assertTrustDomain(options.trustDomain, "--trust-domain");
    const sans = classifySubjectAltNames(options.extraSans ?? []);
    await this.finishPendingNodeCertificate();
    if ((await readIfPresent(this.paths.nodeCert)) !== null) {
      throw new PkiError(
        "already_exists",
        `a node certificate already exists in ${this.paths.dir}; \`mvm agent certs rotate\` renews it under the same CA`,
      );
    }
    const existing = await this.existingCa(options.now);
    let ca: CertificateAuthority;
    let origin: InitCertificatesResult["ca"];
    let trustDomain: string;
    if (options.importCa !== undefined) {
      ca = await importCertificateAuthority(options.importCa.certPem, options.importCa.keyPem, options.now);
      if (existing !== null && !existing.ca.certificate.raw.equals(ca.certificate.raw)) {
        throw new PkiError(
          "failed_precondition",
          `${this.paths.caCert} already holds a different CA; remove ${this.paths.dir} to start over`,
        );
      }
      origin = "imported";
      trustDomain = options.trustDomain ?? existing?.trustDomain ?? ca.trustDomain ?? DEFAULT_TRUST_DOMAIN;
    } else if (existing !== null) {
      ca = existing.ca;
      origin = "existing";
      trustDomain = options.trustDomain ?? existing.trustDomain;
    } else {
      trustDomain = options.trustDomain ?? DEFAULT_TRUST_DOMAIN;
      ca = await createCertificateAuthority({ trustDomain, lifetimeDays: options.caLifetimeDays, now: options.now });
      origin = "created";
    }
    if (existing !== null && existing.trustDomain !== trustDomain) {
      throw new PkiError(
        "failed_precondition",
        `the certificates in ${this.paths.dir} belong to trust domain ${existing.trustDomain}, not ${trustDomain}`,
      );
    }
    if (ca.trustDomain !== null && ca.trustDomain !== trustDomain) {
      throw new PkiError("failed_precondition", `the CA belongs to trust domain ${ca.trustDomain}, not ${trustDomain}`);
    }

    const node = await issueCertificate(ca, {
      identity: { kind: "node", nodeId: options.nodeId },
      trustDomain,
      kind: "server",
      lifetimeHours: options.lifetimeHours,
      dnsNames: ["localhost", ...nodeHostName(options.hostName), ...sans.dnsNames],
      ipAddresses: ["127.0.0.1", "::1", ...sans.ipAddresses],
      now: options.now,
    });

    await mkdir(this.paths.dir, { recursive: true, mode: DIR_MODE });
    await chmod(this.paths.dir, DIR_MODE);
    if (existing === null) {
      // The trust domain first and the CA certificate last: the CA counts as present only once ca.pem exists.
      await writeFileAtomic(this.paths.trustDomain, `${trustDomain}\n`, PUBLIC_MODE);
      await writeFileAtomic(this.paths.caKey, ca.keyPem, SECRET_MODE);
      await writeFileAtomic(this.paths.caCert, ca.certPem, PUBLIC_MODE);
    }
    await this.installNodeCertificate(node);
    return { ca: origin, status: await this.status(options.now) };
  }

  /** The CA already in the store with its trust domain, or null when there is none (or only part of one). */
  private async existingCa(now?: Date): Promise<{ ca: CertificateAuthority; trustDomain: string } | null> {
    const [certPem, keyPem, domain] = await Promise.all([
      readIfPresent(this.paths.caCert),
      readIfPresent(this.paths.caKey),
      readIfPresent(this.paths.trustDomain),
    ]);
    // ca.pem is written last, so without it nothing was ever issued under whatever else is there.
    if (certPem === null) return null;
    if (keyPem === null || domain === null) {
      const missing = keyPem === null ? this.paths.caKey : this.paths.trustDomain;
      throw new PkiError("failed_precondition", `${this.paths.caCert} exists but ${missing} is missing; restore it or remove ${this.paths.dir} to start over`);
    }
    const trustDomain = domain.trim();
    assertTrustDomain(trustDomain, this.paths.trustDomain);
    return { ca: await importCertificateAuthority(certPem, keyPem, now), trustDomain };
  }

  /** Writes a new node certificate and key as a pair (see the file comment). */
  private async installNodeCertificate(cert: { certPem: string; keyPem: string }): Promise<void> {
    await writeFileAtomic(this.paths.nodeKeyNext, cert.keyPem, SECRET_MODE);
    await writeFileAtomic(this.paths.nodeCertNext, cert.certPem, PUBLIC_MODE);
    await this.finishPendingNodeCertificate();
  }

  /**
   * Completes a node certificate change that a crash interrupted, or drops one that never got complete. A no-op
   * when nothing is pending.
   */
  async finishPendingNodeCertificate(): Promise<void> {
    const [nextCert, nextKey] = await Promise.all([
      readIfPresent(this.paths.nodeCertNext),
      readIfPresent(this.paths.nodeKeyNext),
    ]);
    if (nextCert === null && nextKey === null) return;
    let next: NodeX509Certificate | null = null;
    try {
      if (nextCert !== null) next = new NodeX509Certificate(nextCert);
    } catch {
      next = null;
    }
    if (next !== null && nextKey !== null && keyMatchesCertificate(nextKey, next)) {
      await rename(this.paths.nodeKeyNext, this.paths.nodeKey);
      await rename(this.paths.nodeCertNext, this.paths.nodeCert);
    } else if (next !== null && nextKey === null) {
      // Interrupted between the two renames: the new key is in place already, or the pair never was complete.
      const key = await readIfPresent(this.paths.nodeKey);
      if (key !== null && keyMatchesCertificate(key, next)) await rename(this.paths.nodeCertNext, this.paths.nodeCert);
      else await unlinkIfPresent(this.paths.nodeCertNext);
    } else {
      await unlinkIfPresent(this.paths.nodeCertNext);
      await unlinkIfPresent(this.paths.nodeKeyNext);
    }
    await syncDirectory(this.paths.dir);
  }

  /**
   * Renews the node certificate under the same CA: same identity, same DNS and IP names, a new key and serial.
   * The CA is never touched. Returns the new certificate; a running server picks it up with
   * `reloadServerCertificate`.
   */
  async rotate(options: { lifetimeHours?: number; now?: Date } = {}): Promise<RotatedNodeCertificate> {
    await this.finishPendingNodeCertificate();
    const trustDomain = await this.trustDomain();
    const ca = await this.certificateAuthority(options.now);
    const current = new NodeX509Certificate(await this.readRequired(this.paths.nodeCert));
    const identity = identityFromPeerCertificate(current, trustDomain);
    if (identity === null) {
      throw new PkiError("failed_precondition", `${this.paths.nodeCert} carries no identity in trust domain ${trustDomain}`);
    }
    const names = subjectAltNames(current);
    const issued = await issueCertificate(ca, {
      identity,
      trustDomain,
      kind: "server",
      lifetimeHours: options.lifetimeHours,
      dnsNames: names.dnsNames,
      ipAddresses: names.ipAddresses,
      now: options.now,
    });
    await this.installNodeCertificate(issued);
    return { ...issued, previousSerialNumber: current.serialNumber, caPem: ca.certPem };
  }

  /**
   * Issues a certificate for `identity` under the node's CA and writes `<name>.pem` (0644), `<name>-key.pem`
   * (0600) and a copy of the CA certificate as `ca.pem` into `outDir`, replacing files of the same names.
   */
  async issueToDirectory(options: IssueToDirectoryOptions): Promise<IssuedFiles> {
    const name = options.name ?? defaultCertName(options.identity);
    const outDir = resolve(options.outDir);
    const violations: PkiViolation[] = [];
    if (!isValidIdentityId(name)) violations.push({ field: "--name", rule: NAME_RULE });
    // `ca` would write the new key over `ca-key.pem` beside the CA copy; the certs directory holds the node's own keys.
    if (name === "ca") violations.push({ field: "--name", rule: "must not be ca (ca.pem is the copy of the CA certificate)" });
    if ((await realPathOr(outDir)) === (await realPathOr(this.paths.dir))) {
      violations.push({ field: "--out", rule: `must not be the node's own certificate directory ${this.paths.dir}` });
    }
    if (violations.length > 0) throw pkiInvalid(violations);
    const kind = options.kind ?? "client";
    const sans = classifySubjectAltNames(options.sans ?? []);
    const trustDomain = await this.trustDomain();
    const ca = await this.certificateAuthority(options.now);
    const issued = await issueCertificate(ca, {
      identity: options.identity,
      trustDomain,
      kind,
      lifetimeHours: options.lifetimeHours,
      dnsNames: sans.dnsNames,
      ipAddresses: sans.ipAddresses,
      notBefore: options.notBefore,
      now: options.now,
    });
    await mkdir(outDir, { recursive: true, mode: DIR_MODE });
    const certPath = join(outDir, `${name}.pem`);
    const keyPath = join(outDir, `${name}-key.pem`);
    const caPath = join(outDir, "ca.pem");
    await writeFileAtomic(keyPath, issued.keyPem, SECRET_MODE);
    await writeFileAtomic(certPath, issued.certPem, PUBLIC_MODE);
    await writeFileAtomic(caPath, ca.certPem, PUBLIC_MODE);
    return {
      identity: formatIdentityArg(options.identity),
      spiffeId: issued.spiffeId,
      kind,
      certPath,
      keyPath,
      caPath,
      serialNumber: issued.serialNumber,
      notBefore: issued.notBefore.toISOString(),
      notAfter: issued.notAfter.toISOString(),
    };
  }

  /** The CA and node certificates as `certs status` shows them. Reads the CA key only to check it matches. */
  async status(now = new Date()): Promise<CertStoreStatus> {
    await this.finishPendingNodeCertificate();
    const trustDomain = await this.trustDomain();
    const caPem = await this.readRequired(this.paths.caCert);
    const caKey = await readKeyForCheck(this.paths.caKey);
    const certificates = [
      describeCertificate({
        role: "ca",
        path: this.paths.caCert,
        certPem: caPem,
        caCertPem: caPem,
        trustDomain,
        keyPem: caKey,
        now,
      }),
    ];
    const nodePem = await readIfPresent(this.paths.nodeCert);
    if (nodePem !== null) {
      const nodeKey = await readKeyForCheck(this.paths.nodeKey);
      certificates.push(
        describeCertificate({
          role: "node",
          path: this.paths.nodeCert,
          certPem: nodePem,
          caCertPem: caPem,
          trustDomain,
          keyPem: nodeKey,
          now,
        }),
      );
    }
    return { directory: this.paths.dir, trustDomain, certificates };
  }
}
