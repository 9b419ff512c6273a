// Host-side names and addresses derived from a tenant's net_id and an instance's address offset (SPEC §4). They are
// pure functions of their inputs, so a restarted agent finds the same bridge, TAP and MAC again, and `net verify`
// and GC can recognise mvm's own interfaces by name.

import { invalid } from "./errors.js";
import type { FieldViolation } from "./errors.js";

/** IFNAMSIZ is 16 including the terminating NUL. */
export const LINUX_IFNAME_MAX = 15;

export const NET_ID_MAX = 4095;
/** The offset of a guest address from its subnet's network address; a /16 has offsets up to 65535. */
export const OFFSET_MAX = 65535;

export const NET_ID_RULE = `must be an integer from 0 to ${NET_ID_MAX}`;
export const OFFSET_RULE = `must be an integer from 0 to ${OFFSET_MAX}`;

const BRIDGE_PREFIX = "br-mvm-";
const TAP_PREFIX = "tn";

export function netIdViolations(netId: unknown, field: string): FieldViolation[] {
  return isIntegerIn(netId, 0, NET_ID_MAX) ? [] : [{ field, rule: NET_ID_RULE }];
}

function isIntegerIn(value: unknown, min: number, max: number): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= min && value <= max;
}

function checkInputs(netId: number, offset?: number): void {
  const violations = netIdViolations(netId, "net_id");
  if (offset !== undefined && !isIntegerIn(offset, 0, OFFSET_MAX)) {
    violations.push({ field: "offset", rule: OFFSET_RULE });
  }
  if (violations.length > 0) throw invalid(violations);
}

/** The tenant's bridge, e.g. `br-mvm-4095` (at most 11 bytes). */
export function bridgeName(netId: number): string {
  checkInputs(netId);
  return `${BRIDGE_PREFIX}${netId}`;
}

/** An instance's TAP device, e.g. `tn4095i65535` (at most 12 bytes). */
export function tapName(netId: number, offset: number): string {
  checkInputs(netId, offset);
  return `${TAP_PREFIX}${netId}i${offset}`;
}

/**
 * `02:fc:<net_id hi>:<net_id lo>:<offset hi>:<offset lo>`, lowercase. 0x02 sets the locally-administered bit and
 * clears the multicast bit, so the address can never clash with a vendor-assigned NIC.
 */
export function macAddress(netId: number, offset: number): string {
  checkInputs(netId, offset);
  const octets = [0x02, 0xfc, netId >> 8, netId & 0xff, offset >> 8, offset & 0xff];
  return octets.map((o) => o.toString(16).padStart(2, "0")).join(":");
}

/** Decimal without leading zeros, so that each number has exactly one spelling and names parse back uniquely. */
const CANONICAL_DECIMAL = "(0|[1-9][0-9]*)";
const BRIDGE_NAME_PATTERN = new RegExp(`^${BRIDGE_PREFIX}${CANONICAL_DECIMAL}$`);
const TAP_NAME_PATTERN = new RegExp(`^${TAP_PREFIX}${CANONICAL_DECIMAL}i${CANONICAL_DECIMAL}$`);

/** The net_id of a bridge name made by `bridgeName`, or null for any other interface name. */
export function parseBridgeName(name: string): number | null {
  const m = BRIDGE_NAME_PATTERN.exec(name);
  if (!m) return null;
  const netId = Number(m[1]);
  return isIntegerIn(netId, 0, NET_ID_MAX) ? netId : null;
}

/** The net_id and offset of a TAP name made by `tapName`, or null for any other interface name. */
export function parseTapName(name: string): { netId: number; offset: number } | null {
  const m = TAP_NAME_PATTERN.exec(name);
  if (!m) return null;
  const netId = Number(m[1]);
  const offset = Number(m[2]);
  return isIntegerIn(netId, 0, NET_ID_MAX) && isIntegerIn(offset, 0, OFFSET_MAX) ? { netId, offset } : null;
}
