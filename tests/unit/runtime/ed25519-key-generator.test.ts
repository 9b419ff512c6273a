import { execFileSync } from "node:child_process";
import { createPrivateKey, createPublicKey, sign, verify } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createEd25519KeyGenerator } from "../../../src/runtime/ssh/ed25519-key-generator.js";

const sshKeygen = ["/usr/bin/ssh-keygen", "/bin/ssh-keygen"].find((p) => existsSync(p));

function rawPublicKey(line: string): Buffer {
  const blob = Buffer.from(line.split(" ")[1] ?? "", "base64");
  // string "ssh-ed25519" (4 + 11 bytes), then string key (4 + 32 bytes)
  return blob.subarray(4 + 11 + 4);
}

describe("ed25519 key generator", () => {
  it("writes a public key line in OpenSSH format with the comment", () => {
    const pair = createEd25519KeyGenerator().ed25519("tenant-acme");
    expect(pair.publicKey).toMatch(/^ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+/]{43} tenant-acme$/);
    expect(rawPublicKey(pair.publicKey)).toHaveLength(32);
  });

  it("generates a different key each time", () => {
    const gen = createEd25519KeyGenerator();
    expect(gen.ed25519("a").publicKey).not.toEqual(gen.ed25519("a").publicKey);
  });

  it("encodes a private key whose public half matches, as OpenSSH reads it", (ctx) => {
    if (!sshKeygen) {
      ctx.skip();
      return;
    }
    const pair = createEd25519KeyGenerator().ed25519("tenant-acme");
    const dir = mkdtempSync(join(tmpdir(), "mvm-key-"));
    try {
      const keyPath = join(dir, "id_ed25519");
      writeFileSync(keyPath, pair.privateKey, { mode: 0o600 });
      const derived = execFileSync(sshKeygen, ["-y", "-f", keyPath], { encoding: "utf8" }).trim();
      expect(derived.split(" ").slice(0, 2)).toEqual(pair.publicKey.split(" ").slice(0, 2));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("encodes the seed so that signatures verify against the public key", () => {
    const pair = createEd25519KeyGenerator().ed25519("c");
    const body = Buffer.from(
      pair.privateKey.split("\n").filter((l) => l && !l.startsWith("-----")).join(""),
      "base64",
    );
    // The 64-byte private blob is seed || public key; find it by the public key that follows the seed.
    const pub = rawPublicKey(pair.publicKey);
    const at = body.lastIndexOf(pub);
    const seed = body.subarray(at - 32, at);
    const pkcs8 = Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), seed]);
    const priv = createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" });
    const spki = Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), pub]);
    const pubKey = createPublicKey({ key: spki, format: "der", type: "spki" });
    const sig = sign(null, Buffer.from("hello"), priv);
    expect(verify(null, Buffer.from("hello"), pubKey, sig)).toBe(true);
  });
});
