import { X509Certificate } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createCertificateAuthority, issueCertificate, keyMatchesCertificate } from "../../../src/platform/pki/cert-authority.js";
import { CertStore } from "../../../src/platform/pki/cert-store.js";
import { identityFromPeerCertificate } from "../../../src/platform/pki/identity.js";
import { PkiError } from "../../../src/platform/pki/pki-error.js";

const NODE_ID = "n-0a1b2c3d4e5f";
let root: string;
let store: CertStore;

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), "mvm-certs-"));
  store = CertStore.at(root);
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

const read = (path: string) => readFileSync(path, "utf8");
const mode = (path: string) => statSync(path).mode & 0o777;

async function thrown(work: () => Promise<unknown>): Promise<PkiError> {
  try {
    await work();
  } catch (e) {
    expect(e).toBeInstanceOf(PkiError);
    return e as PkiError;
  }
  throw new Error("expected a PkiError");
}

describe("init", () => {
  it("creates the CA and a node server certificate whose names include what clients dial", async () => {
    const result = await store.init({ nodeId: NODE_ID, hostName: "Host-1.Example.org", extraSans: ["api.example.org", "192.0.2.10"] });
    expect(result.ca).toBe("created");
    const p = store.paths;
    expect(read(p.trustDomain)).toBe("mvm.local\n");
    expect(mode(p.dir)).toBe(0o700);
    expect(mode(p.caKey)).toBe(0o600);
    expect(mode(p.nodeKey)).toBe(0o600);
    expect(mode(p.caCert)).toBe(0o644);
    expect(mode(p.nodeCert)).toBe(0o644);
    expect(existsSync(p.nodeCertNext) || existsSync(p.nodeKeyNext)).toBe(false);

    const ca = new X509Certificate(read(p.caCert));
    const node = new X509Certificate(read(p.nodeCert));
    expect(node.verify(ca.publicKey)).toBe(true);
    expect(keyMatchesCertificate(read(p.nodeKey), node)).toBe(true);
    expect(identityFromPeerCertificate(node, "mvm.local")).toEqual({ kind: "node", nodeId: NODE_ID });
    for (const host of ["localhost", "host-1.example.org", "api.example.org"]) expect(node.checkHost(host)).toBe(host);
    for (const ip of ["127.0.0.1", "::1", "192.0.2.10"]) expect(node.checkIP(ip)).toBe(ip);

    const [caRow, nodeRow] = result.status.certificates;
    expect(caRow).toMatchObject({ role: "ca", isCa: true, chainsToCa: true, keyMatches: true, uris: ["spiffe://mvm.local"] });
    expect(nodeRow).toMatchObject({
      role: "node",
      identity: `node/${NODE_ID}`,
      uris: [`spiffe://mvm.local/node/${NODE_ID}`],
      dnsNames: ["localhost", "host-1.example.org", "api.example.org"],
      chainsToCa: true,
      keyMatches: true,
      expired: false,
      renewalDue: false,
      daysLeft: 29,
    });
    expect(nodeRow?.ipAddresses).toHaveLength(3);
  });

  it("uses the trust domain asked for", async () => {
    await store.init({ nodeId: NODE_ID, trustDomain: "fleet.example" });
    expect(read(store.paths.trustDomain)).toBe("fleet.example\n");
    const status = await store.status();
    expect(status.trustDomain).toBe("fleet.example");
    expect(status.certificates[1]?.uris).toEqual([`spiffe://fleet.example/node/${NODE_ID}`]);
  });

  it("refuses a second init instead of replacing the CA", async () => {
    await store.init({ nodeId: NODE_ID });
    const before = read(store.paths.caCert);
    const e = await thrown(() => store.init({ nodeId: NODE_ID }));
    expect(e.kind).toBe("already_exists");
    expect(e.message).toContain("certs rotate");
    expect(read(store.paths.caCert)).toBe(before);
  });

  it("imports a CA, taking its trust domain", async () => {
    const ca = await createCertificateAuthority({ trustDomain: "imported.example" });
    const result = await store.init({ nodeId: NODE_ID, importCa: { certPem: ca.certPem, keyPem: ca.keyPem } });
    expect(result.ca).toBe("imported");
    expect(read(store.paths.caCert)).toBe(ca.certPem);
    expect(result.status.trustDomain).toBe("imported.example");
    expect(new X509Certificate(read(store.paths.nodeCert)).verify(ca.certificate.publicKey)).toBe(true);
  });

  it("refuses an imported CA whose trust domain differs from the one asked for, writing nothing", async () => {
    const ca = await createCertificateAuthority({ trustDomain: "imported.example" });
    const e = await thrown(() =>
      store.init({ nodeId: NODE_ID, trustDomain: "mvm.local", importCa: { certPem: ca.certPem, keyPem: ca.keyPem } }),
    );
    expect(e.kind).toBe("failed_precondition");
    expect(existsSync(store.paths.dir)).toBe(false);
  });

  it("refuses bad input before writing anything", async () => {
    expect((await thrown(() => store.init({ nodeId: "Bad_Id" }))).violations[0]?.field).toBe("--node-id");
    expect((await thrown(() => store.init({ nodeId: NODE_ID, trustDomain: "x..y" }))).violations[0]?.field).toBe("--trust-domain");
    expect((await thrown(() => store.init({ nodeId: NODE_ID, extraSans: ["a b"] }))).violations[0]?.field).toBe("--san");
    expect(existsSync(store.paths.dir)).toBe(false);
  });

  it("reuses the CA an interrupted init left, and refuses a CA missing its key", async () => {
    await store.init({ nodeId: NODE_ID });
    const caPem = read(store.paths.caCert);
    unlinkSync(store.paths.nodeCert);
    unlinkSync(store.paths.nodeKey);
    const again = await store.init({ nodeId: NODE_ID });
    expect(again.ca).toBe("existing");
    expect(read(store.paths.caCert)).toBe(caPem);

    unlinkSync(store.paths.nodeCert);
    unlinkSync(store.paths.caKey);
    const e = await thrown(() => store.init({ nodeId: NODE_ID }));
    expect(e.kind).toBe("failed_precondition");
    expect(e.message).toContain("ca-key.pem is missing");
    expect(read(store.paths.caCert)).toBe(caPem);
  });

  it("reports a store that was never initialised", async () => {
    const e = await thrown(() => store.status());
    expect(e.kind).toBe("failed_precondition");
    expect(e.message).toContain("mvm agent certs init");
    await thrown(() => store.rotate());
    await thrown(() => store.serverMaterial());
  });
});

describe("rotate", () => {
  it("renews the node certificate under the same CA: same identity and names, new key and serial", async () => {
    await store.init({ nodeId: NODE_ID, hostName: "host-1", extraSans: ["10.1.2.3"] });
    const caPem = read(store.paths.caCert);
    const caKey = read(store.paths.caKey);
    const oldCert = new X509Certificate(read(store.paths.nodeCert));
    const oldKey = read(store.paths.nodeKey);

    const rotated = await store.rotate();

    expect(read(store.paths.caCert)).toBe(caPem);
    expect(read(store.paths.caKey)).toBe(caKey);
    const newCert = new X509Certificate(read(store.paths.nodeCert));
    const newKey = read(store.paths.nodeKey);
    expect(newCert.serialNumber).not.toBe(oldCert.serialNumber);
    expect(rotated.previousSerialNumber).toBe(oldCert.serialNumber);
    expect(rotated.serialNumber).toBe(newCert.serialNumber);
    expect(newKey).not.toBe(oldKey);
    expect(keyMatchesCertificate(newKey, newCert)).toBe(true);
    expect(newCert.verify(new X509Certificate(caPem).publicKey)).toBe(true);
    expect(newCert.subjectAltName).toBe(oldCert.subjectAltName);
    expect(newCert.subject).toBe(oldCert.subject);
    expect(identityFromPeerCertificate(newCert, "mvm.local")).toEqual({ kind: "node", nodeId: NODE_ID });
    expect(mode(store.paths.nodeKey)).toBe(0o600);
    expect(rotated.caPem).toBe(caPem);
  });

  it("takes a lifetime", async () => {
    await store.init({ nodeId: NODE_ID });
    const rotated = await store.rotate({ lifetimeHours: 2 });
    expect(Math.round((rotated.notAfter.getTime() - Date.now()) / 60_000)).toBe(120);
    const status = await store.status();
    expect(status.certificates[1]?.renewalDue).toBe(false);
    expect((await store.status(new Date(Date.now() + 100 * 60_000))).certificates[1]?.renewalDue).toBe(true);
    expect((await store.status(new Date(Date.now() + 3 * 3_600_000))).certificates[1]?.expired).toBe(true);
  });
});

describe("a node certificate change interrupted by a crash", () => {
  let oldPair: { cert: string; key: string };
  let newPair: { certPem: string; keyPem: string };

  beforeEach(async () => {
    await store.init({ nodeId: NODE_ID });
    oldPair = { cert: read(store.paths.nodeCert), key: read(store.paths.nodeKey) };
    const ca = await store.certificateAuthority();
    newPair = await issueCertificate(ca, { identity: { kind: "node", nodeId: NODE_ID }, trustDomain: "mvm.local", kind: "server" });
  });

  const current = async () => {
    const m = await store.serverMaterial();
    expect(existsSync(store.paths.nodeCertNext)).toBe(false);
    expect(existsSync(store.paths.nodeKeyNext)).toBe(false);
    expect(keyMatchesCertificate(m.keyPem, new X509Certificate(m.certPem))).toBe(true);
    return m;
  };

  it("is finished when the new pair was complete", async () => {
    writeFileSync(store.paths.nodeKeyNext, newPair.keyPem);
    writeFileSync(store.paths.nodeCertNext, newPair.certPem);
    expect((await current()).certPem).toBe(newPair.certPem);
  });

  it("is finished when the key was already renamed into place", async () => {
    writeFileSync(store.paths.nodeKey, newPair.keyPem);
    writeFileSync(store.paths.nodeCertNext, newPair.certPem);
    expect((await current()).certPem).toBe(newPair.certPem);
  });

  it("is dropped when only the new key was written", async () => {
    writeFileSync(store.paths.nodeKeyNext, newPair.keyPem);
    expect((await current()).certPem).toBe(oldPair.cert);
  });

  it("is dropped when the pending pair does not match", async () => {
    writeFileSync(store.paths.nodeKeyNext, oldPair.key);
    writeFileSync(store.paths.nodeCertNext, newPair.certPem);
    const m = await current();
    expect(m.certPem).toBe(oldPair.cert);
    expect(m.keyPem).toBe(oldPair.key);
  });
});

describe("issueToDirectory", () => {
  it("writes the certificate, its key (0600) and a copy of the CA", async () => {
    await store.init({ nodeId: NODE_ID });
    const out = join(root, "out", "admin-creds");
    const files = await store.issueToDirectory({ identity: { kind: "tenant", tenantId: "acme" }, outDir: out });
    expect(files.certPath).toBe(join(out, "tenant-acme.pem"));
    expect(files.keyPath).toBe(join(out, "tenant-acme-key.pem"));
    expect(files.caPath).toBe(join(out, "ca.pem"));
    expect(files.identity).toBe("tenant/acme");
    expect(files.kind).toBe("client");
    expect(mode(files.keyPath)).toBe(0o600);
    expect(mode(out)).toBe(0o700);
    expect(read(files.caPath)).toBe(read(store.paths.caCert));
    const cert = new X509Certificate(read(files.certPath));
    expect(cert.verify(new X509Certificate(read(files.caPath)).publicKey)).toBe(true);
    expect(keyMatchesCertificate(read(files.keyPath), cert)).toBe(true);
    expect(cert.serialNumber).toBe(files.serialNumber);
    expect(cert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.2"]);
  });

  it("takes a name, a server kind with names, and refuses a bad name", async () => {
    await store.init({ nodeId: NODE_ID });
    const files = await store.issueToDirectory({
      identity: { kind: "coordinator" },
      outDir: root,
      name: "coord",
      kind: "server",
      sans: ["coord.example.org"],
    });
    const cert = new X509Certificate(read(files.certPath));
    expect(files.certPath).toBe(join(root, "coord.pem"));
    expect(cert.checkHost("coord.example.org")).toBe("coord.example.org");
    expect(cert.keyUsage).toContain("1.3.6.1.5.5.7.3.1");
    const e = await thrown(() => store.issueToDirectory({ identity: { kind: "admin" }, outDir: root, name: "../evil" }));
    expect(e.violations[0]?.field).toBe("--name");
    expect(existsSync(join(root, "../evil.pem"))).toBe(false);
  });

  it("never writes over the CA key or the node's own certificates", async () => {
    await store.init({ nodeId: NODE_ID });
    const caKey = read(store.paths.caKey);
    const nodeCert = read(store.paths.nodeCert);
    const asCa = await thrown(() => store.issueToDirectory({ identity: { kind: "admin" }, outDir: join(root, "out"), name: "ca" }));
    expect(asCa.violations[0]?.field).toBe("--name");
    const intoStore = await thrown(() => store.issueToDirectory({ identity: { kind: "admin" }, outDir: store.paths.dir, name: "node" }));
    expect(intoStore.violations.map((v) => v.field)).toEqual(["--out"]);
    const viaDots = await thrown(() => store.issueToDirectory({ identity: { kind: "admin" }, outDir: join(store.paths.dir, "..", "certs") }));
    expect(viaDots.violations[0]?.field).toBe("--out");
    expect(read(store.paths.caKey)).toBe(caKey);
    expect(read(store.paths.nodeCert)).toBe(nodeCert);
  });
});
