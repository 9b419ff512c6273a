import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { isNoSuchDevice, parseLinkCounters, parseLinks } from "../../../src/runtime/network/ip-links.js";

// Captured from iproute2 6.1: a namespace with a bridge (10.201.9.1/24) and a TAP attached to it.
const fixture = (name: string) => readFileSync(join(import.meta.dirname, "fixtures", name), "utf8");

describe("iproute2 JSON parsing", () => {
  it("reads kind, master, admin state and IPv4 addresses of each link", () => {
    const links = parseLinks(fixture("ip-addr-bridge-and-tap.json"));
    expect(links.map((l) => l.name)).toEqual(["lo", "br-x", "tn9i3"]);
    expect(links[1]).toEqual({ name: "br-x", kind: "bridge", master: null, up: true, ipv4: ["10.201.9.1/24"] });
    expect(links[2]).toMatchObject({ name: "tn9i3", kind: "tun", master: "br-x", up: true, ipv4: [] });
    expect(links[0]).toMatchObject({ name: "lo", kind: null, up: false });
  });

  it("reads byte counters, and knows iproute2's words for a missing device", () => {
    expect(parseLinkCounters(fixture("ip-link-stats-tap.json"))).toEqual({ rxBytes: 0, txBytes: 0 });
    const json = JSON.stringify([{ ifname: "x", stats64: { rx: { bytes: 1234 }, tx: { bytes: 99 } } }]);
    expect(parseLinkCounters(json)).toEqual({ rxBytes: 1234, txBytes: 99 });
    expect(isNoSuchDevice('Device "tn1i3" does not exist.')).toBe(true);
    expect(isNoSuchDevice('Cannot find device "tn1i3"')).toBe(true);
    expect(isNoSuchDevice("RTNETLINK answers: Operation not permitted")).toBe(false);
  });

  it("reads empty output as no links", () => {
    expect(parseLinks("")).toEqual([]);
  });
});
