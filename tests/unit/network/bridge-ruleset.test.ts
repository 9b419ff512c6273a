import { describe, expect, it } from "vitest";
import { macAddress, tapName } from "../../../src/core/naming.js";
import { ensureTapGuardScript, removeTapGuardScript, tapChainName, tapGuardChain } from "../../../src/runtime/network/bridge-ruleset.js";

const tap = { name: tapName(1, 3), mac: macAddress(1, 3), guestIp: "10.201.1.3" };

describe("bridge mvm anti-spoofing ruleset", () => {
  it("lets a TAP send only from its own MAC and IP, ARP included, and only IPv4 and ARP", () => {
    expect(tapGuardChain(tap)).toEqual({
      name: "tap_tn1i3",
      rules: [
        "ether saddr != 02:fc:00:01:00:03 drop",
        "arp saddr ether != 02:fc:00:01:00:03 drop",
        "arp saddr ip != 10.201.1.3 drop",
        "ip saddr != 10.201.1.3 drop",
        "ether type != { ip, arp } drop",
      ],
    });
  });

  it("hooks the TAP's chain in by its interface name, after rebuilding the chain", () => {
    const lines = ensureTapGuardScript(tap).trimEnd().split("\n");
    expect(lines).toContain("add rule bridge mvm prerouting iifname vmap @tap_guard");
    expect(lines).toContain("add chain bridge mvm prerouting { type filter hook prerouting priority filter; policy accept; }");
    const flush = lines.indexOf("flush chain bridge mvm tap_tn1i3");
    const element = lines.indexOf('add element bridge mvm tap_guard { "tn1i3" : jump tap_tn1i3 }');
    expect(flush).toBeGreaterThan(-1);
    expect(element).toBeGreaterThan(flush);
    expect(ensureTapGuardScript({ ...tap })).toBe(ensureTapGuardScript(tap));
    for (const l of lines) expect(l).toMatch(/^(add|flush) (table|map|chain|rule|element) bridge mvm\b/);
  });

  it("two TAPs get separate chains", () => {
    const other = { name: tapName(1, 4), mac: macAddress(1, 4), guestIp: "10.201.1.4" };
    expect(tapChainName(other.name)).not.toBe(tapChainName(tap.name));
    expect(ensureTapGuardScript(other)).not.toContain("tn1i3");
  });

  it("removal drops the map entry before the chain and never touches other TAPs", () => {
    const lines = removeTapGuardScript("tn1i3").trimEnd().split("\n");
    const delElement = lines.indexOf('delete element bridge mvm tap_guard { "tn1i3" }');
    const delChain = lines.indexOf("delete chain bridge mvm tap_tn1i3");
    expect(lines.indexOf("add chain bridge mvm tap_tn1i3")).toBeLessThan(delElement);
    expect(delElement).toBeGreaterThan(-1);
    expect(delChain).toBeGreaterThan(delElement);
    expect(lines.join("\n")).not.toMatch(/tn1i4/);
  });
});
