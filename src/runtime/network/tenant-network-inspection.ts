// What `net verify` compares: the observed interfaces and nft tables against what ensureTenant/ensureTap would have
// made for this plan. Pure, so the comparison is tested without root; the adapter gathers the observation.

import type { NetworkCheck, TapPlan, TenantNetworkPlan } from "../../core/data-plane-ports.js";
import { parseTapName } from "../../core/naming.js";
import { BRIDGE_BASE_CHAIN, tapGuardChain, tapGuardDispatch } from "./bridge-ruleset.js";
import { INET_BASE_CHAINS, TENANT_BRIDGES_SET, isolationRules, tenantInetDispatch, tenantInetRules } from "./inet-ruleset.js";
import type { LinkState } from "./ip-links.js";
import type { NftBaseChain, NftChain, NftDispatch } from "./nft-script.js";
import { sameRules, type LiveTable } from "./nft-listing.js";

export interface TenantNetworkObservation {
  links: readonly LinkState[];
  /** Value of net.ipv4.ip_forward in the data-plane namespace. */
  ipForward: string;
  inet: LiveTable;
  bridge: LiveTable;
}

export interface TenantNetworkInspection {
  checks: NetworkCheck[];
  strayTaps: string[];
  missingTaps: string[];
}

function chainProblem(live: LiveTable, chain: NftChain): string | null {
  const found = live.chains.get(chain.name);
  if (found === undefined) return `chain ${chain.name} is missing`;
  if (!sameRules(found.rules, chain.rules)) {
    return `chain ${chain.name} holds [${found.rules.join("; ")}], expected [${chain.rules.join("; ")}]`;
  }
  return null;
}

function baseChainProblem(live: LiveTable, chain: NftBaseChain): string | null {
  const found = live.chains.get(chain.name);
  if (found !== undefined && found.hook !== chain.hook) {
    return `base chain ${chain.name} is "${found.hook ?? "not a base chain"}", expected "${chain.hook}"`;
  }
  return chainProblem(live, chain);
}

function dispatchProblem(live: LiveTable, d: NftDispatch): string | null {
  const target = live.maps.get(d.map)?.get(d.key);
  if (target === undefined) return `map ${d.map} has no entry for ${d.key}`;
  if (target !== d.chain) return `map ${d.map} sends ${d.key} to ${target}, expected ${d.chain}`;
  return null;
}

function check(name: string, problems: (string | null)[], okDetail: string): NetworkCheck {
  const found = problems.filter((p): p is string => p !== null);
  return found.length === 0 ? { check: name, ok: true, detail: okDetail } : { check: name, ok: false, detail: found.join("; ") };
}

function bridgeMembershipProblem(live: LiveTable, bridgeName: string): string | null {
  const members = live.sets.get(TENANT_BRIDGES_SET);
  if (members === undefined) return `set ${TENANT_BRIDGES_SET} is missing`;
  return members.includes(bridgeName) ? null : `set ${TENANT_BRIDGES_SET} does not hold ${bridgeName}`;
}

function isolationProblems(live: LiveTable, plan: TenantNetworkPlan): (string | null)[] {
  const rules = tenantInetRules(plan);
  const isolation = isolationRules();
  const has = (chain: NftChain, rule: string) =>
    live.chains.get(chain.name)?.rules.includes(rule) === true ? null : `chain ${chain.name} lacks "${rule}"`;
  return [bridgeMembershipProblem(live, plan.bridgeName), has(rules.forwardOut, isolation.forwardOut), has(rules.forwardIn, isolation.forwardIn)];
}

/** TAP-named interfaces of this tenant (any bridge or none), or any TAP-named port of its bridge. */
function tenantTapNames(plan: TenantNetworkPlan, links: readonly LinkState[]): string[] {
  return links
    .filter((l) => {
      const parsed = parseTapName(l.name);
      return parsed !== null && (parsed.netId === plan.netId || l.master === plan.bridgeName);
    })
    .map((l) => l.name);
}

export function inspectTenantNetwork(
  plan: TenantNetworkPlan,
  expectedTaps: readonly TapPlan[],
  seen: TenantNetworkObservation,
): TenantNetworkInspection {
  const byName = new Map(seen.links.map((l) => [l.name, l] as const));
  const bridge = byName.get(plan.bridgeName);
  const gateway = `${plan.gatewayIp}/${plan.prefixLen}`;
  const rules = tenantInetRules(plan);
  const dispatch = new Map(tenantInetDispatch(plan).map((d) => [d.map, d] as const));
  const base = new Map(INET_BASE_CHAINS.map((c) => [c.name, c] as const));
  const inetDispatch = (map: string) => dispatchProblem(seen.inet, dispatch.get(map) as NftDispatch);
  const inetBase = (name: string) => baseChainProblem(seen.inet, base.get(name) as NftBaseChain);

  const checks: NetworkCheck[] = [
    bridge === undefined
      ? { check: "bridge", ok: false, detail: `${plan.bridgeName} does not exist` }
      : bridge.kind !== "bridge"
        ? { check: "bridge", ok: false, detail: `${plan.bridgeName} is a ${bridge.kind ?? "plain"} interface, not a bridge` }
        : { check: "bridge", ok: true, detail: `${plan.bridgeName} exists` },
    bridge?.up === true
      ? { check: "bridge up", ok: true, detail: `${plan.bridgeName} is up` }
      : { check: "bridge up", ok: false, detail: `${plan.bridgeName} is ${bridge === undefined ? "missing" : "down"}` },
    bridge?.ipv4.includes(gateway) === true
      ? { check: "gateway address", ok: true, detail: `${gateway} on ${plan.bridgeName}` }
      : {
          check: "gateway address",
          ok: false,
          detail: `${gateway} is not on ${plan.bridgeName} (found: ${bridge?.ipv4.join(", ") || "none"})`,
        },
    seen.ipForward.trim() === "1"
      ? { check: "ip forwarding", ok: true, detail: "net.ipv4.ip_forward = 1" }
      : { check: "ip forwarding", ok: false, detail: `net.ipv4.ip_forward = ${seen.ipForward.trim() || "unknown"}` },
    check(
      "nat rule",
      [inetBase("postrouting"), bridgeMembershipProblem(seen.inet, plan.bridgeName), inetDispatch("nat_from"), chainProblem(seen.inet, rules.nat)],
      `${plan.subnet} masqueraded when leaving through a non-tenant interface`,
    ),
    check(
      "forward rules",
      [inetBase("forward"), inetDispatch("forward_from"), inetDispatch("forward_to"), chainProblem(seen.inet, rules.forwardOut), chainProblem(seen.inet, rules.forwardIn)],
      "egress allowed, only established and related traffic back in",
    ),
    check("isolation rules", isolationProblems(seen.inet, plan), `traffic between ${plan.bridgeName} and other tenant bridges dropped both ways`),
    check(
      "input rules",
      [inetBase("input"), inetDispatch("input_from"), chainProblem(seen.inet, rules.input)],
      `guests reach only ${plan.gatewayIp}:${plan.metadataPort} on the host`,
    ),
  ];

  const missingTaps: string[] = [];
  for (const tap of expectedTaps) {
    const link = byName.get(tap.name);
    if (link === undefined) {
      missingTaps.push(tap.name);
      checks.push({ check: `tap ${tap.name}`, ok: false, detail: `${tap.name} does not exist` });
    } else {
      const problems = [
        link.master === plan.bridgeName ? null : `${tap.name} is attached to ${link.master ?? "no bridge"}, expected ${plan.bridgeName}`,
        link.up ? null : `${tap.name} is down`,
      ];
      checks.push(check(`tap ${tap.name}`, problems, `${tap.name} is up in ${plan.bridgeName}`));
    }
    checks.push(
      check(
        `anti-spoofing ${tap.name}`,
        [
          baseChainProblem(seen.bridge, BRIDGE_BASE_CHAIN),
          dispatchProblem(seen.bridge, tapGuardDispatch(tap.name)),
          chainProblem(seen.bridge, tapGuardChain(tap)),
        ],
        `${tap.name} may send only from ${tap.mac} / ${tap.guestIp}`,
      ),
    );
  }

  const expected = new Set(expectedTaps.map((t) => t.name));
  const strayTaps = tenantTapNames(plan, seen.links).filter((name) => !expected.has(name));
  checks.push(
    strayTaps.length === 0
      ? { check: "stray taps", ok: true, detail: "no tap without an instance" }
      : { check: "stray taps", ok: false, detail: `taps without an instance: ${strayTaps.join(", ")}` },
  );
  return { checks, strayTaps, missingTaps };
}

/**
 * What of ensureInstanceNetwork's nft transaction (the tenant's part of `inet mvm`, the TAP's part of `bridge mvm`)
 * is not in force in these live tables; empty when running it would change nothing. Checks every line the
 * transaction writes: the base chains with their hooks and dispatch rules, the tenant's four chains, its bridge in
 * the set of tenant bridges, its four dispatch entries, the TAP's guard chain and its dispatch entry. A chain
 * holding anything more or less than intended counts, as the transaction would flush it.
 */
export function instanceRulesProblems(plan: TenantNetworkPlan, tap: TapPlan, inet: LiveTable, bridge: LiveTable): string[] {
  return [
    ...INET_BASE_CHAINS.map((c) => baseChainProblem(inet, c)),
    ...Object.values(tenantInetRules(plan)).map((c: NftChain) => chainProblem(inet, c)),
    bridgeMembershipProblem(inet, plan.bridgeName),
    ...tenantInetDispatch(plan).map((d) => dispatchProblem(inet, d)),
    baseChainProblem(bridge, BRIDGE_BASE_CHAIN),
    chainProblem(bridge, tapGuardChain(tap)),
    dispatchProblem(bridge, tapGuardDispatch(tap.name)),
  ].filter((p): p is string => p !== null);
}
