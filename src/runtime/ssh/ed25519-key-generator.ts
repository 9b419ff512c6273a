// Generates tenant SSH key pairs with node:crypto and encodes them in OpenSSH's own formats, so that the stock
// `ssh -i` client and dropbear's authorized_keys accept them without shelling out to ssh-keygen.

import { generateKeyPairSync, randomBytes } from "node:crypto";
import type { KeyGenerator, SshKeyPair } from "../../core/ports.js";

const KEY_TYPE = "ssh-ed25519";
// openssh-key-v1 pads the private section to the cipher block size; with cipher "none" that is 8.
const UNENCRYPTED_BLOCK_SIZE = 8;

function sshString(data: Buffer | string): Buffer {
  const body = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  const length = Buffer.alloc(4);
  length.writeUInt32BE(body.length);
  return Buffer.concat([length, body]);
}

function uint32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value >>> 0);
  return b;
}

function publicKeyBlob(publicKey: Buffer): Buffer {
  return Buffer.concat([sshString(KEY_TYPE), sshString(publicKey)]);
}

export function encodeOpenSshPublicKey(publicKey: Buffer, comment: string): string {
  return `${KEY_TYPE} ${publicKeyBlob(publicKey).toString("base64")} ${comment}`;
}

export function encodeOpenSshPrivateKey(seed: Buffer, publicKey: Buffer, comment: string): string {
  const check = randomBytes(4).readUInt32BE();
  let privateSection = Buffer.concat([
    uint32(check),
    uint32(check),
    sshString(KEY_TYPE),
    sshString(publicKey),
    // OpenSSH stores the 32-byte seed followed by the public key as the "private key".
    sshString(Buffer.concat([seed, publicKey])),
    sshString(comment),
  ]);
  const padLength = (UNENCRYPTED_BLOCK_SIZE - (privateSection.length % UNENCRYPTED_BLOCK_SIZE)) % UNENCRYPTED_BLOCK_SIZE;
  const padding = Buffer.from(Array.from({ length: padLength }, (_, i) => i + 1));
  privateSection = Buffer.concat([privateSection, padding]);

  const body = Buffer.concat([
    Buffer.from("openssh-key-v1\0", "latin1"),
    sshString("none"),
    sshString("none"),
    sshString(""),
    uint32(1),
    sshString(publicKeyBlob(publicKey)),
    sshString(privateSection),
  ]);
  const lines = body.toString("base64").match(/.{1,70}/g) ?? [];
  return ["-----BEGIN OPENSSH PRIVATE KEY-----", ...lines, "-----END OPENSSH PRIVATE KEY-----", ""].join("\n");
}

export function createEd25519KeyGenerator(): KeyGenerator {
  return {
    ed25519(comment: string): SshKeyPair {
      const { publicKey, privateKey } = generateKeyPairSync("ed25519");
      const jwk = privateKey.export({ format: "jwk" });
      const pub = publicKey.export({ format: "jwk" });
      if (!jwk.d || !pub.x) throw new Error("ed25519 key export returned no key material");
      const seed = Buffer.from(jwk.d, "base64url");
      const raw = Buffer.from(pub.x, "base64url");
      return {
        publicKey: encodeOpenSshPublicKey(raw, comment),
        privateKey: encodeOpenSshPrivateKey(seed, raw, comment),
      };
    },
  };
}
