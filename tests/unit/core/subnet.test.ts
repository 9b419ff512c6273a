import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import {
  DEFAULT_NETWORK_POOL,
  DEFAULT_TENANT_PREFIX,
  allocateGuestAddress,
  allocateTenantNetwork,
  broadcastAddress,
  builderAddress,
  cidrViolations,
  cidrsOverlap,
  formatCidr,
  formatIpv4,
  gatewayAddress,
  netmask,
  parseCidr,
  parseIpv4,
  parseNetworkPool,
  usableHostCount,
} from "../../../src/core/subnet.js";
import type { Cidr } from "../../../src/core/subnet.js";

function caught(fn: () => unknown): MvmError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(MvmError);
    return e as MvmError;
  }
  throw new Error("expected an error, none was thrown");
}

/** Address arithmetic done independently of the module: octets by division, never by bit operators. */
function octetsOf(addr: number): number[] {
  return [Math.floor(addr / 2 ** 24) % 256, Math.floor(addr / 2 ** 16) % 256, Math.floor(addr / 256) % 256, addr % 256];
}
function dotted(addr: number): string {
  return octetsOf(addr).join(".");
}
function blockSize(prefixLen: number): number {
  return 2 ** (32 - prefixLen);
}

const uint32 = fc.integer({ min: 0, max: 2 ** 32 - 1 });

/** An aligned block with a prefix in [minPrefix, maxPrefix]. */
function cidrArb(minPrefix: number, maxPrefix: number): fc.Arbitrary<Cidr> {
  return fc.tuple(fc.integer({ min: minPrefix, max: maxPrefix }), uint32).map(([prefixLen, addr]) => ({
    prefixLen,
    network: Math.floor(addr / blockSize(prefixLen)) * blockSize(prefixLen),
  }));
}

describe("IPv4 addresses", () => {
  it("parses and formats dotted quads, high addresses included", () => {
    expect(parseIpv4("10.240.0.1")).toBe(10 * 2 ** 24 + 240 * 2 ** 16 + 1);
    expect(parseIpv4("255.255.255.255")).toBe(2 ** 32 - 1);
    expect(parseIpv4("0.0.0.0")).toBe(0);
    expect(formatIpv4(2 ** 32 - 1)).toBe("255.255.255.255");
    expect(formatIpv4(0xc0a80001)).toBe("192.168.0.1");
  });

  it.each(["", "1.2.3", "1.2.3.4.5", "256.0.0.1", "01.2.3.4", "1.2.3.-4", " 1.2.3.4", "1.2.3.4 ", "a.b.c.d", "1..3.4"])(
    "refuses %j",
    (text) => {
      expect(parseIpv4(text)).toBeNull();
    },
  );

  it("round-trips every 32-bit address", () => {
    fc.assert(
      fc.property(uint32, (addr) => {
        expect(formatIpv4(addr)).toBe(dotted(addr));
        expect(parseIpv4(formatIpv4(addr))).toBe(addr);
      }),
    );
  });
});

describe("CIDR parsing", () => {
  it("parses a tenant subnet", () => {
    expect(parseCidr("10.240.3.0/24", "network.ipv4_subnet")).toEqual({ network: parseIpv4("10.240.3.0"), prefixLen: 24 });
    expect(parseCidr("192.168.0.248/29", "s")).toEqual({ network: parseIpv4("192.168.0.248"), prefixLen: 29 });
    expect(parseCidr("172.16.0.0/16", "s").prefixLen).toBe(16);
  });

  it("says the host bits must be zero and names the network address", () => {
    const err = caught(() => parseCidr("10.240.3.7/24", "tenants[0].network.ipv4_subnet"));
    expect(err.kind).toBe("invalid");
    expect(err.violations).toEqual([
      {
        field: "tenants[0].network.ipv4_subnet",
        rule: "host bits must be zero: the network address is 10.240.3.0/24",
      },
    ]);
  });

  it.each([
    ["10.0.0.0/15", "prefix length must be from /16 to /29 (got /15)"],
    ["10.0.0.0/30", "prefix length must be from /16 to /29 (got /30)"],
    ["10.0.0.0/0", "prefix length must be from /16 to /29 (got /0)"],
  ])("refuses the prefix of %j", (text, rule) => {
    expect(cidrViolations(text, "subnet")).toEqual([{ field: "subnet", rule }]);
  });

  it.each([["10.0.0.0"], ["10.0.0/24"], ["256.0.0.0/24"], ["10.0.0.0/024"], ["10.0.0.0/"], [" 10.0.0.0/24"], ["10.0.0.0/24/1"], [""], [24], [null]])(
    "refuses the malformed %j",
    (text) => {
      const violations = cidrViolations(text, "subnet");
      expect(violations).toHaveLength(1);
      expect(violations[0]?.field).toBe("subnet");
      expect(violations[0]?.rule).toMatch(/^must be an IPv4 CIDR/);
    },
  );

  it("round-trips every aligned tenant subnet", () => {
    fc.assert(
      fc.property(cidrArb(16, 29), (c) => {
        const text = formatCidr(c);
        expect(text).toBe(`${dotted(c.network)}/${c.prefixLen}`);
        expect(parseCidr(text, "s")).toEqual(c);
      }),
    );
  });

  it("refuses every subnet with a host bit set", () => {
    fc.assert(
      fc.property(cidrArb(16, 29), fc.integer({ min: 1, max: 2 ** 16 - 1 }), (c, hostPart) => {
        const host = hostPart % blockSize(c.prefixLen);
        fc.pre(host !== 0);
        const violations = cidrViolations(`${dotted(c.network + host)}/${c.prefixLen}`, "s");
        expect(violations).toEqual([{ field: "s", rule: `host bits must be zero: the network address is ${formatCidr(c)}` }]);
      }),
    );
  });

  it("parses the default network pool, which is wider than any tenant subnet", () => {
    expect(formatCidr(parseNetworkPool(DEFAULT_NETWORK_POOL, "network_pool"))).toBe("10.240.0.0/12");
    expect(caught(() => parseCidr(DEFAULT_NETWORK_POOL, "network_pool")).kind).toBe("invalid");
  });
});

describe("subnet layout", () => {
  it("places gateway, builder and broadcast", () => {
    const c = parseCidr("10.240.3.0/24", "s");
    expect(gatewayAddress(c)).toBe("10.240.3.1");
    expect(builderAddress(c)).toBe("10.240.3.2");
    expect(broadcastAddress(c)).toBe("10.240.3.255");
    expect(usableHostCount(c)).toBe(254);
    const top = parseCidr("255.255.0.0/16", "s");
    expect(broadcastAddress(top)).toBe("255.255.255.255");
    expect(usableHostCount(top)).toBe(65534);
  });

  it("has 6 hosts in a /29: gateway, builder and 4 guests", () => {
    const c = parseCidr("10.0.0.8/29", "s");
    expect(usableHostCount(c)).toBe(6);
    const used = new Set<string>();
    const got: string[] = [];
    for (let i = 0; i < 4; i++) {
      const { ip, offset } = allocateGuestAddress(c, used);
      expect(offset).toBe(i + 3);
      used.add(ip);
      got.push(ip);
    }
    expect(got).toEqual(["10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14"]);
    const err = caught(() => allocateGuestAddress(c, used));
    expect(err.kind).toBe("exhausted");
    expect(err.message).toContain("10.0.0.8/29");
  });

  it("computes netmasks", () => {
    expect(netmask(24)).toBe("255.255.255.0");
    expect(netmask(16)).toBe("255.255.0.0");
    expect(netmask(29)).toBe("255.255.255.248");
    expect(netmask(0)).toBe("0.0.0.0");
    expect(netmask(32)).toBe("255.255.255.255");
    for (let p = 0; p <= 32; p++) expect(netmask(p)).toBe(dotted(2 ** 32 - blockSize(p)));
  });
});

describe("guest address allocation", () => {
  /** A subnet with a used set: a dense run from the first guest address, scattered addresses, and outsiders. */
  const scenario = cidrArb(16, 29).chain((c) => {
    const size = blockSize(c.prefixLen);
    return fc
      .record({
        denseRun: fc.integer({ min: 0, max: Math.min(size - 4, 300) }),
        scattered: fc.array(fc.integer({ min: 0, max: size - 1 }), { maxLength: 40 }),
        outsiders: fc.array(uint32, { maxLength: 5 }),
      })
      .map(({ denseRun, scattered, outsiders }) => {
        const used = new Set<string>();
        for (let i = 0; i < denseRun; i++) used.add(dotted(c.network + 3 + i));
        for (const off of scattered) used.add(dotted(c.network + off));
        for (const a of outsiders) if (a < c.network || a >= c.network + size) used.add(dotted(a));
        return { c, used };
      });
  });

  it("returns the lowest free guest address, inside the subnet and never a reserved one", () => {
    fc.assert(
      fc.property(scenario, ({ c, used }) => {
        const size = blockSize(c.prefixLen);
        const reserved = new Set([0, 1, 2, size - 1].map((o) => dotted(c.network + o)));
        let firstFree = -1;
        for (let off = 3; off <= size - 2; off++) {
          if (!used.has(dotted(c.network + off))) {
            firstFree = off;
            break;
          }
        }
        if (firstFree < 0) {
          expect(caught(() => allocateGuestAddress(c, used)).kind).toBe("exhausted");
          return;
        }
        const { ip, offset } = allocateGuestAddress(c, used);
        expect(ip).toBe(dotted(c.network + offset));
        expect(offset).toBeGreaterThanOrEqual(3);
        expect(offset).toBeLessThan(size - 1);
        expect(reserved.has(ip)).toBe(false);
        expect(used.has(ip)).toBe(false);
        expect(offset).toBe(firstFree);
      }),
    );
  });

  it("hands out exactly usableHostCount-2 distinct addresses, then reports exhaustion", () => {
    fc.assert(
      fc.property(cidrArb(22, 29), (c) => {
        const used = new Set<string>();
        const offsets = new Set<number>();
        for (;;) {
          let next;
          try {
            next = allocateGuestAddress(c, used);
          } catch (e) {
            expect((e as MvmError).kind).toBe("exhausted");
            expect((e as MvmError).message).toContain(formatCidr(c));
            break;
          }
          expect(used.has(next.ip)).toBe(false);
          used.add(next.ip);
          offsets.add(next.offset);
        }
        expect(used.size).toBe(usableHostCount(c) - 2);
        expect(offsets.size).toBe(used.size);
      }),
      { numRuns: 30 },
    );
  });

  it("gives out the last guest address of a /16 and then reports exhaustion", () => {
    const c = parseCidr("10.1.0.0/16", "s");
    const used = new Set<string>();
    for (let off = 3; off < 65534; off++) used.add(dotted(c.network + off));
    expect(allocateGuestAddress(c, used)).toEqual({ ip: "10.1.255.254", offset: 65534 });
    used.add("10.1.255.254");
    expect(caught(() => allocateGuestAddress(c, used)).message).toBe(
      "no free guest address in 10.1.0.0/16: all 65532 guest addresses are in use",
    );
  });

  it("reuses a freed address first", () => {
    const c = parseCidr("10.0.0.0/24", "s");
    const used = new Set(["10.0.0.3", "10.0.0.5", "10.0.0.6"]);
    expect(allocateGuestAddress(c, used).ip).toBe("10.0.0.4");
    used.add("10.0.0.4");
    used.delete("10.0.0.3");
    expect(allocateGuestAddress(c, used)).toEqual({ ip: "10.0.0.3", offset: 3 });
  });
});

describe("CIDR overlap", () => {
  it("agrees with interval intersection", () => {
    fc.assert(
      fc.property(cidrArb(0, 32), cidrArb(0, 32), (a, b) => {
        const aEnd = a.network + blockSize(a.prefixLen);
        const bEnd = b.network + blockSize(b.prefixLen);
        expect(cidrsOverlap(a, b)).toBe(a.network < bEnd && b.network < aEnd);
        expect(cidrsOverlap(b, a)).toBe(cidrsOverlap(a, b));
      }),
    );
  });

  it("handles neighbours and nesting", () => {
    const p = (t: string) => parseNetworkPool(t, "s");
    expect(cidrsOverlap(p("10.0.0.0/24"), p("10.0.1.0/24"))).toBe(false);
    expect(cidrsOverlap(p("10.0.0.0/16"), p("10.0.200.0/24"))).toBe(true);
    expect(cidrsOverlap(p("128.0.0.0/8"), p("128.255.255.248/29"))).toBe(true);
    expect(cidrsOverlap(p("127.0.0.0/8"), p("128.0.0.0/8"))).toBe(false);
  });
});

describe("tenant network allocation", () => {
  it("allocates from the default pool in /24s", () => {
    const pool = parseNetworkPool(DEFAULT_NETWORK_POOL, "network_pool");
    const first = allocateTenantNetwork(pool, DEFAULT_TENANT_PREFIX, []);
    expect(first.netId).toBe(0);
    expect(formatCidr(first.subnet)).toBe("10.240.0.0/24");
    const second = allocateTenantNetwork(pool, DEFAULT_TENANT_PREFIX, [first]);
    expect(second.netId).toBe(1);
    expect(formatCidr(second.subnet)).toBe("10.240.1.0/24");
  });

  it("fills gaps: the lowest free net_id and the lowest free block", () => {
    const pool = parseNetworkPool("10.240.0.0/16", "network_pool");
    const taken = [
      { netId: 0, subnet: parseCidr("10.240.0.0/24", "s") },
      { netId: 2, subnet: parseCidr("10.240.1.0/25", "s") },
      { netId: 7, subnet: parseCidr("10.240.2.0/24", "s") },
    ];
    const got = allocateTenantNetwork(pool, 24, taken);
    expect(got.netId).toBe(1);
    expect(formatCidr(got.subnet)).toBe("10.240.3.0/24");
    expect(formatCidr(allocateTenantNetwork(pool, 25, taken).subnet)).toBe("10.240.1.128/25");
  });

  it("avoids a coordinator-assigned subnet that covers part of the pool", () => {
    const pool = parseNetworkPool("10.240.0.0/12", "network_pool");
    const taken = [{ netId: 0, subnet: parseNetworkPool("10.240.0.0/13", "s") }];
    expect(formatCidr(allocateTenantNetwork(pool, 24, taken).subnet)).toBe("10.248.0.0/24");
  });

  it("never overlaps a taken subnet, stays in the pool, and takes the lowest free block and net_id", () => {
    const scenario = cidrArb(16, 24).chain((pool) =>
      fc.record({
        pool: fc.constant(pool),
        prefixLen: fc.integer({ min: Math.max(16, pool.prefixLen), max: 29 }),
        taken: fc.array(
          fc.record({
            netId: fc.integer({ min: 0, max: 40 }),
            subnet: fc.oneof(
              // Inside the pool, any size, possibly overlapping each other.
              fc.tuple(fc.integer({ min: pool.prefixLen, max: 29 }), fc.nat()).map(([p, n]) => {
                const size = blockSize(p);
                const slots = blockSize(pool.prefixLen) / size;
                return { network: pool.network + (n % slots) * size, prefixLen: p };
              }),
              cidrArb(8, 29),
            ),
          }),
          { maxLength: 30 },
        ),
      }),
    );
    fc.assert(
      fc.property(scenario, ({ pool, prefixLen, taken }) => {
        const size = blockSize(prefixLen);
        const overlapsTaken = (start: number) =>
          taken.some((t) => start < t.subnet.network + blockSize(t.subnet.prefixLen) && t.subnet.network < start + size);
        let lowestFree = -1;
        for (let start = pool.network; start + size <= pool.network + blockSize(pool.prefixLen); start += size) {
          if (!overlapsTaken(start)) {
            lowestFree = start;
            break;
          }
        }
        let expectedNetId = 0;
        while (taken.some((t) => t.netId === expectedNetId)) expectedNetId++;

        if (lowestFree < 0) {
          expect(caught(() => allocateTenantNetwork(pool, prefixLen, taken)).kind).toBe("exhausted");
          return;
        }
        const got = allocateTenantNetwork(pool, prefixLen, taken);
        expect(got.subnet.prefixLen).toBe(prefixLen);
        expect(got.subnet.network % size).toBe(0);
        expect(got.subnet.network).toBeGreaterThanOrEqual(pool.network);
        expect(got.subnet.network + size).toBeLessThanOrEqual(pool.network + blockSize(pool.prefixLen));
        for (const t of taken) expect(cidrsOverlap(got.subnet, t.subnet)).toBe(false);
        expect(got.subnet.network).toBe(lowestFree);
        expect(got.netId).toBe(expectedNetId);
        expect(taken.some((t) => t.netId === got.netId)).toBe(false);
      }),
    );
  });

  it("fills a pool exactly and then reports exhaustion", () => {
    const pool = parseNetworkPool("192.168.0.0/26", "network_pool");
    const taken: { netId: number; subnet: Cidr }[] = [];
    for (let i = 0; i < 8; i++) taken.push(allocateTenantNetwork(pool, 29, taken));
    expect(taken.map((t) => formatCidr(t.subnet))).toEqual(
      [0, 8, 16, 24, 32, 40, 48, 56].map((o) => `192.168.0.${o}/29`),
    );
    expect(taken.map((t) => t.netId)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    const err = caught(() => allocateTenantNetwork(pool, 29, taken));
    expect(err.kind).toBe("exhausted");
    expect(err.message).toBe("no free /29 subnet left in network pool 192.168.0.0/26");
  });

  it("reports exhaustion when every net_id is taken", () => {
    const pool = parseNetworkPool("10.0.0.0/8", "network_pool");
    const taken = Array.from({ length: 4096 }, (_, netId) => ({ netId, subnet: { network: 0, prefixLen: 29 } }));
    const err = caught(() => allocateTenantNetwork(pool, 24, taken));
    expect(err.kind).toBe("exhausted");
    expect(err.message).toContain("net_id");
  });

  it("refuses a tenant prefix that does not fit the pool or the tenant range", () => {
    const pool = parseNetworkPool("10.240.0.0/20", "network_pool");
    for (const prefixLen of [16, 19, 30, 24.5]) {
      const err = caught(() => allocateTenantNetwork(pool, prefixLen, []));
      expect(err.kind).toBe("invalid");
      expect(err.violations[0]?.field).toBe("prefix_len");
    }
    expect(formatCidr(allocateTenantNetwork(pool, 20, []).subnet)).toBe("10.240.0.0/20");
  });
});
