import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { TenantNetworkPlan } from "../../../src/core/data-plane-ports.js";
import { bridgeName, macAddress, tapName } from "../../../src/core/naming.js";
import type { LinkState } from "../../../src/runtime/network/ip-links.js";
import { emptyLiveTable, parseChainListing, parseElementListing, type LiveTable } from "../../../src/runtime/network/nft-listing.js";
import { inspectTenantNetwork, instanceRulesProblems, type TenantNetworkObservation } from "../../../src/runtime/network/tenant-network-inspection.js";

// The nft fixtures are real nft 1.0.6 output after applying the ensure scripts for tenants 1 and 2 and TAP tn1i3,
// so a clean report here also proves the expected rules are spelled the way nft prints them.
const fixture = (name: string) => readFileSync(join(import.meta.dirname, "fixtures", name), "utf8");
const liveTable = (text: string, json: string): LiveTable => ({ chains: parseChainListing(fixture(text)), ...parseElementListing(fixture(json)) });

const plan: TenantNetworkPlan = {
  tenantId: "acme",
  netId: 1,
  bridgeName: bridgeName(1),
  gatewayIp: "10.201.1.1",
  subnet: "10.201.1.0/24",
  prefixLen: 24,
  metadataPort: 8169,
};
const tap = { name: tapName(1, 3), mac: macAddress(1, 3), guestIp: "10.201.1.3" };

/** Links kept mutable so each test can damage its own copy. */
type Observation = TenantNetworkObservation & { links: LinkState[] };

function healthy(): Observation {
  const links: LinkState[] = [
    { name: "lo", kind: null, master: null, up: true, ipv4: ["127.0.0.1/8"] },
    { name: "br-mvm-1", kind: "bridge", master: null, up: true, ipv4: ["10.201.1.1/24"] },
    { name: "tn1i3", kind: "tun", master: "br-mvm-1", up: true, ipv4: [] },
    { name: "br-mvm-2", kind: "bridge", master: null, up: true, ipv4: ["10.201.2.1/24"] },
    { name: "tn2i3", kind: "tun", master: "br-mvm-2", up: true, ipv4: [] },
  ];
  return {
    links,
    ipForward: "1\n",
    inet: liveTable("inet-two-tenants.nft.txt", "inet-two-tenants.json"),
    bridge: liveTable("bridge-one-tap.nft.txt", "bridge-one-tap.json"),
  };
}

const failing = (o: TenantNetworkObservation, taps = [tap]) =>
  inspectTenantNetwork(plan, taps, o).checks.filter((c) => !c.ok).map((c) => c.check);

describe("tenant network inspection", () => {
  it("reports a correctly set up tenant as clean, with every check named", () => {
    const r = inspectTenantNetwork(plan, [tap], healthy());
    expect(r.checks.filter((c) => !c.ok)).toEqual([]);
    expect(r.checks.map((c) => c.check)).toEqual([
      "bridge",
      "bridge up",
      "gateway address",
      "ip forwarding",
      "nat rule",
      "forward rules",
      "isolation rules",
      "input rules",
      "tap tn1i3",
      "anti-spoofing tn1i3",
      "stray taps",
    ]);
    expect(r.strayTaps).toEqual([]);
    expect(r.missingTaps).toEqual([]);
  });

  it("finds a deleted isolation rule", () => {
    const o = healthy();
    const chain = o.inet.chains.get("tenant_1_fwd_out");
    chain!.rules = chain!.rules.filter((r) => r !== "oifname @tenant_bridges drop");
    expect(failing(o)).toEqual(["forward rules", "isolation rules"]);
    const detail = inspectTenantNetwork(plan, [tap], o).checks.find((c) => c.check === "isolation rules")!.detail;
    expect(detail).toContain('tenant_1_fwd_out lacks "oifname @tenant_bridges drop"');
  });

  it("finds the bridge missing from the tenant set (isolation and NAT both depend on it)", () => {
    const o = healthy();
    o.inet.sets.set("tenant_bridges", ["br-mvm-2"]);
    expect(failing(o)).toEqual(["nat rule", "isolation rules"]);
  });

  it("finds a missing dispatch entry, a wrong input rule and a changed base chain", () => {
    const o = healthy();
    o.inet.maps.get("input_from")!.delete("br-mvm-1");
    expect(failing(o)).toEqual(["input rules"]);
    const o2 = healthy();
    o2.inet.chains.get("tenant_1_input")!.rules[1] = "ip daddr 10.201.1.1 tcp dport 22 accept";
    expect(failing(o2)).toEqual(["input rules"]);
    const o3 = healthy();
    o3.inet.chains.get("forward")!.hook = "type filter hook forward priority filter; policy drop;";
    expect(failing(o3)).toEqual(["forward rules"]);
  });

  it("reports everything of the tenant as wrong when the table is gone", () => {
    const o = { ...healthy(), inet: emptyLiveTable(), bridge: emptyLiveTable() };
    expect(failing(o)).toEqual(["nat rule", "forward rules", "isolation rules", "input rules", "anti-spoofing tn1i3"]);
  });

  it("finds the bridge down, without its address, or replaced by another kind of interface", () => {
    const o = healthy();
    o.links = o.links.map((l) => (l.name === "br-mvm-1" ? { ...l, up: false, ipv4: ["10.9.9.9/24"] } : l));
    expect(failing(o)).toEqual(["bridge up", "gateway address"]);
    const o2 = healthy();
    o2.links = o2.links.map((l) => (l.name === "br-mvm-1" ? { ...l, kind: "veth" } : l));
    expect(failing(o2)).toEqual(["bridge"]);
    const o3 = { ...healthy(), ipForward: "0" };
    expect(failing(o3)).toEqual(["ip forwarding"]);
  });

  it("finds a missing TAP, a TAP on the wrong bridge, and anti-spoofing rules for another address", () => {
    const missing = healthy();
    missing.links = missing.links.filter((l) => l.name !== "tn1i3");
    const r = inspectTenantNetwork(plan, [tap], missing);
    expect(r.missingTaps).toEqual(["tn1i3"]);
    expect(failing(missing)).toEqual(["tap tn1i3"]);

    const moved = healthy();
    moved.links = moved.links.map((l) => (l.name === "tn1i3" ? { ...l, master: "br-mvm-2" } : l));
    expect(failing(moved)).toEqual(["tap tn1i3"]);

    expect(failing(healthy(), [{ ...tap, guestIp: "10.201.1.9" }])).toEqual(["anti-spoofing tn1i3"]);
  });

  it("reports TAPs of this tenant that no instance expects, but not other tenants' TAPs", () => {
    const o = healthy();
    o.links.push({ name: "tn1i9", kind: "tun", master: null, up: false, ipv4: [] });
    o.links.push({ name: "tn7i4", kind: "tun", master: "br-mvm-1", up: true, ipv4: [] });
    o.links.push({ name: "eth-x", kind: "veth", master: "br-mvm-1", up: true, ipv4: [] });
    const r = inspectTenantNetwork(plan, [tap], o);
    expect(r.strayTaps).toEqual(["tn1i9", "tn7i4"]);
    expect(failing(o)).toEqual(["stray taps"]);
    // With no expected TAP at all, the one the fixture holds is stray too.
    expect(inspectTenantNetwork(plan, [], healthy()).strayTaps).toEqual(["tn1i3"]);
  });

  describe("whether ensureInstanceNetwork's nft transaction would change anything", () => {
    const problems = (o: TenantNetworkObservation, t = tap, p = plan) => instanceRulesProblems(p, t, o.inet, o.bridge);

    it("finds nothing to do where the tenant's rules and the TAP's guard are in force, for either tenant", () => {
      expect(problems(healthy())).toEqual([]);
      // Tenant 2 is in the inet fixture too, but its TAP has no guard there.
      const two = { ...plan, netId: 2, bridgeName: bridgeName(2), gatewayIp: "10.201.2.1", subnet: "10.201.2.0/24" };
      const tap2 = { name: tapName(2, 3), mac: macAddress(2, 3), guestIp: "10.201.2.3" };
      expect(problems(healthy(), tap2, two)).toEqual([`chain tap_${tap2.name} is missing`, `map tap_guard has no entry for ${tap2.name}`]);
    });

    it("finds every part missing from empty tables", () => {
      const empty = { ...healthy(), inet: emptyLiveTable(), bridge: emptyLiveTable() };
      // 3 inet base chains, 4 tenant chains, the set, 4 dispatch entries, the bridge base chain, guard and its entry.
      expect(problems(empty)).toHaveLength(3 + 4 + 1 + 4 + 1 + 1 + 1);
    });

    it("counts a rule removed, a rule added, a changed hook, a lost set member and a redirected entry", () => {
      const cases: [string, (o: Observation) => void, RegExp][] = [
        ["rule removed", (o) => o.inet.chains.get("tenant_1_input")?.rules.pop(), /chain tenant_1_input holds/],
        ["rule added", (o) => o.bridge.chains.get(`tap_${tap.name}`)?.rules.unshift("accept"), /chain tap_tn1i3 holds/],
        ["hook changed", (o) => void ((o.inet.chains.get("forward") as { hook: string | null }).hook = "type filter hook forward priority filter; policy drop;"), /base chain forward is/],
        ["set member lost", (o) => o.inet.sets.set("tenant_bridges", ["br-mvm-2"]), /does not hold br-mvm-1/],
        ["entry redirected", (o) => o.inet.maps.get("nat_from")?.set("br-mvm-1", "tenant_2_nat"), /map nat_from sends br-mvm-1 to tenant_2_nat/],
        ["guard entry gone", (o) => o.bridge.maps.get("tap_guard")?.delete(tap.name), /map tap_guard has no entry for tn1i3/],
      ];
      for (const [what, damage, expected] of cases) {
        const o = healthy();
        damage(o);
        const found = problems(o);
        expect(found, what).toHaveLength(1);
        expect(found[0], what).toMatch(expected);
      }
    });

    it("counts a guard for another MAC or address", () => {
      expect(problems(healthy(), { ...tap, mac: macAddress(1, 4) })).toEqual([expect.stringMatching(/chain tap_tn1i3 holds/)]);
    });
  });
});
