import "reflect-metadata";
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { beforeAll, describe, expect, it } from "vitest";
import {
  CLOCK_SKEW_ALLOWANCE_MS,
  createCertificateAuthority,
  DEFAULT_CLIENT_LIFETIME_HOURS,
  DEFAULT_SERVER_LIFETIME_HOURS,
  importCertificateAuthority,
  isIssuedBy,
  issueCertificate,
  keyMatchesCertificate,
  type CertificateAuthority,
} from "../../../src/platform/pki/cert-authority.js";
import { PkiError } from "../../../src/platform/pki/pki-error.js";

const TD = "mvm.local";
const HOUR = 3_600_000;
const ADMIN = { kind: "admin" } as const;

let ca: CertificateAuthority;
let otherCa: CertificateAuthority;

beforeAll(async () => {
  ca = await createCertificateAuthority({ trustDomain: TD });
  otherCa = await createCertificateAuthority({ trustDomain: TD });
});

function peculiar(pem: string) {
  return new x509.X509Certificate(pem);
}

async function thrown(work: () => Promise<unknown>): Promise<PkiError> {
  try {
    await work();
  } catch (e) {
    expect(e).toBeInstanceOf(PkiError);
    return e as PkiError;
  }
  throw new Error("expected a PkiError");
}

describe("createCertificateAuthority", () => {
  it("makes a self-signed P-256 CA that may only sign certificates", () => {
    const cert = new X509Certificate(ca.certPem);
    expect(cert.ca).toBe(true);
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(cert.verify(cert.publicKey)).toBe(true);
    expect(cert.checkIssued(cert)).toBe(true);
    const p = peculiar(ca.certPem);
    const usage = p.getExtension(x509.KeyUsagesExtension);
    expect(usage?.critical).toBe(true);
    expect(usage?.usages).toBe(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
    expect(p.getExtension(x509.BasicConstraintsExtension)?.critical).toBe(true);
    expect(p.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId).toMatch(/^[0-9a-f]{40}$/);
    expect(cert.subjectAltName).toBe(`URI:spiffe://${TD}`);
    expect(ca.trustDomain).toBe(TD);
    expect(keyMatchesCertificate(ca.keyPem, cert)).toBe(true);
    expect(ca.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n[\s\S]+\n-----END PRIVATE KEY-----\n$/);
  });

  it("lasts the lifetime asked for", async () => {
    const now = new Date("2030-01-01T00:00:00Z");
    const short = await createCertificateAuthority({ trustDomain: TD, lifetimeDays: 10, now });
    expect(new Date(short.certificate.validTo).getTime()).toBe(now.getTime() + 10 * 24 * HOUR);
  });

  it("refuses a bad trust domain and a bad lifetime", async () => {
    expect((await thrown(() => createCertificateAuthority({ trustDomain: "Not A Domain" }))).violations[0]?.field).toBe("--trust-domain");
    expect((await thrown(() => createCertificateAuthority({ trustDomain: TD, lifetimeDays: 0 }))).message).toContain("--ca-lifetime-days");
    expect((await thrown(() => createCertificateAuthority({ trustDomain: TD, lifetimeDays: 1.5 }))).kind).toBe("invalid");
  });
});

describe("issueCertificate", () => {
  it("issues a client certificate that verifies against the CA and names the identity", async () => {
    const issued = await issueCertificate(ca, { identity: { kind: "tenant", tenantId: "acme" }, trustDomain: TD, kind: "client" });
    const cert = new X509Certificate(issued.certPem);
    expect(cert.verify(ca.certificate.publicKey)).toBe(true);
    expect(cert.checkIssued(ca.certificate)).toBe(true);
    expect(isIssuedBy(cert, ca.certificate)).toBe(true);
    expect(isIssuedBy(cert, otherCa.certificate)).toBe(false);
    expect(cert.verify(otherCa.certificate.publicKey)).toBe(false);
    expect(cert.ca).toBe(false);
    expect(cert.subjectAltName).toBe(`URI:spiffe://${TD}/tenant/acme`);
    expect(issued.spiffeId).toBe(`spiffe://${TD}/tenant/acme`);
    expect(cert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.2"]);
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(keyMatchesCertificate(issued.keyPem, cert)).toBe(true);
    expect(keyMatchesCertificate(ca.keyPem, cert)).toBe(false);
    expect(issued.serialNumber).toBe(cert.serialNumber);
  });

  it("issues a server certificate with serverAuth, clientAuth and the DNS and IP names asked for", async () => {
    const issued = await issueCertificate(ca, {
      identity: { kind: "node", nodeId: "n-0a1b2c3d4e5f" },
      trustDomain: TD,
      kind: "server",
      dnsNames: ["localhost", "Node1.Example.org"],
      ipAddresses: ["127.0.0.1", "::1", "10.0.0.7"],
    });
    const cert = new X509Certificate(issued.certPem);
    expect(cert.keyUsage?.sort()).toEqual(["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]);
    expect(cert.checkHost("localhost")).toBe("localhost");
    expect(cert.checkHost("node1.example.org")).toBe("node1.example.org");
    expect(cert.checkIP("127.0.0.1")).toBe("127.0.0.1");
    expect(cert.checkIP("::1")).toBe("::1");
    expect(cert.checkIP("10.0.0.7")).toBe("10.0.0.7");
    expect(cert.checkHost("other.example.org")).toBeUndefined();
    expect(cert.subjectAltName).toContain(`URI:spiffe://${TD}/node/n-0a1b2c3d4e5f`);
    const p = peculiar(issued.certPem);
    expect(p.getExtension(x509.KeyUsagesExtension)?.usages).toBe(x509.KeyUsageFlags.digitalSignature);
    expect(p.getExtension(x509.BasicConstraintsExtension)?.ca).toBe(false);
  });

  it("carries an AKI equal to the CA's SKI, and its own SKI", async () => {
    const issued = await issueCertificate(ca, { identity: ADMIN, trustDomain: TD, kind: "client" });
    const aki = peculiar(issued.certPem).getExtension(x509.AuthorityKeyIdentifierExtension);
    const caSki = peculiar(ca.certPem).getExtension(x509.SubjectKeyIdentifierExtension);
    expect(aki?.keyId).toBeDefined();
    expect(aki?.keyId).toBe(caSki?.keyId);
    expect(peculiar(issued.certPem).getExtension(x509.SubjectKeyIdentifierExtension)?.keyId).not.toBe(caSki?.keyId);
  });

  it("uses short default lifetimes, backdated for clock skew", async () => {
    const now = new Date();
    const client = await issueCertificate(ca, { identity: ADMIN, trustDomain: TD, kind: "client", now });
    const server = await issueCertificate(ca, { identity: ADMIN, trustDomain: TD, kind: "server", now });
    // X.509 times have whole seconds.
    const second = (d: Date) => Math.floor(d.getTime() / 1000) * 1000;
    expect(client.notBefore.getTime()).toBe(second(new Date(now.getTime() - CLOCK_SKEW_ALLOWANCE_MS)));
    expect(client.notAfter.getTime()).toBe(second(new Date(now.getTime() + DEFAULT_CLIENT_LIFETIME_HOURS * HOUR)));
    expect(server.notAfter.getTime()).toBe(second(new Date(now.getTime() + DEFAULT_SERVER_LIFETIME_HOURS * HOUR)));
  });

  it("counts an explicit lifetime from an explicit notBefore (an already expired certificate)", async () => {
    const notBefore = new Date(Date.now() - 48 * HOUR);
    const issued = await issueCertificate(ca, { identity: ADMIN, trustDomain: TD, kind: "client", notBefore, lifetimeHours: 1 });
    expect(issued.notBefore.getTime()).toBe(Math.floor(notBefore.getTime() / 1000) * 1000);
    expect(issued.notAfter.getTime() - issued.notBefore.getTime()).toBe(HOUR);
    expect(issued.notAfter.getTime()).toBeLessThan(Date.now());
  });

  it("gives every certificate a fresh key and a random positive 16-byte serial", async () => {
    const serials = new Set<string>();
    const keys = new Set<string>();
    for (let i = 0; i < 8; i++) {
      const issued = await issueCertificate(ca, { identity: ADMIN, trustDomain: TD, kind: "client" });
      expect(issued.serialNumber).toMatch(/^[4-7][0-9A-F]{31}$/);
      serials.add(issued.serialNumber);
      keys.add(issued.keyPem);
    }
    expect(serials.size).toBe(8);
    expect(keys.size).toBe(8);
  });

  it("cuts a default lifetime short at the CA's expiry, and refuses an explicit one that outlasts it", async () => {
    const now = new Date();
    const shortCa = await createCertificateAuthority({ trustDomain: TD, lifetimeDays: 1, now });
    const issued = await issueCertificate(shortCa, { identity: ADMIN, trustDomain: TD, kind: "server", now });
    expect(issued.notAfter.getTime()).toBe(new Date(shortCa.certificate.validTo).getTime());
    const e = await thrown(() => issueCertificate(shortCa, { identity: ADMIN, trustDomain: TD, kind: "client", lifetimeHours: 25, now }));
    expect(e.kind).toBe("invalid");
    expect(e.violations[0]?.field).toBe("--lifetime-hours");
    expect(e.violations[0]?.rule).toContain("must end by the CA's expiry");
  });

  it("refuses to sign with an expired CA", async () => {
    const e = await thrown(() =>
      issueCertificate(ca, { identity: ADMIN, trustDomain: TD, kind: "client", now: new Date(Date.now() + 6 * 365 * 24 * HOUR) }),
    );
    expect(e.kind).toBe("failed_precondition");
    expect(e.message).toContain("expired");
  });

  it("refuses bad names, bad lifetimes, a bad identity and another trust domain", async () => {
    const bad = await thrown(() =>
      issueCertificate(ca, { identity: ADMIN, trustDomain: TD, kind: "server", dnsNames: ["ok.example", "bad name", "-x.example"] }),
    );
    expect(bad.violations.map((v) => v.field)).toEqual(["--san", "--san"]);
    for (const lifetimeHours of [0, -1, 1.5, Number.NaN, 10 * 365 * 24 + 1]) {
      const e = await thrown(() => issueCertificate(ca, { identity: ADMIN, trustDomain: TD, kind: "client", lifetimeHours }));
      expect(e.violations[0]?.field).toBe("--lifetime-hours");
    }
    await thrown(() => issueCertificate(ca, { identity: { kind: "tenant", tenantId: "Bad" }, trustDomain: TD, kind: "client" }));
    const other = await thrown(() => issueCertificate(ca, { identity: ADMIN, trustDomain: "other.domain", kind: "client" }));
    expect(other.kind).toBe("failed_precondition");
  });

  it("leaves out the SPIFFE ID only when a test asks", async () => {
    const issued = await issueCertificate(ca, { identity: ADMIN, trustDomain: TD, kind: "client", withoutSpiffeIdForTests: true });
    expect(new X509Certificate(issued.certPem).subjectAltName).toBeUndefined();
  });
});

describe("importCertificateAuthority", () => {
  it("imports a CA that then issues certificates verifying against the original", async () => {
    const imported = await importCertificateAuthority(ca.certPem, ca.keyPem);
    expect(imported.trustDomain).toBe(TD);
    const issued = await issueCertificate(imported, { identity: ADMIN, trustDomain: TD, kind: "client" });
    expect(new X509Certificate(issued.certPem).verify(ca.certificate.publicKey)).toBe(true);
  });

  it("accepts a SEC1 (EC PRIVATE KEY) key", async () => {
    const { createPrivateKey } = await import("node:crypto");
    const sec1 = createPrivateKey(ca.keyPem).export({ type: "sec1", format: "pem" }).toString();
    expect(sec1).toContain("BEGIN EC PRIVATE KEY");
    await expect(importCertificateAuthority(ca.certPem, sec1)).resolves.toBeDefined();
  });

  it("refuses a key that does not belong to the certificate", async () => {
    const e = await thrown(() => importCertificateAuthority(ca.certPem, otherCa.keyPem));
    expect(e.kind).toBe("invalid");
    expect(e.violations[0]?.field).toBe("--ca-key");
    expect(e.message).toContain("must be the private key of the --ca-cert certificate");
  });

  it("refuses a certificate that is not a CA", async () => {
    const leaf = await issueCertificate(ca, { identity: ADMIN, trustDomain: TD, kind: "client" });
    const e = await thrown(() => importCertificateAuthority(leaf.certPem, leaf.keyPem));
    expect(e.violations[0]).toEqual({ field: "--ca-cert", rule: "must be a CA certificate (basicConstraints CA:TRUE)" });
  });

  it("refuses keys other than ECDSA P-256, and text that is no PEM", async () => {
    const p384 = generateKeyPairSync("ec", { namedCurve: "secp384r1" }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    for (const key of [p384, rsa]) {
      expect((await thrown(() => importCertificateAuthority(ca.certPem, key))).violations[0]?.rule).toBe("must be an ECDSA P-256 key");
    }
    expect((await thrown(() => importCertificateAuthority("not a cert", ca.keyPem))).violations[0]?.field).toBe("--ca-cert");
    expect((await thrown(() => importCertificateAuthority(ca.certPem, "not a key"))).violations[0]?.field).toBe("--ca-key");
  });

  it("refuses an expired CA", async () => {
    const e = await thrown(() => importCertificateAuthority(ca.certPem, ca.keyPem, new Date(Date.now() + 6 * 365 * 24 * HOUR)));
    expect(e.kind).toBe("failed_precondition");
  });
});
