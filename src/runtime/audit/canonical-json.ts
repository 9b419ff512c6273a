// Canonical JSON: the byte form over which audit entries are hashed. It is a contract with `mvm audit verify` and
// with verifiers written in other languages, so it is defined exactly here and must never change:
//
//   value    = object | array | string | integer | true | false | null
//   object   = "{" members "}" with members sorted by key in Unicode code point order (the order of Python's
//              `sorted()` on str and of Go's byte-wise string comparison on UTF-8), written as key ":" value and
//              separated by "," — no whitespace anywhere; a member whose value is undefined is omitted
//   array    = "[" values in their order, separated by "," "]"
//   string   = as ECMAScript JSON.stringify writes it: `"` and `\` escaped with a backslash; U+0008, U+0009, U+000A,
//              U+000C, U+000D as \b \t \n \f \r; other code points below U+0020 as \u00XX with lower-case hex;
//              lone surrogates as \uXXXX (lower-case hex); everything else, non-ASCII included, as itself
//   integer  = a safe integer (|n| <= 2^53 - 1) in decimal, no exponent, no leading zeros, "-" for negatives, and
//              -0 written as 0. Non-integer numbers are refused: nothing in an audit entry needs them, and their
//              shortest decimal form differs between languages.
//   encoding = UTF-8.
//
// Python equivalent: json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False), for entries (all
// integers; Python's sort also uses code point order).

export class CanonicalJsonError extends Error {
  override readonly name = "CanonicalJsonError";
}

/** Compares strings by Unicode code point (not by UTF-16 code unit, which orders astral characters differently). */
export function compareCodePoints(a: string, b: string): number {
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const ca = ia.next();
    const cb = ib.next();
    if (ca.done === true) return cb.done === true ? 0 : -1;
    if (cb.done === true) return 1;
    const d = (ca.value.codePointAt(0) as number) - (cb.value.codePointAt(0) as number);
    if (d !== 0) return d;
  }
}

export function canonicalJson(value: unknown): string {
  return write(value, "$");
}

function write(value: unknown, path: string): string {
  if (value === null) return "null";
  switch (typeof value) {
    case "boolean":
      return value ? "true" : "false";
    case "string":
      return JSON.stringify(value);
    case "number":
      if (!Number.isSafeInteger(value)) throw new CanonicalJsonError(`${path}: only safe integers are allowed, got ${value}`);
      return Object.is(value, -0) ? "0" : String(value);
    case "object": {
      if (Array.isArray(value)) return `[${value.map((v, i) => write(v, `${path}[${i}]`)).join(",")}]`;
      const proto = Object.getPrototypeOf(value) as unknown;
      if (proto !== Object.prototype && proto !== null) throw new CanonicalJsonError(`${path}: only plain objects are allowed`);
      const keys = Object.keys(value).sort(compareCodePoints);
      const members: string[] = [];
      for (const k of keys) {
        const v = (value as Record<string, unknown>)[k];
        if (v === undefined) continue;
        members.push(`${JSON.stringify(k)}:${write(v, `${path}.${k}`)}`);
      }
      return `{${members.join(",")}}`;
    }
    default:
      throw new CanonicalJsonError(`${path}: ${typeof value} is not a JSON value`);
  }
}
