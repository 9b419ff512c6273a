// The node's metadata token key: an Ed25519 pair under `<data root>/metadata/`, made at first use. Tokens are JWTs
// (EdDSA) that anyone holding the public key (served beside them, and on disk 0644) can verify.

import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, type KeyObject } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { MetadataTokenClaims, MetadataTokenSigner } from "../../core/use-cases/metadata.js";
import { writeFileAtomic } from "../store/atomic-file.js";
import { errnoCode } from "../store/process-identity.js";

export const TOKEN_KEY_FILE = "token-signing-key.pem";
export const TOKEN_PUBLIC_KEY_FILE = "token-signing-key.pub.pem";

const base64url = (data: string | Buffer) => Buffer.from(data).toString("base64url");

export function jwtSigner(privateKey: KeyObject): MetadataTokenSigner {
  const publicPem = createPublicKey(privateKey).export({ type: "spki", format: "pem" }).toString();
  const header = base64url(JSON.stringify({ alg: "EdDSA", typ: "JWT" }));
  return {
    sign(claims: MetadataTokenClaims): string {
      const signingInput = `${header}.${base64url(JSON.stringify(claims))}`;
      return `${signingInput}.${base64url(sign(null, Buffer.from(signingInput), privateKey))}`;
    },
    publicKeyPem: () => publicPem,
  };
}

/** The signer of `dir`'s key, which is made (0600, its public half 0644) when there is none. */
export async function loadTokenSigner(dir: string): Promise<MetadataTokenSigner> {
  const keyPath = join(dir, TOKEN_KEY_FILE);
  try {
    return jwtSigner(createPrivateKey(await readFile(keyPath, "utf8")));
  } catch (e) {
    if (errnoCode(e) !== "ENOENT") throw e;
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  // The public half first: a key file is only ever found with its public half beside it.
  await writeFileAtomic(join(dir, TOKEN_PUBLIC_KEY_FILE), publicKey.export({ type: "spki", format: "pem" }).toString(), { mode: 0o644 });
  await writeFileAtomic(keyPath, privateKey.export({ type: "pkcs8", format: "pem" }).toString(), { mode: 0o600 });
  return jwtSigner(privateKey);
}
