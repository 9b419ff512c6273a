// The `bridge mvm` table: anti-spoofing on each TAP. Frames a guest sends enter the bridge through its TAP, and the
// bridge-family prerouting hook sees them before the bridge forwards them to another port or hands them to the host,
// so one chain per TAP decides for both paths. Pure: builds scripts and the expected live state.
//
// A guest may send only IPv4 and ARP, only from its own MAC, and only with its own IPv4 address as the sender (ARP
// included, so it cannot poison a neighbour's cache). Everything else (IPv6, VLAN tags, other ethertypes) is dropped:
// guests are configured with IPv4 alone, and an unchecked protocol would be a way around the address checks.

import type { TapPlan } from "../../core/data-plane-ports.js";
import {
  chainLines,
  chainPresenceLine,
  chainRemovalLines,
  dispatchAddLine,
  dispatchRemovalLines,
  renderScript,
  tableRef,
  type NftBaseChain,
  type NftChain,
  type NftDispatch,
} from "./nft-script.js";

const FAMILY = "bridge";
const T = tableRef(FAMILY);

export const TAP_GUARD_MAP = "tap_guard";

export const BRIDGE_BASE_CHAIN: NftBaseChain = {
  name: "prerouting",
  hook: "type filter hook prerouting priority filter; policy accept;",
  rules: [`iifname vmap @${TAP_GUARD_MAP}`],
};

export function tapChainName(tapName: string): string {
  return `tap_${tapName}`;
}

export function tapGuardChain(tap: TapPlan): NftChain {
  return {
    name: tapChainName(tap.name),
    rules: [
      `ether saddr != ${tap.mac} drop`,
      `arp saddr ether != ${tap.mac} drop`,
      `arp saddr ip != ${tap.guestIp} drop`,
      `ip saddr != ${tap.guestIp} drop`,
      "ether type != { ip, arp } drop",
    ],
  };
}

export function tapGuardDispatch(tapName: string): NftDispatch {
  return { map: TAP_GUARD_MAP, key: tapName, chain: tapChainName(tapName) };
}

export function bridgeSkeletonLines(): string[] {
  return [
    `add table ${T}`,
    `add map ${T} ${TAP_GUARD_MAP} { type ifname : verdict; }`,
    ...chainLines(FAMILY, BRIDGE_BASE_CHAIN, BRIDGE_BASE_CHAIN.hook),
  ];
}

/** One transaction that installs exactly this TAP's anti-spoofing rules. Idempotent. */
export function ensureTapGuardScript(tap: TapPlan): string {
  return renderScript([...bridgeSkeletonLines(), ...chainLines(FAMILY, tapGuardChain(tap)), dispatchAddLine(FAMILY, tapGuardDispatch(tap.name))]);
}

/** One transaction that removes this TAP's rules, whether or not they exist. Idempotent. */
export function removeTapGuardScript(tapName: string): string {
  const chain = tapChainName(tapName);
  return renderScript([
    ...bridgeSkeletonLines(),
    chainPresenceLine(FAMILY, chain),
    ...dispatchRemovalLines(FAMILY, tapGuardDispatch(tapName)),
    ...chainRemovalLines(FAMILY, chain),
  ]);
}
