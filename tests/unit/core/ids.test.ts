import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import {
  ID_RULE,
  INSTANCE_ID_MAX_ATTEMPTS,
  INSTANCE_ID_RULE,
  assertId,
  formatInstancePath,
  formatPoolPath,
  idViolations,
  instanceIdViolations,
  newInstanceId,
  parseInstancePath,
  parsePoolPath,
} from "../../../src/core/ids.js";

const ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-".split("");
const EDGE_CHARS = ID_CHARS.filter((c) => c !== "-");

/** Valid IDs built from their definition: an alphanumeric first and last char, anything allowed between. */
const validId = fc.oneof(
  fc.constantFrom(...EDGE_CHARS),
  fc
    .tuple(
      fc.constantFrom(...EDGE_CHARS),
      fc.array(fc.constantFrom(...ID_CHARS), { maxLength: 61 }),
      fc.constantFrom(...EDGE_CHARS),
    )
    .map(([first, middle, last]) => first + middle.join("") + last),
);

const validInstanceId = fc
  .array(fc.constantFrom(..."0123456789abcdef".split("")), { minLength: 8, maxLength: 8 })
  .map((hex) => `i-${hex.join("")}`);

function caught(fn: () => unknown): MvmError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(MvmError);
    return e as MvmError;
  }
  throw new Error("expected an error, none was thrown");
}

describe("tenant and pool IDs", () => {
  it.each([
    ["..", "dot-dot"],
    ["a/b", "slash"],
    ["/", "lone slash"],
    ["Tenant", "upper case"],
    ["-tenant", "leading hyphen"],
    ["tenant-", "trailing hyphen"],
    ["-", "lone hyphen"],
    ["a".repeat(64), "64 characters"],
    ["", "empty"],
    ["te nant", "space"],
    ["tenant_1", "underscore"],
    ["tenant.1", "dot"],
    ["tén", "non-ascii"],
    ["a\n", "trailing newline"],
  ])("rejects %j (%s) naming the field", (value) => {
    expect(idViolations(value, "tenants[0].tenant_id")).toEqual([{ field: "tenants[0].tenant_id", rule: ID_RULE }]);
    const err = caught(() => assertId(value, "pool_id"));
    expect(err.kind).toBe("invalid");
    expect(err.violations).toEqual([{ field: "pool_id", rule: ID_RULE }]);
    expect(err.message).toContain("pool_id: must be 1-63 characters");
  });

  it.each([[undefined], [null], [42], [{}], [["a"]]])("rejects the non-string %j", (value) => {
    expect(idViolations(value, "tenant_id")).toEqual([{ field: "tenant_id", rule: ID_RULE }]);
  });

  it("accepts boundary IDs", () => {
    for (const value of ["a", "0", "a-b", "a--b", "a".repeat(63), "9tenant9"]) {
      expect(idViolations(value, "tenant_id")).toEqual([]);
      expect(() => assertId(value, "tenant_id")).not.toThrow();
    }
  });

  it("accepts every ID built from the rule", () => {
    fc.assert(
      fc.property(validId, (id) => {
        expect(id.length).toBeGreaterThanOrEqual(1);
        expect(id.length).toBeLessThanOrEqual(63);
        expect(idViolations(id, "tenant_id")).toEqual([]);
      }),
    );
  });

  it("rejects any ID containing a character outside [a-z0-9-]", () => {
    const foreignChar = fc
      .string({ minLength: 1, maxLength: 1, unit: "binary" })
      .filter((c) => !ID_CHARS.includes(c));
    fc.assert(
      fc.property(validId, foreignChar, fc.nat(), (id, bad, at) => {
        const i = at % (id.length + 1);
        const spoiled = id.slice(0, i) + bad + id.slice(i);
        expect(idViolations(spoiled, "pool_id")).toEqual([{ field: "pool_id", rule: ID_RULE }]);
      }),
    );
  });

  it("rejects any ID longer than 63 characters", () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...EDGE_CHARS), { minLength: 64, maxLength: 200 }), (chars) => {
        expect(idViolations(chars.join(""), "pool_id")).toHaveLength(1);
      }),
    );
  });
});

describe("instance IDs", () => {
  it("accepts i- and 8 lowercase hex digits", () => {
    fc.assert(
      fc.property(validInstanceId, (id) => {
        expect(instanceIdViolations(id, "instance_id")).toEqual([]);
      }),
    );
  });

  it.each([["i-0123456"], ["i-012345678"], ["i-0123456G"], ["i-ABCDEF01"], ["x-01234567"], ["01234567"], [""], [7]])(
    "rejects %j",
    (value) => {
      expect(instanceIdViolations(value, "instance_id")).toEqual([{ field: "instance_id", rule: INSTANCE_ID_RULE }]);
    },
  );

  it("generates a well-formed ID from the random source", () => {
    const id = newInstanceId((n) => "ab".repeat(n), () => false);
    expect(id).toBe("i-abababab");
  });

  it("retries when the candidate is taken", () => {
    const candidates = ["00000000", "00000001", "0000beef"];
    let calls = 0;
    const taken = new Set(["i-00000000", "i-00000001"]);
    const id = newInstanceId(
      (n) => {
        expect(n).toBe(4);
        return candidates[calls++] as string;
      },
      (candidate) => taken.has(candidate),
    );
    expect(id).toBe("i-0000beef");
    expect(calls).toBe(3);
  });

  it("gives up with exhausted after a bounded number of collisions", () => {
    let calls = 0;
    const err = caught(() =>
      newInstanceId(
        () => {
          calls++;
          return "deadbeef";
        },
        () => true,
      ),
    );
    expect(err.kind).toBe("exhausted");
    expect(calls).toBe(INSTANCE_ID_MAX_ATTEMPTS);
  });

  it("refuses a random source that returns something other than 8 hex digits", () => {
    expect(caught(() => newInstanceId(() => "../etc", () => false)).kind).toBe("internal");
  });
});

describe("paths", () => {
  it("parses tenant/pool and tenant/pool/instance", () => {
    expect(parsePoolPath("acme/web")).toEqual({ tenantId: "acme", poolId: "web" });
    expect(parseInstancePath("acme/web/i-0a1b2c3d")).toEqual({
      tenantId: "acme",
      poolId: "web",
      instanceId: "i-0a1b2c3d",
    });
  });

  it("round-trips every valid path", () => {
    fc.assert(
      fc.property(validId, validId, validInstanceId, (tenantId, poolId, instanceId) => {
        expect(parsePoolPath(formatPoolPath({ tenantId, poolId }))).toEqual({ tenantId, poolId });
        const path = { tenantId, poolId, instanceId };
        expect(parseInstancePath(formatInstancePath(path))).toEqual(path);
      }),
    );
  });

  it.each([
    ["acme", "got 1 segment"],
    ["acme/web/extra", "got 3 segments"],
    ["", "got an empty string"],
    ["acme/", "segment 2 is empty"],
    ["/web", "segment 1 is empty"],
    ["acme//web", "got 3 segments"],
  ])("rejects the pool path %j (%s)", (path, detail) => {
    const err = caught(() => parsePoolPath(path, "pool"));
    expect(err.kind).toBe("invalid");
    expect(err.violations).toHaveLength(1);
    expect(err.violations[0]?.field).toBe("pool");
    expect(err.violations[0]?.rule).toBe(`must be <tenant>/<pool> (${detail})`);
  });

  it.each([
    ["acme/web", "got 2 segments"],
    ["acme/web/i-01234567/x", "got 4 segments"],
    ["acme/web/", "segment 3 is empty"],
    ["acme//i-01234567", "segment 2 is empty"],
  ])("rejects the instance path %j (%s)", (path, detail) => {
    const err = caught(() => parseInstancePath(path));
    expect(err.violations).toEqual([{ field: "path", rule: `must be <tenant>/<pool>/<instance> (${detail})` }]);
    expect(err.message).toContain(`path: must be <tenant>/<pool>/<instance> (${detail})`);
  });

  it("checks each segment with its own rule and names it", () => {
    const err = caught(() => parseInstancePath("Acme/web/..", "ref"));
    expect(err.violations).toEqual([
      { field: "ref.tenant_id", rule: ID_RULE },
      { field: "ref.instance_id", rule: INSTANCE_ID_RULE },
    ]);
    expect(caught(() => parsePoolPath("acme/-web")).violations).toEqual([{ field: "path.pool_id", rule: ID_RULE }]);
    expect(caught(() => parsePoolPath("../web")).violations).toEqual([{ field: "path.tenant_id", rule: ID_RULE }]);
  });

  it("rejects any path whose segment count is wrong", () => {
    fc.assert(
      fc.property(fc.array(validId, { minLength: 1, maxLength: 6 }), (segments) => {
        const path = segments.join("/");
        if (segments.length === 2) expect(parsePoolPath(path)).toEqual({ tenantId: segments[0], poolId: segments[1] });
        else expect(caught(() => parsePoolPath(path)).violations[0]?.field).toBe("path");
        if (segments.length !== 3) expect(caught(() => parseInstancePath(path)).violations[0]?.field).toBe("path");
      }),
    );
  });

  it("rejects a non-string path", () => {
    expect(caught(() => parsePoolPath(undefined as unknown as string)).violations[0]?.rule).toBe(
      "must be <tenant>/<pool> (got nothing)",
    );
  });
});
