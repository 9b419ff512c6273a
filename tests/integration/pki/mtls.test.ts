// A real HTTP/2 server with mTLS on 127.0.0.1, certificates minted at test time.

import { mkdtempSync, rmSync } from "node:fs";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls, { type TLSSocket } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCertificateAuthority, issueCertificate, type CertificateAuthority } from "../../../src/platform/pki/cert-authority.js";
import { CertStore, type TlsMaterial } from "../../../src/platform/pki/cert-store.js";
import { identityFromPeerCertificate, type Identity } from "../../../src/platform/pki/identity.js";
import {
  createMtlsClientOptions,
  createMtlsServerOptions,
  reloadServerCertificate,
  tlsClientRefusalReason,
  type MtlsClientOptions,
} from "../../../src/platform/pki/tls-context.js";

const TD = "mvm.local";
const NODE_ID = "n-0a1b2c3d4e5f";
const HOUR = 3_600_000;

let root: string;
let store: CertStore;
let ca: CertificateAuthority;
let server: http2.Http2SecureServer;
let port: number;
/** Streams to /hold, left open until a test finishes them. */
const held: http2.ServerHttp2Stream[] = [];
/** Why the server refused each client handshake, as the agent would log it. */
const refusals: string[] = [];
const sessions = new Set<http2.ClientHttp2Session>();

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "mvm-mtls-"));
  store = CertStore.at(root);
  await store.init({ nodeId: NODE_ID, trustDomain: TD });
  ca = await store.certificateAuthority();
  server = http2.createSecureServer(await createMtlsServerOptions(store));
  server.on("tlsClientError", (e, socket) => refusals.push(tlsClientRefusalReason(e, socket)));
  server.on("stream", (stream, headers) => {
    const socket = stream.session?.socket as TLSSocket;
    const identity = identityFromPeerCertificate(socket.getPeerCertificate(), TD);
    if (headers[":path"] === "/hold") {
      stream.respond({ ":status": 200 });
      stream.write("first\n");
      held.push(stream);
      return;
    }
    stream.respond({ ":status": 200, "content-type": "application/json" });
    stream.end(JSON.stringify({ identity }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  port = (server.address() as AddressInfo).port;
});

afterAll(async () => {
  for (const s of sessions) s.destroy();
  await new Promise((resolve) => server.close(resolve));
  rmSync(root, { recursive: true, force: true });
});

async function clientCert(identity: Identity, options: { issuer?: CertificateAuthority; notBefore?: Date; lifetimeHours?: number; noSpiffe?: boolean } = {}) {
  return issueCertificate(options.issuer ?? ca, {
    identity,
    trustDomain: TD,
    kind: "client",
    notBefore: options.notBefore,
    lifetimeHours: options.lifetimeHours,
    withoutSpiffeIdForTests: options.noSpiffe,
  });
}

function connect(options: http2.SecureClientSessionOptions): http2.ClientHttp2Session {
  const session = http2.connect(`https://127.0.0.1:${port}`, options);
  sessions.add(session);
  session.on("error", () => undefined);
  return session;
}

function clientOptions(cert: { certPem: string; keyPem: string }, extra: Partial<MtlsClientOptions> = {}) {
  return createMtlsClientOptions({ caPem: ca.certPem, certPem: cert.certPem, keyPem: cert.keyPem, servername: "localhost", ...extra });
}

/** One GET on `session`: the body on success, the error when the connection or stream fails. */
function get(session: http2.ClientHttp2Session, path: string, timeoutMs = 5_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("timed out")), timeoutMs);
    const fail = (e: Error) => {
      clearTimeout(timer);
      reject(e);
    };
    session.once("error", fail);
    session.once("close", () => fail(new Error("session closed")));
    const req = session.request({ ":path": path });
    let body = "";
    let responded = false;
    req.setEncoding("utf8");
    req.on("response", () => (responded = true));
    req.on("data", (chunk: string) => (body += chunk));
    req.on("error", fail);
    req.on("close", () => {
      if (!responded) return fail(new Error(`stream closed without a response (code ${req.rstCode})`));
      clearTimeout(timer);
      resolve(body);
    });
    req.end();
  });
}

async function whoami(options: http2.SecureClientSessionOptions): Promise<Identity | null> {
  const session = connect(options);
  try {
    return (JSON.parse(await get(session, "/whoami")) as { identity: Identity | null }).identity;
  } finally {
    session.close();
  }
}

function serverSerial(session: http2.ClientHttp2Session): Promise<string> {
  return new Promise((resolve, reject) => {
    const read = () => resolve((session.socket as TLSSocket).getPeerCertificate().serialNumber);
    if (session.connecting) {
      session.once("connect", read);
      session.once("error", reject);
    } else read();
  });
}

/** A raw TLS handshake; resolves with the negotiated protocol or rejects with the handshake error. */
function handshake(options: tls.ConnectionOptions): Promise<string | null> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: "127.0.0.1", port, ...options });
    socket.once("secureConnect", () => {
      const protocol = socket.getProtocol();
      socket.destroy();
      resolve(protocol);
    });
    socket.once("error", reject);
  });
}

describe("mTLS server", () => {
  it("accepts a valid admin certificate and reads the identity from the peer certificate", async () => {
    const admin = await clientCert({ kind: "admin" });
    expect(await whoami(clientOptions(admin))).toEqual({ kind: "admin" });
    const tenant = await clientCert({ kind: "tenant", tenantId: "acme" });
    expect(await whoami(clientOptions(tenant))).toEqual({ kind: "tenant", tenantId: "acme" });
  });

  it("serves a certificate valid for the names clients use: localhost and 127.0.0.1", async () => {
    const admin = await clientCert({ kind: "admin" });
    expect(await whoami(clientOptions(admin, { servername: "127.0.0.1" }))).toEqual({ kind: "admin" });
    await expect(whoami(clientOptions(admin, { servername: "not-this-node.example" }))).rejects.toThrow(/not in the cert's altnames|Hostname\/IP does not match/);
  });

  it("lets a client insist on the node's SPIFFE identity", async () => {
    const admin = await clientCert({ kind: "admin" });
    const node: Identity = { kind: "node", nodeId: NODE_ID };
    expect(await whoami(clientOptions(admin, { expectServer: { trustDomain: TD, identity: node } }))).toEqual({ kind: "admin" });
    await expect(
      whoami(clientOptions(admin, { expectServer: { trustDomain: TD, identity: { kind: "node", nodeId: "n-ffffffffffff" } } })),
    ).rejects.toThrow(`server certificate is for node/${NODE_ID}, expected node/n-ffffffffffff`);
  });

  it("refuses a client without a certificate", async () => {
    const before = refusals.length;
    const options = clientOptions(await clientCert({ kind: "admin" }));
    delete options.cert;
    delete options.key;
    await expect(whoami(options)).rejects.toThrow();
    await expect.poll(() => refusals.length).toBeGreaterThan(before);
    expect(refusals.at(-1)).toMatch(/peer did not return a certificate/i);
  });

  it("refuses a certificate from another CA", async () => {
    const stranger = await createCertificateAuthority({ trustDomain: TD });
    const cert = await clientCert({ kind: "admin" }, { issuer: stranger });
    await expect(whoami(clientOptions(cert))).rejects.toThrow();
    await expect.poll(() => refusals.at(-1)).toBe("client certificate refused: UNABLE_TO_VERIFY_LEAF_SIGNATURE");
  });

  it("refuses an expired certificate", async () => {
    const cert = await clientCert({ kind: "admin" }, { notBefore: new Date(Date.now() - 48 * HOUR), lifetimeHours: 1 });
    await expect(whoami(clientOptions(cert))).rejects.toThrow();
    await expect.poll(() => refusals.at(-1)).toBe("client certificate refused: CERT_HAS_EXPIRED");
  });

  it("completes the handshake for a certificate without a SPIFFE ID, which grants no identity", async () => {
    const cert = await clientCert({ kind: "admin" }, { noSpiffe: true });
    expect(await whoami(clientOptions(cert))).toBeNull();
  });

  it("refuses a TLS 1.2-only client and speaks TLS 1.3 to the others", async () => {
    const admin = await clientCert({ kind: "admin" });
    const base = { ca: ca.certPem, cert: admin.certPem, key: admin.keyPem, servername: "localhost", ALPNProtocols: ["h2"] };
    await expect(handshake({ ...base, maxVersion: "TLSv1.2" })).rejects.toThrow(/protocol version|unsupported protocol|wrong version/i);
    await expect(handshake(base)).resolves.toBe("TLSv1.3");
  });
});

describe("rotation under load", () => {
  it("keeps an open stream working while new connections get the new certificate", async () => {
    const admin = await clientCert({ kind: "admin" });
    const sessionA = connect(clientOptions(admin));
    const oldSerial = await serverSerial(sessionA);

    // An HTTP/2 stream that is open across the rotation.
    const openStream = new Promise<string>((resolve, reject) => {
      const req = sessionA.request({ ":path": "/hold" });
      let body = "";
      req.setEncoding("utf8");
      req.on("data", (chunk: string) => (body += chunk));
      req.on("end", () => resolve(body));
      req.on("error", reject);
      req.end();
    });
    await expect.poll(() => held.length).toBe(1);

    const rotated = await store.rotate();
    await reloadServerCertificate(server, store);
    expect(rotated.previousSerialNumber).toBe(oldSerial);

    const sessionB = connect(clientOptions(admin));
    const newSerial = await serverSerial(sessionB);
    expect(newSerial).toBe(rotated.serialNumber);
    expect(newSerial).not.toBe(oldSerial);
    expect(JSON.parse(await get(sessionB, "/whoami"))).toEqual({ identity: { kind: "admin" } });

    // The old connection still carries its stream and takes new ones, on the certificate it started with.
    const stream = held.shift() as http2.ServerHttp2Stream;
    stream.end("second\n");
    expect(await openStream).toBe("first\nsecond\n");
    expect(JSON.parse(await get(sessionA, "/whoami"))).toEqual({ identity: { kind: "admin" } });
    expect((sessionA.socket as TLSSocket).getPeerCertificate().serialNumber).toBe(oldSerial);
    expect(sessionA.closed || sessionA.destroyed).toBe(false);

    sessionA.close();
    sessionB.close();
  });

  it("keeps TLS 1.3 only and client certificates mandatory after a reload", async () => {
    await reloadServerCertificate(server, store);
    const admin = await clientCert({ kind: "admin" });
    const noCert = clientOptions(admin);
    delete noCert.cert;
    delete noCert.key;
    await expect(whoami(noCert)).rejects.toThrow();
    const base = { ca: ca.certPem, cert: admin.certPem, key: admin.keyPem, servername: "localhost", ALPNProtocols: ["h2"] };
    await expect(handshake({ ...base, maxVersion: "TLSv1.2" })).rejects.toThrow();
    expect(await whoami(clientOptions(admin))).toEqual({ kind: "admin" });
  });

  it("serves what a custom certificate source hands out", async () => {
    // The source is an interface: the server takes any, e.g. an agent that keeps the material in memory.
    const material: TlsMaterial = await store.serverMaterial();
    const other = await issueCertificate(ca, {
      identity: { kind: "node", nodeId: "n-111111111111" },
      trustDomain: TD,
      kind: "server",
      dnsNames: ["localhost"],
    });
    await reloadServerCertificate(server, { serverMaterial: async () => ({ ...material, certPem: other.certPem, keyPem: other.keyPem }) });
    const admin = await clientCert({ kind: "admin" });
    const session = connect(clientOptions(admin));
    expect(await serverSerial(session)).toBe(other.serialNumber);
    session.close();
    await reloadServerCertificate(server, store);
  });
});
