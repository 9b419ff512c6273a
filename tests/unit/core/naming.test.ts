import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import {
  LINUX_IFNAME_MAX,
  bridgeName,
  macAddress,
  parseBridgeName,
  parseTapName,
  tapName,
} from "../../../src/core/naming.js";

const netIdArb = fc.integer({ min: 0, max: 4095 });
const offsetArb = fc.integer({ min: 0, max: 65535 });
const pairArb = fc.tuple(netIdArb, offsetArb);

function bytes(s: string): number {
  return new TextEncoder().encode(s).length;
}

function invalidFields(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(MvmError);
    expect((e as MvmError).kind).toBe("invalid");
    return (e as MvmError).violations.map((v) => v.field);
  }
  throw new Error("expected invalid input to be rejected");
}

describe("interface names", () => {
  it("derives readable names", () => {
    expect(bridgeName(7)).toBe("br-mvm-7");
    expect(tapName(7, 3)).toBe("tn7i3");
    expect(tapName(4095, 65535)).toBe("tn4095i65535");
  });

  it("fits Linux's 15-byte limit at the extremes", () => {
    for (const netId of [0, 9, 10, 999, 1000, 4095]) {
      expect(bytes(bridgeName(netId))).toBeLessThanOrEqual(LINUX_IFNAME_MAX);
      for (const offset of [0, 65535]) expect(bytes(tapName(netId, offset))).toBeLessThanOrEqual(LINUX_IFNAME_MAX);
    }
  });

  it("fits Linux's limit and uses only safe characters for every input", () => {
    fc.assert(
      fc.property(netIdArb, offsetArb, (netId, offset) => {
        for (const name of [bridgeName(netId), tapName(netId, offset)]) {
          expect(bytes(name)).toBeLessThanOrEqual(LINUX_IFNAME_MAX);
          expect(name).toMatch(/^[a-z0-9-]+$/);
        }
      }),
    );
  });

  it("gives distinct inputs distinct names", () => {
    fc.assert(
      fc.property(netIdArb, netIdArb, (a, b) => {
        expect(bridgeName(a) === bridgeName(b)).toBe(a === b);
      }),
    );
    fc.assert(
      fc.property(pairArb, pairArb, ([n1, o1], [n2, o2]) => {
        expect(tapName(n1, o1) === tapName(n2, o2)).toBe(n1 === n2 && o1 === o2);
      }),
    );
  });

  it("gives distinct names to inputs that differ in one place only (where concatenation could collide)", () => {
    // tn1i23 vs tn12i3: the separator must keep these apart.
    expect(tapName(1, 23)).not.toBe(tapName(12, 3));
    fc.assert(
      fc.property(netIdArb, offsetArb, offsetArb, (netId, o1, o2) => {
        fc.pre(o1 !== o2);
        expect(tapName(netId, o1)).not.toBe(tapName(netId, o2));
      }),
    );
  });

  it("gives every bridge and every TAP of the low offsets a distinct name (exhaustive)", () => {
    const names = new Set<string>();
    for (let netId = 0; netId <= 4095; netId++) {
      names.add(bridgeName(netId));
      for (let offset = 0; offset < 128; offset++) names.add(tapName(netId, offset));
    }
    expect(names.size).toBe(4096 * (1 + 128));
  });

  it("never gives a TAP a bridge's name", () => {
    fc.assert(
      fc.property(netIdArb, pairArb, (b, [n, o]) => {
        expect(bridgeName(b)).not.toBe(tapName(n, o));
      }),
    );
  });

  it("parses its own names back and nothing else", () => {
    fc.assert(
      fc.property(netIdArb, offsetArb, (netId, offset) => {
        expect(parseBridgeName(bridgeName(netId))).toBe(netId);
        expect(parseTapName(tapName(netId, offset))).toEqual({ netId, offset });
        expect(parseTapName(bridgeName(netId))).toBeNull();
        expect(parseBridgeName(tapName(netId, offset))).toBeNull();
      }),
    );
    for (const name of ["eth0", "br-mvm-", "br-mvm-4096", "br-mvm-07", "tn1i", "tn01i1", "tn1i65536", "tn4096i0", "tap0"]) {
      expect(parseBridgeName(name)).toBeNull();
      expect(parseTapName(name)).toBeNull();
    }
  });

  it.each([
    [-1, 0, ["net_id"]],
    [4096, 0, ["net_id"]],
    [1.5, 0, ["net_id"]],
    [Number.NaN, 0, ["net_id"]],
    [0, -1, ["offset"]],
    [0, 65536, ["offset"]],
    [0, 0.5, ["offset"]],
    [5000, 70000, ["net_id", "offset"]],
  ])("rejects net_id %s, offset %s", (netId, offset, fields) => {
    expect(invalidFields(() => tapName(netId, offset))).toEqual(fields);
    expect(invalidFields(() => macAddress(netId, offset))).toEqual(fields);
    if (fields.includes("net_id")) expect(invalidFields(() => bridgeName(netId))).toEqual(["net_id"]);
  });
});

describe("MAC addresses", () => {
  it("encodes net_id and offset big-endian after 02:fc", () => {
    expect(macAddress(0, 0)).toBe("02:fc:00:00:00:00");
    expect(macAddress(0x0abc, 0xde0f)).toBe("02:fc:0a:bc:de:0f");
    expect(macAddress(4095, 65535)).toBe("02:fc:0f:ff:ff:ff");
  });

  it("is a well-formed, locally administered unicast address for every input", () => {
    fc.assert(
      fc.property(netIdArb, offsetArb, (netId, offset) => {
        const mac = macAddress(netId, offset);
        expect(mac).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
        const first = parseInt(mac.slice(0, 2), 16);
        expect(first & 0b11).toBe(0b10);
        const octets = mac.split(":").map((o) => parseInt(o, 16));
        expect(octets[2]! * 256 + octets[3]!).toBe(netId);
        expect(octets[4]! * 256 + octets[5]!).toBe(offset);
      }),
    );
  });

  it("gives distinct inputs distinct addresses", () => {
    fc.assert(
      fc.property(pairArb, pairArb, ([n1, o1], [n2, o2]) => {
        expect(macAddress(n1, o1) === macAddress(n2, o2)).toBe(n1 === n2 && o1 === o2);
      }),
    );
  });
});
