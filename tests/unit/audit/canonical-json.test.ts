import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { GENESIS_PREV_HASH, checkChainLine, entryHash, parseAuditLine, startChain } from "../../../src/runtime/audit/audit-chain.js";
import { CanonicalJsonError, canonicalJson, compareCodePoints } from "../../../src/runtime/audit/canonical-json.js";

const python = spawnSync("python3", ["-c", "print(1)"], { encoding: "utf8" }).status === 0;

/** What Python's json module makes of `values` in the documented equivalent form. */
function pythonCanonical(values: unknown[]): string[] {
  const script =
    "import json,sys\n" +
    "for v in json.load(sys.stdin):\n" +
    "    sys.stdout.buffer.write(json.dumps(v, sort_keys=True, separators=(',', ':'), ensure_ascii=False).encode('utf-8') + b'\\n')\n";
  const r = spawnSync("python3", ["-c", script], { input: JSON.stringify(values), encoding: "utf8" });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout.split("\n").slice(0, values.length);
}

describe("canonicalJson", () => {
  it("sorts keys recursively and writes no whitespace", () => {
    expect(canonicalJson({ b: 1, a: { d: [3, { z: true, y: null }], c: "x" } })).toBe('{"a":{"c":"x","d":[3,{"y":null,"z":true}]},"b":1}');
  });

  it("orders keys by code point, not by UTF-16 unit", () => {
    // U+FFFF sorts before U+1F600 by code point; by UTF-16 units the emoji's high surrogate (D83D) would come first.
    expect(canonicalJson({ "\u{1F600}": 2, "\uFFFF": 1 })).toBe('{"\uFFFF":1,"\u{1F600}":2}');
    expect(compareCodePoints("a", "ab")).toBeLessThan(0);
    expect(compareCodePoints("b", "a")).toBeGreaterThan(0);
    expect(compareCodePoints("é", "é")).toBe(0);
  });

  it("escapes as specified and keeps non-ASCII as is", () => {
    expect(canonicalJson("a\"b\\c\n\t\b\f\r\u0001\u001fé")).toBe('"a\\"b\\\\c\\n\\t\\b\\f\\r\\u0001\\u001fé"');
    expect(canonicalJson(-0)).toBe("0");
    expect(canonicalJson({ skipped: undefined, kept: 1 })).toBe('{"kept":1}');
  });

  it("refuses values with no single canonical form", () => {
    expect(() => canonicalJson(1.5)).toThrow(CanonicalJsonError);
    expect(() => canonicalJson(2 ** 53)).toThrow(/safe integers/);
    expect(() => canonicalJson({ a: new Date(0) })).toThrow(/plain objects/);
    expect(() => canonicalJson({ a: () => 1 })).toThrow(/not a JSON value/);
  });

  it.skipIf(!python)("fast-check: matches the documented Python equivalent byte for byte", () => {
    const json = fc.letrec((tie) => ({
      value: fc.oneof(
        { depthSize: "small" },
        fc.string({ unit: "binary" }),
        fc.integer({ min: -(2 ** 53 - 1), max: 2 ** 53 - 1 }),
        fc.boolean(),
        fc.constant(null),
        fc.array(tie("value"), { maxLength: 4 }),
        fc.dictionary(fc.string({ unit: "binary" }), tie("value"), { maxKeys: 5 }),
      ),
    })).value;
    // Lone surrogates cannot cross the UTF-8 pipe to Python; they are JS-only territory.
    const wellFormed = json.filter((v) => !/\\ud[89a-f]/i.test(JSON.stringify(v)));
    const samples = fc.sample(wellFormed, { numRuns: 300, seed: 7 });
    expect(samples.map((v) => canonicalJson(v))).toEqual(pythonCanonical(samples));
  });
});

describe("audit chain", () => {
  const base = {
    seq: 1,
    at: "2025-01-02T03:04:05.000Z",
    tenantId: "acme",
    actor: { kind: "admin", id: "spiffe://mvm/admin" },
    action: "tenant_create",
    target: "acme",
    outcome: "success",
    reason: "",
    details: { k: "v" },
    prevHash: GENESIS_PREV_HASH,
  };

  it("hashes the canonical form without `hash`, independent of member order", () => {
    const expected = createHash("sha256").update(canonicalJson(base)).digest("hex");
    expect(entryHash(base)).toBe(expected);
    expect(entryHash({ hash: "ignored", ...base })).toBe(expected);
    const reversed = Object.fromEntries(Object.entries(base).reverse());
    expect(entryHash(reversed)).toBe(expected);
    expect(entryHash({ ...base, reason: "x" })).not.toBe(expected);
  });

  it("parses a good line and rejects a changed one", () => {
    const line = JSON.stringify({ ...base, hash: entryHash(base) });
    expect(parseAuditLine(line)).toMatchObject({ ok: true, entry: { seq: 1, action: "tenant_create" } });
    const changed = JSON.stringify({ ...base, target: "other", hash: entryHash(base) });
    expect(parseAuditLine(changed)).toMatchObject({ ok: false, json: true, reason: expect.stringMatching(/hash does not match/) });
    expect(parseAuditLine('{"seq":1')).toMatchObject({ ok: false, json: false });
    expect(parseAuditLine(JSON.stringify({ ...base, action: "made_up", hash: "0".repeat(64) }))).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/action: not a known audit action/),
    });
  });

  it("checks seq and prev_hash against the previous line", () => {
    const first = { ...base, hash: entryHash(base) };
    const secondBase = { ...base, seq: 2, prevHash: first.hash };
    const second = { ...secondBase, hash: entryHash(secondBase) };
    const chain = startChain();
    expect(checkChainLine(chain, JSON.stringify(first), true, "acme")).toBeNull();
    expect(checkChainLine(chain, JSON.stringify(second), true, "acme")).toBeNull();
    expect(chain.nextSeq).toBe(3);
    const out = startChain();
    expect(checkChainLine(out, JSON.stringify(second), true, "acme")).toMatch(/found seq 2 where seq 1 belongs/);
    expect(checkChainLine(startChain(), JSON.stringify(first), true, "beta")).toMatch(/tenant_id is "acme"/);
    expect(checkChainLine(startChain(), JSON.stringify(first), false, "acme")).toMatch(/incomplete/);
    const forgedBase = { ...base, prevHash: "1".repeat(64) };
    expect(checkChainLine(startChain(), JSON.stringify({ ...forgedBase, hash: entryHash(forgedBase) }), true, "acme")).toMatch(/genesis/);
  });
});
