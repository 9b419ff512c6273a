// IPv4 subnet arithmetic for tenant networks (SPEC §2 TenantNetwork, §4, §6.3). Addresses are unsigned 32-bit
// integers held in JS numbers; every bitwise result is brought back to unsigned with `>>> 0`, and sums are plain
// number arithmetic (exact up to 2^53), so nothing wraps to a negative value.

import { exhausted, invalid } from "./errors.js";
import type { FieldViolation } from "./errors.js";
import { NET_ID_MAX } from "./naming.js";

export interface Cidr {
  /** Network address as an unsigned 32-bit integer; host bits are zero. */
  network: number;
  prefixLen: number;
}

export interface PrefixRange {
  min: number;
  max: number;
}

/** Tenant subnets: a /29 is the smallest that leaves room for a gateway, a builder and a few guests. */
export const TENANT_PREFIX_RANGE: Readonly<PrefixRange> = Object.freeze({ min: 16, max: 29 });
/** Network pools that tenant subnets are carved from; wider than a tenant subnet by nature. */
export const NETWORK_POOL_PREFIX_RANGE: Readonly<PrefixRange> = Object.freeze({ min: 8, max: 29 });

export const DEFAULT_NETWORK_POOL = "10.240.0.0/12";
export const DEFAULT_TENANT_PREFIX = 24;

const IPV4_PATTERN = /^(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$/;
const CIDR_PATTERN = /^([0-9.]+)\/(0|[1-9][0-9]?)$/;

/** Dotted-quad IPv4 as an unsigned integer, or null. Octets with leading zeros are refused (octal ambiguity). */
export function parseIpv4(text: string): number | null {
  if (typeof text !== "string") return null;
  const m = IPV4_PATTERN.exec(text);
  if (!m) return null;
  let addr = 0;
  for (let i = 1; i <= 4; i++) {
    const octet = Number(m[i]);
    if (octet > 255) return null;
    addr = addr * 256 + octet;
  }
  return addr;
}

export function formatIpv4(addr: number): string {
  const a = addr >>> 0;
  return `${a >>> 24}.${(a >>> 16) & 0xff}.${(a >>> 8) & 0xff}.${a & 0xff}`;
}

/** The netmask of `prefixLen` as an unsigned integer. */
export function prefixMask(prefixLen: number): number {
  if (!Number.isInteger(prefixLen) || prefixLen < 0 || prefixLen > 32) {
    throw invalid([{ field: "prefix_len", rule: "must be an integer from 0 to 32" }]);
  }
  // A shift count of 32 is taken modulo 32 in JS, hence the special case.
  return prefixLen === 0 ? 0 : (0xffffffff << (32 - prefixLen)) >>> 0;
}

/** Dotted-quad netmask, e.g. "255.255.255.0" for 24. */
export function netmask(prefixLen: number): string {
  return formatIpv4(prefixMask(prefixLen));
}

/** Number of addresses in the block, network and broadcast included. */
export function subnetSize(c: Cidr): number {
  return 2 ** (32 - c.prefixLen);
}

export function cidrViolations(text: unknown, field: string, range: PrefixRange = TENANT_PREFIX_RANGE): FieldViolation[] {
  const shape = `must be an IPv4 CIDR such as 10.240.0.0/24 with a prefix from /${range.min} to /${range.max}`;
  if (typeof text !== "string") return [{ field, rule: shape }];
  const m = CIDR_PATTERN.exec(text);
  const addr = m ? parseIpv4(m[1] as string) : null;
  if (!m || addr === null) return [{ field, rule: shape }];
  const prefixLen = Number(m[2]);
  if (prefixLen < range.min || prefixLen > range.max) {
    return [{ field, rule: `prefix length must be from /${range.min} to /${range.max} (got /${prefixLen})` }];
  }
  const network = (addr & prefixMask(prefixLen)) >>> 0;
  if (network !== addr) {
    const suggestion = `${formatIpv4(network)}/${prefixLen}`;
    return [{ field, rule: `host bits must be zero: the network address is ${suggestion}` }];
  }
  return [];
}

/** Parses a tenant subnet (prefix /16 to /29 unless `range` says otherwise); throws `invalid` naming `field`. */
export function parseCidr(text: string, field: string, range: PrefixRange = TENANT_PREFIX_RANGE): Cidr {
  const violations = cidrViolations(text, field, range);
  if (violations.length > 0) throw invalid(violations);
  const [addr, prefix] = text.split("/") as [string, string];
  return { network: parseIpv4(addr) as number, prefixLen: Number(prefix) };
}

/** Parses the pool that single-node tenant subnets are allocated from (prefix /8 to /29). */
export function parseNetworkPool(text: string, field: string): Cidr {
  return parseCidr(text, field, NETWORK_POOL_PREFIX_RANGE);
}

export function formatCidr(c: Cidr): string {
  return `${formatIpv4(c.network)}/${c.prefixLen}`;
}

export function cidrContains(c: Cidr, addr: number): boolean {
  return addr >= c.network && addr < c.network + subnetSize(c);
}

export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  // Aligned blocks either nest or are disjoint: they overlap exactly when the wider one contains the other's start.
  const mask = prefixMask(Math.min(a.prefixLen, b.prefixLen));
  return (a.network & mask) >>> 0 === (b.network & mask) >>> 0;
}

/** First host address: the tenant's gateway on the bridge. */
export function gatewayAddress(c: Cidr): string {
  return formatIpv4(c.network + 1);
}

/** Second host address: reserved for the builder VM, never given to an instance. */
export function builderAddress(c: Cidr): string {
  return formatIpv4(c.network + 2);
}

export function broadcastAddress(c: Cidr): string {
  return formatIpv4(c.network + subnetSize(c) - 1);
}

/** Host addresses: the block minus network and broadcast (a /29 has 6: gateway, builder and 4 guests). */
export function usableHostCount(c: Cidr): number {
  return subnetSize(c) - 2;
}

/** Addresses left for instances once gateway and builder are taken out. */
export function guestAddressCount(c: Cidr): number {
  return usableHostCount(c) - 2;
}

/** Offset of the first guest address from the network address (after network, gateway and builder). */
export const FIRST_GUEST_OFFSET = 3;

/** Lowest free guest address after gateway+builder; offset = addr - network. Throws exhausted (naming the subnet) when none left. */
export function allocateGuestAddress(c: Cidr, used: ReadonlySet<string>): { ip: string; offset: number } {
  const lastOffset = subnetSize(c) - 2; // the one before broadcast
  for (let offset = FIRST_GUEST_OFFSET; offset <= lastOffset; offset++) {
    const ip = formatIpv4(c.network + offset);
    if (!used.has(ip)) return { ip, offset };
  }
  throw exhausted(`no free guest address in ${formatCidr(c)}: all ${guestAddressCount(c)} guest addresses are in use`);
}

/**
 * Single-node allocation: lowest free net_id (0..4095) and lowest free /prefixLen block of `pool` overlapping none of
 * `taken`. Subnets in `taken` may lie outside the pool (a coordinator assigned them); they are simply avoided.
 */
export function allocateTenantNetwork(
  pool: Cidr,
  prefixLen: number,
  taken: ReadonlyArray<{ netId: number; subnet: Cidr }>,
): { netId: number; subnet: Cidr } {
  if (
    !Number.isInteger(prefixLen) ||
    prefixLen < Math.max(TENANT_PREFIX_RANGE.min, pool.prefixLen) ||
    prefixLen > TENANT_PREFIX_RANGE.max
  ) {
    const min = Math.max(TENANT_PREFIX_RANGE.min, pool.prefixLen);
    throw invalid([
      {
        field: "prefix_len",
        rule: `must be from /${min} to /${TENANT_PREFIX_RANGE.max} to fit network pool ${formatCidr(pool)} (got ${prefixLen})`,
      },
    ]);
  }

  const usedNetIds = new Set(taken.map((t) => t.netId));
  let netId = 0;
  while (usedNetIds.has(netId)) netId++;
  if (netId > NET_ID_MAX) throw exhausted(`no free net_id: all ${NET_ID_MAX + 1} are in use`);

  const size = 2 ** (32 - prefixLen);
  const poolEnd = pool.network + subnetSize(pool); // exclusive
  let candidate = pool.network;
  while (candidate + size <= poolEnd) {
    const block: Cidr = { network: candidate, prefixLen };
    const clash = taken.find((t) => cidrsOverlap(block, t.subnet));
    if (!clash) return { netId, subnet: block };
    // Skip past whichever ends later, the candidate or the clashing subnet. Aligned blocks nest or are disjoint, so
    // a clash either lies inside the candidate or is a wider aligned block: both ends keep the next candidate
    // size-aligned, and no clash is met twice.
    const clashEnd = clash.subnet.network + subnetSize(clash.subnet);
    candidate = Math.max(candidate + size, clashEnd);
  }
  throw exhausted(`no free /${prefixLen} subnet left in network pool ${formatCidr(pool)}`);
}
