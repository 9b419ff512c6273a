import { describe, expect, it } from "vitest";
import fc from "fast-check";
import type { TenantNetworkPlan } from "../../../src/core/data-plane-ports.js";
import { bridgeName } from "../../../src/core/naming.js";
import {
  INET_BASE_CHAINS,
  ensureTenantInetScript,
  removeTenantInetScript,
  tenantChainNames,
  tenantInetRules,
} from "../../../src/runtime/network/inet-ruleset.js";

function plan(netId: number, third: number): TenantNetworkPlan {
  return {
    tenantId: `t${netId}`,
    netId,
    bridgeName: bridgeName(netId),
    gatewayIp: `10.201.${third}.1`,
    subnet: `10.201.${third}.0/24`,
    prefixLen: 24,
    metadataPort: 8169,
  };
}

const a = plan(1, 1);
const b = plan(2, 2);

function lines(script: string): string[] {
  return script.trimEnd().split("\n");
}

/** Rules a script leaves in `chain`: each `flush chain` empties it, each `add rule` appends. */
function rulesAfter(script: string, chain: string): string[] {
  let rules: string[] = [];
  for (const line of lines(script)) {
    if (line === `flush chain inet mvm ${chain}`) rules = [];
    const prefix = `add rule inet mvm ${chain} `;
    if (line.startsWith(prefix)) rules.push(line.slice(prefix.length));
  }
  return rules;
}

describe("inet mvm ruleset", () => {
  it("gives one tenant masquerade, forward, isolation and metadata-only input rules", () => {
    const script = ensureTenantInetScript(a);
    const names = tenantChainNames(1);
    expect(rulesAfter(script, names.nat)).toEqual(["ip saddr 10.201.1.0/24 masquerade"]);
    expect(rulesAfter(script, names.forwardOut)).toEqual(['oifname "br-mvm-1" accept', "oifname @tenant_bridges drop", "accept"]);
    expect(rulesAfter(script, names.forwardIn)).toEqual(["iifname @tenant_bridges drop", "ct state established,related accept", "drop"]);
    expect(rulesAfter(script, names.input)).toEqual([
      "ct state established,related accept",
      "ip daddr 10.201.1.1 tcp dport 8169 accept",
      "drop",
    ]);
    expect(lines(script)).toContain('add element inet mvm tenant_bridges { "br-mvm-1" }');
    expect(lines(script)).toContain('add element inet mvm forward_from { "br-mvm-1" : jump tenant_1_fwd_out }');
    expect(lines(script)).toContain('add element inet mvm forward_to { "br-mvm-1" : jump tenant_1_fwd_in }');
    expect(lines(script)).toContain('add element inet mvm input_from { "br-mvm-1" : jump tenant_1_input }');
    expect(lines(script)).toContain('add element inet mvm nat_from { "br-mvm-1" : jump tenant_1_nat }');
  });

  it("drops traffic between every pair of tenant bridges in both directions", () => {
    // Applying both scripts in turn: both bridges are in the set, and each tenant's chains drop traffic to and from
    // any member of the set other than itself, so A→B is dropped by A's fwd_out and B's fwd_in, B→A the other way.
    const both = ensureTenantInetScript(a) + ensureTenantInetScript(b);
    for (const p of [a, b]) {
      const names = tenantChainNames(p.netId);
      expect(both).toContain(`add element inet mvm tenant_bridges { "${p.bridgeName}" }`);
      const out = rulesAfter(both, names.forwardOut);
      const back = rulesAfter(both, names.forwardIn);
      // Own-bridge traffic is accepted before the drop, any other tenant bridge hits the drop.
      expect(out.indexOf(`oifname "${p.bridgeName}" accept`)).toBeLessThan(out.indexOf("oifname @tenant_bridges drop"));
      expect(out.indexOf("oifname @tenant_bridges drop")).toBeLessThan(out.indexOf("accept"));
      // Isolation comes before the established/related exception, so no A↔B flow can ever become established.
      expect(back.indexOf("iifname @tenant_bridges drop")).toBe(0);
    }
  });

  it("keeps each tenant's chains to itself: one tenant's script never touches another's", () => {
    const scriptA = ensureTenantInetScript(a);
    expect(scriptA).not.toContain("tenant_2_");
    expect(scriptA).not.toContain("br-mvm-2");
    expect(removeTenantInetScript(a)).not.toContain("tenant_2_");
  });

  it("is idempotent: the same plan gives the same script, and it rebuilds every chain it fills", () => {
    const script = ensureTenantInetScript(a);
    expect(ensureTenantInetScript({ ...a })).toBe(script);
    const chains = [...INET_BASE_CHAINS.map((c) => c.name), ...Object.values(tenantChainNames(1))];
    for (const chain of chains) {
      const all = lines(script);
      const firstRule = all.findIndex((l) => l.startsWith(`add rule inet mvm ${chain} `));
      const flush = all.indexOf(`flush chain inet mvm ${chain}`);
      expect(flush).toBeGreaterThan(-1);
      expect(flush).toBeLessThan(firstRule);
    }
    // Nothing deletes, so a second run on the result cannot fail for a missing object.
    expect(lines(script).filter((l) => l.startsWith("delete"))).toEqual([]);
    // Nothing outside the mvm table is named.
    for (const l of lines(script)) expect(l).toMatch(/^(add|flush) (table|set|map|chain|rule|element) inet mvm\b/);
  });

  it("base chains only dispatch through the verdict maps", () => {
    const script = ensureTenantInetScript(a);
    expect(rulesAfter(script, "forward")).toEqual(["iifname vmap @forward_from", "oifname vmap @forward_to"]);
    expect(rulesAfter(script, "input")).toEqual(["iifname vmap @input_from"]);
    expect(rulesAfter(script, "postrouting")).toEqual(["oifname != @tenant_bridges iifname vmap @nat_from"]);
    expect(script).toContain("add chain inet mvm postrouting { type nat hook postrouting priority srcnat; policy accept; }");
  });

  it("removal deletes the tenant's entries before its chains, having made sure both exist", () => {
    const script = lines(removeTenantInetScript(a));
    const names = tenantChainNames(1);
    for (const chain of Object.values(names)) {
      const present = script.indexOf(`add chain inet mvm ${chain}`);
      const gone = script.indexOf(`delete chain inet mvm ${chain}`);
      expect(present).toBeGreaterThan(-1);
      expect(gone).toBeGreaterThan(present);
    }
    const lastElementDelete = Math.max(...script.flatMap((l, i) => (l.startsWith("delete element") ? [i] : [])));
    const firstChainDelete = script.findIndex((l) => l.startsWith("delete chain"));
    expect(lastElementDelete).toBeLessThan(firstChainDelete);
    expect(script).toContain('delete element inet mvm tenant_bridges { "br-mvm-1" }');
    for (const m of ["forward_from", "forward_to", "input_from", "nat_from"]) {
      expect(script).toContain(`delete element inet mvm ${m} { "br-mvm-1" }`);
    }
  });

  it("derives every tenant rule from the plan (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 4095 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 1, max: 65535 }), (netId, third, port) => {
        const p = { ...plan(netId, third), metadataPort: port };
        const r = tenantInetRules(p);
        expect(r.input.rules).toContain(`ip daddr 10.201.${third}.1 tcp dport ${port} accept`);
        expect(r.nat.rules).toEqual([`ip saddr 10.201.${third}.0/24 masquerade`]);
        expect(r.forwardOut.rules[0]).toBe(`oifname "br-mvm-${netId}" accept`);
        const names = Object.values(tenantChainNames(netId));
        expect(new Set(names).size).toBe(4);
        for (const n of names) expect(n).toMatch(/^tenant_\d+_[a-z_]+$/);
      }),
    );
  });
});
