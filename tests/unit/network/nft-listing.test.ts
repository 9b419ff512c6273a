import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseChainListing, parseElementListing, sameRules } from "../../../src/runtime/network/nft-listing.js";

// Captured from nft 1.0.6 after applying the ensure scripts of two tenants (net_id 1 and 2) and one TAP.
const fixture = (name: string) => readFileSync(join(import.meta.dirname, "fixtures", name), "utf8");

describe("nft listing parser", () => {
  it("reads chains with their hook and rules from `nft list table`", () => {
    const chains = parseChainListing(fixture("inet-two-tenants.nft.txt"));
    expect(chains.get("forward")).toEqual({
      hook: "type filter hook forward priority filter; policy accept;",
      rules: ["iifname vmap @forward_from", "oifname vmap @forward_to"],
    });
    expect(chains.get("tenant_2_input")).toEqual({
      hook: null,
      rules: ["ct state established,related accept", "ip daddr 10.201.2.1 tcp dport 8169 accept", "drop"],
    });
    // Sets and maps are not chains.
    expect(chains.has("tenant_bridges")).toBe(false);
    expect([...chains.keys()]).toHaveLength(3 + 2 * 4);
  });

  it("reads set members and map entries from `nft -j list table`, however many there are", () => {
    const { sets, maps } = parseElementListing(fixture("inet-two-tenants.json"));
    expect(sets.get("tenant_bridges")).toEqual(["br-mvm-1", "br-mvm-2"]);
    expect(maps.get("nat_from")).toEqual(
      new Map([
        ["br-mvm-1", "tenant_1_nat"],
        ["br-mvm-2", "tenant_2_nat"],
      ]),
    );
    const bridge = parseElementListing(fixture("bridge-one-tap.json"));
    expect(bridge.maps.get("tap_guard")).toEqual(new Map([["tn1i3", "tap_tn1i3"]]));
  });

  it("treats an empty set (no elem key) as empty", () => {
    const json = JSON.stringify({ nftables: [{ set: { family: "inet", name: "tenant_bridges", table: "mvm", type: "ifname" } }] });
    expect(parseElementListing(json).sets.get("tenant_bridges")).toEqual([]);
  });

  it("compares rule lists exactly and in order", () => {
    expect(sameRules(["a", "b"], ["a", "b"])).toBe(true);
    expect(sameRules(["b", "a"], ["a", "b"])).toBe(false);
    expect(sameRules(["a"], ["a", "b"])).toBe(false);
    expect(sameRules(undefined, [])).toBe(false);
  });
});
