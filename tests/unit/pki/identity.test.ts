import "reflect-metadata";
import { X509Certificate, webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { createCertificateAuthority, issueCertificate } from "../../../src/platform/pki/cert-authority.js";
import {
  formatIdentityArg,
  identityFromPeerCertificate,
  identityFromSpiffe,
  isValidTrustDomain,
  parseIdentityArg,
  spiffeId,
  type Identity,
} from "../../../src/platform/pki/identity.js";
import { PkiError } from "../../../src/platform/pki/pki-error.js";

x509.cryptoProvider.set(webcrypto);

const TD = "mvm.local";

const validId = fc.stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/);
const identityArb: fc.Arbitrary<Identity> = fc.oneof(
  fc.constant<Identity>({ kind: "admin" }),
  fc.constant<Identity>({ kind: "coordinator" }),
  validId.map((nodeId): Identity => ({ kind: "node", nodeId })),
  validId.map((tenantId): Identity => ({ kind: "tenant", tenantId })),
);

function refusal(value: unknown): PkiError {
  try {
    parseIdentityArg(value);
  } catch (e) {
    expect(e).toBeInstanceOf(PkiError);
    return e as PkiError;
  }
  throw new Error(`parseIdentityArg accepted ${JSON.stringify(value)}`);
}

describe("identity arguments", () => {
  it("parses the four forms", () => {
    expect(parseIdentityArg("admin")).toEqual({ kind: "admin" });
    expect(parseIdentityArg("coordinator")).toEqual({ kind: "coordinator" });
    expect(parseIdentityArg("node/n-0a1b2c3d4e5f")).toEqual({ kind: "node", nodeId: "n-0a1b2c3d4e5f" });
    expect(parseIdentityArg("tenant/acme")).toEqual({ kind: "tenant", tenantId: "acme" });
  });

  it("round-trips through the flag spelling and the SPIFFE ID", () => {
    fc.assert(
      fc.property(identityArb, (identity) => {
        expect(parseIdentityArg(formatIdentityArg(identity))).toEqual(identity);
        const uri = spiffeId(TD, identity);
        expect(uri).toBe(`spiffe://${TD}/${formatIdentityArg(identity)}`);
        expect(identityFromSpiffe(uri, TD)).toEqual(identity);
      }),
    );
  });

  it.each([
    "",
    "Admin",
    "ADMIN",
    " admin",
    "admin ",
    "admin/",
    "/admin",
    "admin/x",
    "coordinator/1",
    "node",
    "node/",
    "node/-a",
    "node/a-",
    "node/A",
    "node/a_b",
    "node/a.b",
    "node/a/b",
    `node/${"a".repeat(64)}`,
    "tenant",
    "tenant/",
    "tenant//acme",
    "tenant/acme/",
    "user/bob",
    "spiffe://mvm.local/admin",
  ])("refuses %j naming --identity and the rule", (value) => {
    const e = refusal(value);
    expect(e.kind).toBe("invalid");
    expect(e.violations).toHaveLength(1);
    expect(e.violations[0]?.field).toBe("--identity");
    expect(e.violations[0]?.rule).toContain("must be admin, coordinator, node/<id> or tenant/<id>");
    expect(e.message).toContain("--identity: must be admin");
  });

  it("refuses a value that is not a string, and names another field when asked", () => {
    expect(refusal(undefined).message).toContain("got nothing");
    expect(refusal(7).message).toContain("got number");
    expect(() => parseIdentityArg("root", "identity")).toThrow(/^invalid input: identity: /);
  });

  it("accepts an ID of exactly 63 characters", () => {
    const id = `a${"b".repeat(61)}c`;
    expect(parseIdentityArg(`tenant/${id}`)).toEqual({ kind: "tenant", tenantId: id });
  });
});

describe("trust domains and SPIFFE IDs", () => {
  it("validates trust domains", () => {
    for (const good of ["mvm.local", "example.org", "a", "prod-1.fleet.example"]) expect(isValidTrustDomain(good)).toBe(true);
    for (const bad of ["", "MVM.local", "mvm..local", ".mvm", "mvm.", "-mvm.local", "mvm_local", "mvm/local", "a".repeat(254)]) {
      expect(isValidTrustDomain(bad)).toBe(false);
    }
  });

  it("refuses to format a SPIFFE ID from a bad trust domain or ID", () => {
    expect(() => spiffeId("Bad Domain", { kind: "admin" })).toThrow(PkiError);
    expect(() => spiffeId(TD, { kind: "node", nodeId: "Not_Valid" })).toThrow(PkiError);
  });

  it.each([
    "spiffe://other.domain/admin",
    "spiffe://mvm.localx/admin",
    "spiffe://mvm.local",
    "spiffe://mvm.local/",
    "spiffe://mvm.local/admin/",
    "spiffe://mvm.local//admin",
    "spiffe://mvm.local/admin?x=1",
    "spiffe://mvm.local/admin#frag",
    "spiffe://mvm.local/Admin",
    "SPIFFE://mvm.local/admin",
    "spiffe://MVM.LOCAL/admin",
    "https://mvm.local/admin",
    "spiffe://mvm.local/node/a%2Fb",
    "spiffe://mvm.local/node/a/b",
    "spiffe://mvm.local/tenant/",
    "spiffe://user@mvm.local/admin",
    "spiffe://mvm.local:443/admin",
  ])("does not read an identity from %s", (uri) => {
    expect(identityFromSpiffe(uri, TD)).toBeNull();
  });
});

/** A leaf certificate with exactly the given URI SANs, signed by a fresh throwaway key (signature is irrelevant). */
async function certWithUris(uris: string[]): Promise<X509Certificate> {
  const keys = (await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as {
    privateKey: webcrypto.CryptoKey;
    publicKey: webcrypto.CryptoKey;
  };
  const extensions = uris.length > 0 ? [new x509.SubjectAlternativeNameExtension(uris.map((value) => ({ type: "url" as const, value })))] : [];
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: "CN=test",
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions,
  });
  return new X509Certificate(cert.toString("pem"));
}

describe("identityFromPeerCertificate", () => {
  it("reads the identity of a certificate issued for it", async () => {
    const ca = await createCertificateAuthority({ trustDomain: TD });
    const issued = await issueCertificate(ca, { identity: { kind: "tenant", tenantId: "acme" }, trustDomain: TD, kind: "client" });
    const cert = new X509Certificate(issued.certPem);
    expect(identityFromPeerCertificate(cert, TD)).toEqual({ kind: "tenant", tenantId: "acme" });
    expect(identityFromPeerCertificate(cert, "other.domain")).toBeNull();
  });

  it("returns null without a SPIFFE ID, with several, and for no certificate at all", async () => {
    expect(identityFromPeerCertificate(await certWithUris([]), TD)).toBeNull();
    expect(identityFromPeerCertificate(await certWithUris(["https://example.org/x"]), TD)).toBeNull();
    expect(
      identityFromPeerCertificate(await certWithUris([`spiffe://${TD}/admin`, `spiffe://${TD}/tenant/acme`]), TD),
    ).toBeNull();
    expect(identityFromPeerCertificate(await certWithUris([`spiffe://${TD}/admin`, "spiffe://other.domain/admin"]), TD)).toBeNull();
    // getPeerCertificate() answers {} when the peer sent none.
    expect(identityFromPeerCertificate({} as never, TD)).toBeNull();
    expect(identityFromPeerCertificate(null, TD)).toBeNull();
  });

  it("ignores non-SPIFFE URIs beside a single SPIFFE ID", async () => {
    const cert = await certWithUris(["https://example.org/x", `spiffe://${TD}/coordinator`]);
    expect(identityFromPeerCertificate(cert, TD)).toEqual({ kind: "coordinator" });
  });

  it("is not fooled by a URI that embeds Node's SAN separator", async () => {
    const cert = await certWithUris([`https://x.example/, URI:spiffe://${TD}/admin`]);
    expect(cert.subjectAltName).toContain("URI:");
    expect(identityFromPeerCertificate(cert, TD)).toBeNull();
  });
});
