// Every value the network adapter puts into an `ip` argument or an nft script is checked here first: names end up
// inside nft scripts (quoted, but a quote or newline in one would still change the script), addresses and ports in
// rules. Plans come from core and are valid there; this is the adapter's own guard, not a second source of rules.

import { invalid } from "../../core/errors.js";
import type { FieldViolation } from "../../core/errors.js";
import type { TapPlan, TenantNetworkPlan } from "../../core/data-plane-ports.js";
import { NET_ID_MAX } from "../../core/naming.js";
import { cidrContains, cidrViolations, parseCidr, parseIpv4 } from "../../core/subnet.js";

/** A Linux interface name (at most 15 bytes) made only of characters that need no quoting anywhere. */
const INTERFACE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;
/** TAP names also name an nft chain (`tap_<name>`), so they keep to identifier characters. */
const TAP_NAME_PATTERN = /^[A-Za-z][A-Za-z0-9_]{0,14}$/;
const MAC_PATTERN = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
/** `ip netns` names become file names under /run/netns. */
const NETNS_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;

export const INTERFACE_NAME_RULE = "must be 1-15 characters of [A-Za-z0-9_.-], starting with a letter or digit";
export const TAP_NAME_RULE = "must be 1-15 characters of [A-Za-z0-9_], starting with a letter";
export const MAC_RULE = "must be a unicast MAC address such as 02:fc:00:01:00:03";
export const NETNS_RULE = "must be 1-64 characters of [A-Za-z0-9_.-], not . or ..";

export function netnsViolations(name: string, field = "netns"): FieldViolation[] {
  return NETNS_PATTERN.test(name) && name !== "." && name !== ".." ? [] : [{ field, rule: NETNS_RULE }];
}

export function checkNetnsName(name: string, field = "netns"): void {
  const violations = netnsViolations(name, field);
  if (violations.length > 0) throw invalid(violations);
}

export function checkInterfaceName(name: string, field: string): void {
  if (!INTERFACE_NAME_PATTERN.test(name)) throw invalid([{ field, rule: INTERFACE_NAME_RULE }]);
}

export function checkTapName(name: string, field = "tap.name"): void {
  if (!TAP_NAME_PATTERN.test(name)) throw invalid([{ field, rule: TAP_NAME_RULE }]);
}

function isUnicastMac(mac: string): boolean {
  // Bit 0 of the first octet marks group (multicast/broadcast) addresses, which no NIC may send from.
  return MAC_PATTERN.test(mac) && (parseInt(mac.slice(0, 2), 16) & 1) === 0;
}

export function tenantPlanViolations(plan: TenantNetworkPlan): FieldViolation[] {
  const v: FieldViolation[] = [];
  if (!Number.isInteger(plan.netId) || plan.netId < 0 || plan.netId > NET_ID_MAX) {
    v.push({ field: "net_id", rule: `must be an integer from 0 to ${NET_ID_MAX}` });
  }
  if (!INTERFACE_NAME_PATTERN.test(plan.bridgeName)) v.push({ field: "bridge_name", rule: INTERFACE_NAME_RULE });
  if (!Number.isInteger(plan.metadataPort) || plan.metadataPort < 1 || plan.metadataPort > 65535) {
    v.push({ field: "metadata_port", rule: "must be an integer from 1 to 65535" });
  }
  const subnetViolations = cidrViolations(plan.subnet, "subnet");
  v.push(...subnetViolations);
  const gateway = parseIpv4(plan.gatewayIp);
  if (gateway === null) v.push({ field: "gateway_ip", rule: "must be an IPv4 address such as 10.240.0.1" });
  if (subnetViolations.length === 0) {
    const subnet = parseCidr(plan.subnet, "subnet");
    if (plan.prefixLen !== subnet.prefixLen) {
      v.push({ field: "prefix_len", rule: `must equal the subnet's prefix length (${subnet.prefixLen})` });
    }
    if (gateway !== null && (!cidrContains(subnet, gateway) || gateway === subnet.network)) {
      v.push({ field: "gateway_ip", rule: `must be a host address inside ${plan.subnet}` });
    }
  }
  return v;
}

export function checkTenantPlan(plan: TenantNetworkPlan): void {
  const violations = tenantPlanViolations(plan);
  if (violations.length > 0) throw invalid(violations);
}

export function tapPlanViolations(plan: TenantNetworkPlan, tap: TapPlan): FieldViolation[] {
  const v: FieldViolation[] = [];
  if (!TAP_NAME_PATTERN.test(tap.name)) v.push({ field: "tap.name", rule: TAP_NAME_RULE });
  if (!isUnicastMac(tap.mac)) v.push({ field: "tap.mac", rule: MAC_RULE });
  const ip = parseIpv4(tap.guestIp);
  if (ip === null) {
    v.push({ field: "tap.guest_ip", rule: "must be an IPv4 address such as 10.240.0.3" });
  } else if (cidrViolations(plan.subnet, "subnet").length === 0) {
    const subnet = parseCidr(plan.subnet, "subnet");
    if (!cidrContains(subnet, ip) || tap.guestIp === plan.gatewayIp) {
      v.push({ field: "tap.guest_ip", rule: `must be a guest address inside ${plan.subnet}, not the gateway` });
    }
  }
  return v;
}

export function checkTapPlan(plan: TenantNetworkPlan, tap: TapPlan): void {
  const violations = [...tenantPlanViolations(plan), ...tapPlanViolations(plan, tap)];
  if (violations.length > 0) throw invalid(violations);
}
