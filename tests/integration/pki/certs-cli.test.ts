// `mvm agent certs …` in process, mounted under an `agent` command the way run-cli.ts mounts it, against a real data
// root on disk.

import { X509Certificate } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import yargs, { type Argv } from "yargs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isMvmError, type MvmError } from "../../../src/core/errors.js";
import { registerCertsCommands } from "../../../src/cli/commands/certs.js";
import type { CliContext, GlobalOptions } from "../../../src/cli/context.js";
import type { NodeRuntime } from "../../../src/agent/node-runtime-types.js";
import { EXIT_CODES } from "../../../src/cli/exit-codes.js";
import { parseOutputFormat } from "../../../src/cli/output.js";
import { createCertificateAuthority } from "../../../src/platform/pki/cert-authority.js";
import { createEd25519KeyGenerator } from "../../../src/runtime/ssh/ed25519-key-generator.js";
import { FsStore } from "../../../src/runtime/store/fs-store.js";
import { createRandomIds } from "../../../src/runtime/system/random-ids.js";
import { createSystemClock } from "../../../src/runtime/system/system-clock.js";

let root: string;
let stdout: string;
let stderr: string;

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), "mvm-certs-cli-"));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

function context(): CliContext {
  return {
    deps: async () => ({
      store: await FsStore.open(root),
      clock: createSystemClock(),
      ids: createRandomIds(),
      keys: createEd25519KeyGenerator(),
      networkPool: { cidr: "10.240.0.0/12", prefixLen: 24 },
      // The certs commands use only the store; the rest of the node runtime is not needed here.
    }) as unknown as NodeRuntime,
    write: (text) => (stdout += text),
    warn: (text) => (stderr += text),
    env: process.env,
  };
}

/** Runs `mvm <args>`; resolves with the error thrown (as the CLI would report it), or null on success. */
async function mvm(...args: string[]): Promise<MvmError | null> {
  stdout = "";
  stderr = "";
  const ctx = context();
  const parser = yargs(args)
    .option("output", { alias: "o", type: "string", default: "table" })
    .middleware((a) => {
      a.output = parseOutputFormat(a.output);
    }, true)
    .strict()
    .fail((message, error) => {
      throw error ?? new Error(message);
    }) as unknown as Argv<GlobalOptions>;
  try {
    await parser.command("agent", "the node agent", (y) => registerCertsCommands(y, ctx).demandCommand(1)).parseAsync();
    return null;
  } catch (e) {
    if (isMvmError(e)) return e;
    throw e;
  }
}

const json = <T>(): T => JSON.parse(stdout) as T;

async function nodeId(): Promise<string> {
  return (await (await FsStore.open(root)).node()).nodeId;
}

describe("mvm agent certs", () => {
  it("init creates the CA and a certificate for this node's ID", async () => {
    expect(await mvm("agent", "certs", "init", "--san", "node1.example.org", "-o", "json")).toBeNull();
    const result = json<any>();
    expect(result.ca).toBe("created");
    expect(result.trustDomain).toBe("mvm.local");
    expect(result.certificates.map((c: any) => c.role)).toEqual(["ca", "node"]);
    expect(result.certificates[1].identity).toBe(`node/${await nodeId()}`);
    expect(result.certificates[1].dnsNames).toContain("node1.example.org");
    expect(stderr).toContain("(CA created)");
    expect(statSync(join(root, "certs/ca-key.pem")).mode & 0o777).toBe(0o600);
  });

  it("status prints a table, json and yaml", async () => {
    await mvm("agent", "certs", "init", "--node-id", "n-000000000001", "--trust-domain", "fleet.example");
    expect(await mvm("agent", "certs", "status")).toBeNull();
    expect(stdout).toContain("ROLE");
    expect(stdout).toContain("node/n-000000000001");
    expect(stdout).toContain("spiffe://fleet.example");
    expect(await mvm("agent", "certs", "status", "-o", "json")).toBeNull();
    const status = json<any>();
    expect(status.trustDomain).toBe("fleet.example");
    expect(status.certificates[1]).toMatchObject({ chainsToCa: true, keyMatches: true, expired: false });
    expect(await mvm("agent", "certs", "status", "-o", "yaml")).toBeNull();
    expect(stdout).toContain("trustDomain: fleet.example");
  });

  it("issue writes a client certificate for the identity asked for", async () => {
    await mvm("agent", "certs", "init");
    const out = join(root, "creds");
    expect(await mvm("agent", "certs", "issue", "--identity", "tenant/acme", "--out", out, "--lifetime-hours", "12", "-o", "json")).toBeNull();
    const issued = json<any>();
    expect(issued).toMatchObject({ identity: "tenant/acme", spiffeId: "spiffe://mvm.local/tenant/acme", kind: "client" });
    const cert = new X509Certificate(readFileSync(join(out, "tenant-acme.pem")));
    expect(cert.verify(new X509Certificate(readFileSync(join(out, "ca.pem"))).publicKey)).toBe(true);
    expect(new Date(cert.validTo).getTime() - Date.now()).toBeLessThanOrEqual(12 * 3_600_000);
    expect(new Date(cert.validTo).getTime() - Date.now()).toBeGreaterThan(11 * 3_600_000);
    expect(statSync(join(out, "tenant-acme-key.pem")).mode & 0o777).toBe(0o600);
  });

  it("issue refuses bad input, naming every flag, before writing anything", async () => {
    await mvm("agent", "certs", "init");
    const e = await mvm("agent", "certs", "issue", "--identity", "root");
    expect(e?.kind).toBe("invalid");
    expect(EXIT_CODES[e!.kind]).toBe(2);
    expect(e?.violations.map((v) => v.field)).toEqual(["--identity", "--out"]);
    expect(e?.message).toMatch(/^invalid input: --identity: must be admin, coordinator, node\/<id> or tenant\/<id>, where <id> must be 1-63 characters/);
    const san = await mvm("agent", "certs", "issue", "--identity", "admin", "--out", join(root, "x"), "--san", "a.example");
    expect(san?.violations[0]?.field).toBe("--san");
    const name = await mvm("agent", "certs", "issue", "--identity", "admin", "--out", join(root, "x"), "--name", "Bad/Name");
    expect(name?.violations[0]?.field).toBe("--name");
    const lifetime = await mvm("agent", "certs", "issue", "--identity", "admin", "--out", join(root, "x"), "--lifetime-hours", "abc");
    expect(lifetime?.violations[0]?.field).toBe("--lifetime-hours");
    expect(existsSync(join(root, "x"))).toBe(false);
  });

  it("rotate renews the node certificate and keeps the CA", async () => {
    await mvm("agent", "certs", "init");
    const caBefore = readFileSync(join(root, "certs/ca.pem"), "utf8");
    const serialBefore = new X509Certificate(readFileSync(join(root, "certs/node.pem"))).serialNumber;
    expect(await mvm("agent", "certs", "rotate", "-o", "json")).toBeNull();
    const rotated = json<any>();
    expect(rotated.previousSerialNumber).toBe(serialBefore);
    expect(rotated.serialNumber).not.toBe(serialBefore);
    expect(new X509Certificate(readFileSync(join(root, "certs/node.pem"))).serialNumber).toBe(rotated.serialNumber);
    expect(readFileSync(join(root, "certs/ca.pem"), "utf8")).toBe(caBefore);
  });

  it("init imports a CA given as files, and needs both of them", async () => {
    const ca = await createCertificateAuthority({ trustDomain: "corp.example" });
    writeFileSync(join(root, "ca.crt"), ca.certPem);
    writeFileSync(join(root, "ca.key"), ca.keyPem);
    const half = await mvm("agent", "certs", "init", "--ca-cert", join(root, "ca.crt"));
    expect(half?.violations[0]?.field).toBe("--ca-key");
    const missing = await mvm("agent", "certs", "init", "--ca-cert", join(root, "nope.crt"), "--ca-key", join(root, "ca.key"));
    expect(missing?.violations[0]).toMatchObject({ field: "--ca-cert" });
    expect(missing?.violations[0]?.rule).toContain("ENOENT");
    expect(await mvm("agent", "certs", "init", "--ca-cert", join(root, "ca.crt"), "--ca-key", join(root, "ca.key"), "-o", "json")).toBeNull();
    expect(json<any>()).toMatchObject({ ca: "imported", trustDomain: "corp.example" });
    expect(readFileSync(join(root, "certs/ca.pem"), "utf8")).toBe(ca.certPem);
  });

  it("maps store errors to the CLI's exit codes", async () => {
    const before = await mvm("agent", "certs", "status");
    expect(before?.kind).toBe("failed_precondition");
    expect(EXIT_CODES[before!.kind]).toBe(5);
    expect(before?.message).toContain("mvm agent certs init");
    await mvm("agent", "certs", "init");
    const again = await mvm("agent", "certs", "init");
    expect(again?.kind).toBe("already_exists");
    expect(EXIT_CODES[again!.kind]).toBe(4);
  });
});
