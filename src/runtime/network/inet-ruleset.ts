// The `inet mvm` table: NAT for tenant egress, forwarding between tenants and the outside, isolation between
// tenants, and what guests may reach on the host. Pure: builds nft scripts and the expected live state; the adapter
// runs them.
//
// Layout. Static base chains hold only verdict-map lookups keyed by interface name; each tenant owns four regular
// chains (named after its net_id) and one entry per map. Adding or removing a tenant therefore touches only its own
// chains and map entries, and never needs to know which other tenants exist:
//
//   forward     iifname vmap @forward_from      → tenant_<n>_fwd_out   (packets leaving the tenant's bridge)
//               oifname vmap @forward_to        → tenant_<n>_fwd_in    (packets entering the tenant's bridge)
//   input       iifname vmap @input_from        → tenant_<n>_input     (guest → host)
//   postrouting oifname != @tenant_bridges iifname vmap @nat_from → tenant_<n>_nat (masquerade)
//
// Isolation is explicit in both directions and in each tenant's own chains: fwd_out drops anything headed for any
// tenant bridge other than its own, fwd_in drops anything arriving from any tenant bridge. A damaged or missing
// chain of one tenant therefore never opens the path between two others.
//
// Guests of one bridge talking to each other: bridged frames bypass the inet hooks unless br_netfilter hands them
// to iptables/nft (net.bridge.bridge-nf-call-iptables, on by default wherever the module is loaded, per namespace
// since Linux 5.3). Then they appear in `forward` with the bridge as both input and output interface, so fwd_out
// accepts that case first; without br_netfilter the rule simply never matches.

import type { TenantNetworkPlan } from "../../core/data-plane-ports.js";
import {
  chainLines,
  chainPresenceLine,
  chainRemovalLines,
  dispatchAddLine,
  dispatchRemovalLines,
  quoted,
  renderScript,
  tableRef,
  type NftBaseChain,
  type NftChain,
  type NftDispatch,
} from "./nft-script.js";

const FAMILY = "inet";
const T = tableRef(FAMILY);

export const TENANT_BRIDGES_SET = "tenant_bridges";
export const INET_MAPS = { forwardFrom: "forward_from", forwardTo: "forward_to", inputFrom: "input_from", natFrom: "nat_from" } as const;

export const INET_BASE_CHAINS: readonly NftBaseChain[] = [
  {
    name: "forward",
    hook: "type filter hook forward priority filter; policy accept;",
    rules: [`iifname vmap @${INET_MAPS.forwardFrom}`, `oifname vmap @${INET_MAPS.forwardTo}`],
  },
  {
    name: "input",
    hook: "type filter hook input priority filter; policy accept;",
    rules: [`iifname vmap @${INET_MAPS.inputFrom}`],
  },
  {
    name: "postrouting",
    hook: "type nat hook postrouting priority srcnat; policy accept;",
    rules: [`oifname != @${TENANT_BRIDGES_SET} iifname vmap @${INET_MAPS.natFrom}`],
  },
];

export interface TenantChainNames {
  forwardOut: string;
  forwardIn: string;
  input: string;
  nat: string;
}

export function tenantChainNames(netId: number): TenantChainNames {
  const p = `tenant_${netId}`;
  return { forwardOut: `${p}_fwd_out`, forwardIn: `${p}_fwd_in`, input: `${p}_input`, nat: `${p}_nat` };
}

/** The rules that keep tenants apart; `verify` reports them as their own check. */
export function isolationRules(): { forwardOut: string; forwardIn: string } {
  return { forwardOut: `oifname @${TENANT_BRIDGES_SET} drop`, forwardIn: `iifname @${TENANT_BRIDGES_SET} drop` };
}

export interface TenantInetRules {
  forwardOut: NftChain;
  forwardIn: NftChain;
  input: NftChain;
  nat: NftChain;
}

export function tenantInetRules(plan: TenantNetworkPlan): TenantInetRules {
  const names = tenantChainNames(plan.netId);
  const bridge = quoted(plan.bridgeName);
  const isolation = isolationRules();
  return {
    forwardOut: {
      name: names.forwardOut,
      rules: [
        // Between guests of this tenant (bridged under br_netfilter, or routed through the gateway).
        `oifname ${bridge} accept`,
        isolation.forwardOut,
        // Egress to anything that is not a tenant bridge; the NAT chain masquerades it.
        "accept",
      ],
    },
    forwardIn: {
      name: names.forwardIn,
      rules: [isolation.forwardIn, "ct state established,related accept", "drop"],
    },
    input: {
      name: names.input,
      rules: [
        "ct state established,related accept",
        `ip daddr ${plan.gatewayIp} tcp dport ${plan.metadataPort} accept`,
        // Everything else a guest sends to the host: other ports, other host addresses, other tenants' gateways.
        "drop",
      ],
    },
    nat: { name: names.nat, rules: [`ip saddr ${plan.subnet} masquerade`] },
  };
}

export function tenantInetChains(plan: TenantNetworkPlan): NftChain[] {
  const r = tenantInetRules(plan);
  return [r.forwardOut, r.forwardIn, r.input, r.nat];
}

export function tenantInetDispatch(plan: Pick<TenantNetworkPlan, "netId" | "bridgeName">): NftDispatch[] {
  const names = tenantChainNames(plan.netId);
  const key = plan.bridgeName;
  return [
    { map: INET_MAPS.forwardFrom, key, chain: names.forwardOut },
    { map: INET_MAPS.forwardTo, key, chain: names.forwardIn },
    { map: INET_MAPS.inputFrom, key, chain: names.input },
    { map: INET_MAPS.natFrom, key, chain: names.nat },
  ];
}

/** Table, set, maps and base chains: created when missing, base chains reset to their dispatch rules. */
export function inetSkeletonLines(): string[] {
  return [
    `add table ${T}`,
    `add set ${T} ${TENANT_BRIDGES_SET} { type ifname; }`,
    ...Object.values(INET_MAPS).map((m) => `add map ${T} ${m} { type ifname : verdict; }`),
    ...INET_BASE_CHAINS.flatMap((c) => chainLines(FAMILY, c, c.hook)),
  ];
}

/** One transaction that brings the tenant's part of `inet mvm` to exactly the intended state. Idempotent. */
export function ensureTenantInetScript(plan: TenantNetworkPlan): string {
  return renderScript([
    ...inetSkeletonLines(),
    ...tenantInetChains(plan).flatMap((c) => chainLines(FAMILY, c)),
    `add element ${T} ${TENANT_BRIDGES_SET} { ${quoted(plan.bridgeName)} }`,
    ...tenantInetDispatch(plan).map((d) => dispatchAddLine(FAMILY, d)),
  ]);
}

/**
 * One transaction that removes the tenant's chains and entries, whether or not they exist. Idempotent. Needs only
 * the names, so that what a deleted tenant left can be removed too.
 */
export function removeTenantInetScript(plan: Pick<TenantNetworkPlan, "netId" | "bridgeName">): string {
  const chains = Object.values(tenantChainNames(plan.netId)).map((name) => ({ name }));
  const bridge = quoted(plan.bridgeName);
  return renderScript([
    ...inetSkeletonLines(),
    ...chains.map((c) => chainPresenceLine(FAMILY, c.name)),
    ...tenantInetDispatch(plan).flatMap((d) => dispatchRemovalLines(FAMILY, d)),
    `add element ${T} ${TENANT_BRIDGES_SET} { ${bridge} }`,
    `delete element ${T} ${TENANT_BRIDGES_SET} { ${bridge} }`,
    ...chains.flatMap((c) => chainRemovalLines(FAMILY, c.name)),
  ]);
}
