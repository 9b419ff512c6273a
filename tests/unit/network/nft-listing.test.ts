import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseChainListing, parseElementListing, parseRulesetListing, sameRules } from "../../../src/runtime/network/nft-listing.js";

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

  it("reads every table of `nft list ruleset`, elements from the text exactly as the JSON listing gives them", () => {
    const foreign = ["table inet filter {", "\tchain forward {", "\t\ttype filter hook forward priority filter; policy drop;", "\t\tdrop", "\t}", "}"];
    const text = `${fixture("inet-two-tenants.nft.txt")}${foreign.join("\n")}\n${fixture("bridge-one-tap.nft.txt")}`;
    const tables = parseRulesetListing(text);
    expect([...tables.keys()]).toEqual(["inet mvm", "inet filter", "bridge mvm"]);
    for (const [key, name] of [
      ["inet mvm", "inet-two-tenants"],
      ["bridge mvm", "bridge-one-tap"],
    ] as const) {
      const table = tables.get(key);
      expect(table?.chains).toEqual(parseChainListing(fixture(`${name}.nft.txt`)));
      const elements = parseElementListing(fixture(`${name}.json`));
      expect(table?.sets).toEqual(elements.sets);
      expect(table?.maps).toEqual(elements.maps);
    }
    // Another table's chain of the same name stays in its own table.
    expect(tables.get("inet filter")?.chains.get("forward")?.rules).toEqual(["drop"]);
    expect(tables.get("inet mvm")?.chains.get("forward")?.rules).toEqual(["iifname vmap @forward_from", "oifname vmap @forward_to"]);
  });

  it("reads elements with quoted commas and braces, other verdicts, empty sets, and leaves out a list it cannot read", () => {
    const text = [
      "table inet mvm {",
      "\tset tenant_bridges {",
      "\t\ttype ifname",
      '\t\telements = { "br,1", "br}2",',
      '\t\t\t     "br-mvm-3" }',
      "\t}",
      "",
      "\tset empty {",
      "\t\ttype ifname",
      "\t}",
      "",
      "\tmap forward_from {",
      "\t\ttype ifname : verdict",
      '\t\telements = { "br-mvm-1" : jump tenant_1_fwd_out, "br-mvm-2" : goto tenant_2_fwd_out,',
      '\t\t\t     "br-mvm-3" : drop }',
      "\t}",
      "",
      "\tmap broken {",
      "\t\ttype ifname : verdict",
      '\t\telements = { "br-mvm-1" jump tenant_1_fwd_out }',
      "\t}",
      "",
      "\tmap unterminated {",
      "\t\ttype ifname : verdict",
      '\t\telements = { "br-mvm-1" : jump tenant_1_fwd_out',
      "\t}",
      "}",
    ].join("\n");
    const table = parseRulesetListing(text).get("inet mvm");
    expect(table?.sets.get("tenant_bridges")).toEqual(["br,1", "br}2", "br-mvm-3"]);
    expect(table?.sets.get("empty")).toEqual([]);
    expect(table?.maps.get("forward_from")).toEqual(
      new Map([
        ["br-mvm-1", "tenant_1_fwd_out"],
        ["br-mvm-2", "goto tenant_2_fwd_out"],
        ["br-mvm-3", "drop"],
      ]),
    );
    expect(table?.maps.has("broken")).toBe(false);
    expect(table?.maps.has("unterminated")).toBe(false);
    expect(table?.chains.size).toBe(0);
  });

  it("reads an empty ruleset as no tables", () => {
    expect(parseRulesetListing("").size).toBe(0);
  });
});
