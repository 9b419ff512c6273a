// TLS settings for the agent's mTLS API and its clients (SPEC §8.1, §8.2): TLS 1.3 only, HTTP/2 by ALPN, and a
// client certificate signed by the node's CA required on every connection. Which identity a verified peer holds
// is read afterwards with identityFromPeerCertificate.

import { isIP } from "node:net";
import type { Http2SecureServer, SecureClientSessionOptions, SecureServerOptions } from "node:http2";
import { checkServerIdentity, type PeerCertificate, type SecureContextOptions, type TLSSocket } from "node:tls";
import type { ServerCertificateSource, TlsMaterial } from "./cert-store.js";
import { formatIdentityArg, identityFromPeerCertificate, sameIdentity, type Identity } from "./identity.js";

const TLS_VERSION = "TLSv1.3";
const ALPN_PROTOCOLS = ["h2"];

/**
 * The parts of the settings that live in the secure context. `setSecureContext` resets every field it is not
 * given, the version bounds included, so a reload must pass all of them again.
 */
function secureContextOptions(material: TlsMaterial): SecureContextOptions {
  return {
    ca: material.caPem,
    cert: material.certPem,
    key: material.keyPem,
    minVersion: TLS_VERSION,
    maxVersion: TLS_VERSION,
  };
}

/**
 * Options for `http2.createSecureServer`: TLS 1.3 only, ALPN h2 only (no HTTP/1 fallback), client certificate
 * required and verified against the node's CA.
 */
export async function createMtlsServerOptions(source: ServerCertificateSource): Promise<SecureServerOptions> {
  return {
    ...secureContextOptions(await source.serverMaterial()),
    requestCert: true,
    rejectUnauthorized: true,
    ALPNProtocols: ALPN_PROTOCOLS,
    allowHTTP1: false,
  };
}

/**
 * Switches a running server to the source's current certificate (after `CertStore.rotate`). Handshakes from now on
 * use it; connections already open, and their streams, carry on with the one they started with.
 */
export async function reloadServerCertificate(server: Http2SecureServer, source: ServerCertificateSource): Promise<void> {
  server.setSecureContext(secureContextOptions(await source.serverMaterial()));
}

export interface MtlsClientOptions {
  caPem: string;
  certPem: string;
  keyPem: string;
  /**
   * The name the server's certificate must carry (a DNS name or an IP address). An IP address is checked against
   * the certificate but not sent as SNI, which may only carry host names.
   */
  servername: string;
  /**
   * When given, the server's certificate must also carry a SPIFFE ID in this trust domain, and when `identity` is
   * given, exactly that identity (e.g. the node the client meant to reach).
   */
  expectServer?: { trustDomain: string; identity?: Identity };
}

/** Options for `http2.connect` / `tls.connect` to an mTLS endpoint: TLS 1.3 only, ALPN h2, the client's certificate. */
export function createMtlsClientOptions(options: MtlsClientOptions): SecureClientSessionOptions {
  const expect = options.expectServer;
  const servername = options.servername;
  return {
    ca: options.caPem,
    cert: options.certPem,
    key: options.keyPem,
    minVersion: TLS_VERSION,
    maxVersion: TLS_VERSION,
    ALPNProtocols: ALPN_PROTOCOLS,
    rejectUnauthorized: true,
    ...(isIP(servername) === 0 ? { servername } : {}),
    checkServerIdentity: (_host: string, cert: PeerCertificate): Error | undefined => {
      const nameError = checkServerIdentity(servername, cert);
      if (nameError !== undefined || expect === undefined) return nameError;
      const actual = identityFromPeerCertificate(cert, expect.trustDomain);
      if (actual === null) {
        return new Error(`server certificate carries no SPIFFE identity in trust domain ${expect.trustDomain}`);
      }
      if (expect.identity !== undefined && !sameIdentity(actual, expect.identity)) {
        return new Error(
          `server certificate is for ${formatIdentityArg(actual)}, expected ${formatIdentityArg(expect.identity)}`,
        );
      }
      return undefined;
    },
  };
}

/**
 * Why the server refused a client's handshake, for the log. When a client certificate fails verification, Node
 * closes the connection without an alert and reports only "socket hang up"; the verification error (such as
 * CERT_HAS_EXPIRED or UNABLE_TO_VERIFY_LEAF_SIGNATURE) is left on the socket, so it is read from there. Use from a
 * `tlsClientError` listener.
 */
export function tlsClientRefusalReason(error: Error, socket: TLSSocket): string {
  const verifyError: unknown = socket.authorizationError;
  if (typeof verifyError === "string" && verifyError !== "") return `client certificate refused: ${verifyError}`;
  if (verifyError instanceof Error) return `client certificate refused: ${verifyError.message}`;
  return error.message;
}
