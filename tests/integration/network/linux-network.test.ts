// The Network adapter against the real kernel: bridges, TAPs, nftables, inside namespaces this test creates.
//
// NETWORK SAFETY: every address used here lives only inside namespaces named mvm-nt-<pid>-*, created below and
// deleted in afterAll whatever happens; nothing is configured in, or routed from, the root namespace. Guests are
// stood in for by veth pairs: the bridge end carries the TAP's name, the other end sits in a per-guest namespace
// with the guest's MAC and IP.

import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TapPlan, TenantNetworkPlan } from "../../../src/core/data-plane-ports.js";
import { bridgeName, macAddress, tapName } from "../../../src/core/naming.js";
import { execaHostCommand } from "../../../src/runtime/exec/host-command.js";
import { createLinuxNetwork } from "../../../src/runtime/network/linux-network.js";

function missingPrerequisite(): string | null {
  if (process.platform !== "linux") return "not linux";
  if (process.getuid?.() !== 0) return "needs root (network namespaces, nftables)";
  for (const [program, args] of [
    ["ip", ["-V"]],
    ["nft", ["--version"]],
    ["busybox", ["true"]],
  ] as const) {
    try {
      execFileSync(program, [...args], { stdio: "ignore" });
    } catch {
      return `${program} is not available`;
    }
  }
  return null;
}

const skipReason = missingPrerequisite();
if (skipReason !== null) console.log(`skipping network integration tests: ${skipReason}`);

const prefix = `mvm-nt-${process.pid}`;
const dataPlaneNs = `${prefix}-dp`;
const createdNamespaces = new Set<string>([dataPlaneNs]);
const children: ChildProcess[] = [];

const METADATA_PORT = 8169;
const OTHER_HOST_PORT = 8170;

function tenant(netId: number): TenantNetworkPlan {
  return {
    tenantId: `tenant-${netId}`,
    netId,
    bridgeName: bridgeName(netId),
    gatewayIp: `10.201.${netId}.1`,
    subnet: `10.201.${netId}.0/24`,
    prefixLen: 24,
    metadataPort: METADATA_PORT,
  };
}

const A = tenant(1);
const B = tenant(2);

interface Guest {
  ns: string;
  plan: TenantNetworkPlan;
  tap: TapPlan;
}

function guest(plan: TenantNetworkPlan, offset: number, label: string): Guest {
  return {
    ns: `${prefix}-${label}`,
    plan,
    tap: { name: tapName(plan.netId, offset), mac: macAddress(plan.netId, offset), guestIp: `10.201.${plan.netId}.${offset}` },
  };
}

const a1 = guest(A, 3, "ga1");
const a2 = guest(A, 4, "ga2");
const b1 = guest(B, 3, "gb1");

async function sh(file: string, args: string[], input?: string): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  return execaHostCommand(file, args, input === undefined ? { timeoutMs: 20_000 } : { timeoutMs: 20_000, input });
}

async function must(file: string, args: string[], input?: string): Promise<string> {
  const r = await sh(file, args, input);
  if (r.exitCode !== 0) throw new Error(`${file} ${args.join(" ")}: exit ${r.exitCode}: ${r.stderr}`);
  return r.stdout;
}

/** Creates a guest namespace whose eth0 is the peer of a veth named like the guest's TAP in the data-plane netns. */
async function addGuest(g: Guest): Promise<void> {
  createdNamespaces.add(g.ns);
  await must("ip", ["netns", "add", g.ns]);
  await must("ip", ["-n", g.ns, "link", "set", "lo", "up"]);
  await must("ip", ["-n", dataPlaneNs, "link", "add", g.tap.name, "type", "veth", "peer", "name", "eth0", "netns", g.ns]);
  await must("ip", ["-n", g.ns, "link", "set", "eth0", "address", g.tap.mac]);
  await must("ip", ["-n", g.ns, "addr", "add", `${g.tap.guestIp}/${g.plan.prefixLen}`, "dev", "eth0"]);
  await must("ip", ["-n", g.ns, "link", "set", "eth0", "up"]);
  await must("ip", ["-n", g.ns, "route", "add", "default", "via", g.plan.gatewayIp]);
}

async function ping(from: Guest, address: string, source?: string): Promise<boolean> {
  const args = ["netns", "exec", from.ns, "busybox", "ping", "-c1", "-W1", ...(source ? ["-I", source] : []), address];
  return (await sh("ip", args)).exitCode === 0;
}

const CONNECT_SCRIPT = `
const [host, port] = process.argv.slice(1);
const s = require("net").connect({ host, port: Number(port), timeout: 1500 });
s.on("connect", () => process.exit(0));
s.on("timeout", () => process.exit(2));
s.on("error", (e) => process.exit(e.code === "ECONNREFUSED" ? 3 : 4));`;

type ConnectOutcome = "connected" | "timed out" | "refused" | "failed";

async function tcpConnect(ns: string, host: string, port: number): Promise<ConnectOutcome> {
  const r = await sh("ip", ["netns", "exec", ns, process.execPath, "-e", CONNECT_SCRIPT, host, String(port)]);
  return (({ 0: "connected", 2: "timed out", 3: "refused" }) as Record<number, ConnectOutcome>)[r.exitCode] ?? "failed";
}

/** TCP listeners on host addresses inside the data-plane namespace (the metadata endpoint and a stand-in service). */
async function startListeners(endpoints: [string, number][]): Promise<void> {
  const script = `
const net = require("net");
const endpoints = JSON.parse(process.argv[1]);
let ready = 0;
for (const [host, port] of endpoints) {
  // Probes hang up at once; a reset must not end the listener.
  net.createServer((c) => { c.on("error", () => {}); c.end("hello\\n"); }).listen(port, host, () => { if (++ready === endpoints.length) console.log("ready"); });
}`;
  const child = spawn("ip", ["netns", "exec", dataPlaneNs, process.execPath, "-e", script, JSON.stringify(endpoints)], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    let err = "";
    child.stderr?.on("data", (d: Buffer) => (err += d.toString()));
    child.stdout?.on("data", (d: Buffer) => d.toString().includes("ready") && resolve());
    child.on("exit", (code) => reject(new Error(`listener exited (${code}): ${err}`)));
  });
}

async function nftRuleHandle(chain: string, rule: string): Promise<string> {
  const listing = await must("ip", ["netns", "exec", dataPlaneNs, "nft", "-a", "list", "chain", "inet", "mvm", chain]);
  const line = listing.split("\n").find((l) => l.trim().startsWith(`${rule} # handle `));
  if (line === undefined) throw new Error(`rule "${rule}" not in ${chain}:\n${listing}`);
  return line.trim().split(" ").at(-1) as string;
}

const nftIn = (args: string[]) => must("ip", ["netns", "exec", dataPlaneNs, "nft", ...args]);
const network = createLinuxNetwork({ netns: dataPlaneNs, createNetns: true });

describe.skipIf(skipReason !== null)("linux network adapter in a test namespace", () => {
  beforeAll(async () => {
    await network.ensureTenant(A);
    await network.ensureTenant(B);
    // Twice on purpose: ensureTenant must be idempotent.
    await network.ensureTenant(A);
    for (const g of [a1, a2, b1]) {
      await addGuest(g);
      await network.ensureTap(g.plan, g.tap);
    }
    await network.ensureTap(a1.plan, a1.tap);
    await startListeners([
      [A.gatewayIp, METADATA_PORT],
      [A.gatewayIp, OTHER_HOST_PORT],
      [B.gatewayIp, METADATA_PORT],
    ]);
  });

  afterAll(async () => {
    for (const child of children) if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, "SIGTERM");
    for (const ns of createdNamespaces) await sh("ip", ["netns", "del", ns]);
    const left = (await must("ip", ["netns", "list"])).split("\n").filter((l) => l.startsWith(prefix));
    expect(left).toEqual([]);
  });

  it("lets guests of one tenant reach each other", async () => {
    const brNetfilter = (await sh("ip", ["netns", "exec", dataPlaneNs, "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"])).stdout.trim();
    console.log(`bridge-nf-call-iptables in the data-plane namespace: ${brNetfilter || "absent (br_netfilter not loaded)"}`);
    expect(await ping(a1, a2.tap.guestIp)).toBe(true);
    expect(await ping(a2, a1.tap.guestIp)).toBe(true);
    expect(await tcpConnect(a1.ns, A.gatewayIp, METADATA_PORT)).toBe("connected");
  });

  it("behaves the same when bridged frames bypass netfilter (bridge-nf-call-iptables off)", async (ctx) => {
    const sysctl = (value?: string) =>
      sh("ip", ["netns", "exec", dataPlaneNs, "sysctl", value === undefined ? "-n" : "-w", `net.bridge.bridge-nf-call-iptables${value === undefined ? "" : `=${value}`}`]);
    const original = (await sysctl()).stdout.trim();
    if (original === "") ctx.skip(); // br_netfilter not loaded: the "off" case is the only one there is.
    try {
      expect((await sysctl("0")).exitCode).toBe(0);
      expect(await ping(a1, a2.tap.guestIp)).toBe(true);
      expect(await ping(a1, b1.tap.guestIp)).toBe(false);
      expect(await tcpConnect(a1.ns, A.gatewayIp, METADATA_PORT)).toBe("connected");
      expect(await tcpConnect(a1.ns, A.gatewayIp, OTHER_HOST_PORT)).toBe("timed out");
    } finally {
      await sysctl(original);
    }
  });

  it("keeps tenants apart in both directions, though the host routes between their subnets", async () => {
    expect(await ping(a1, b1.tap.guestIp)).toBe(false);
    expect(await ping(b1, a1.tap.guestIp)).toBe(false);
    expect(await ping(b1, a2.tap.guestIp)).toBe(false);
    // The other tenant's gateway is a host address: the input rules drop it too.
    expect(await ping(a1, B.gatewayIp)).toBe(false);
    expect(await tcpConnect(b1.ns, A.gatewayIp, METADATA_PORT)).toBe("timed out");
  });

  it("drops the path between tenants because of mvm's rules: with them flushed it opens, verify(fix) closes it", async () => {
    for (const chain of ["tenant_1_fwd_out", "tenant_1_fwd_in", "tenant_2_fwd_out", "tenant_2_fwd_in"]) {
      await nftIn(["flush", "chain", "inet", "mvm", chain]);
    }
    expect(await ping(a1, b1.tap.guestIp)).toBe(true);

    const broken = await network.verify(A, [a1.tap, a2.tap], false);
    expect(broken.ok).toBe(false);
    expect(broken.checks.filter((c) => !c.ok).map((c) => c.check)).toEqual(["forward rules", "isolation rules"]);

    const fixedA = await network.verify(A, [a1.tap, a2.tap], true);
    const fixedB = await network.verify(B, [b1.tap], true);
    expect(fixedA.ok && fixedB.ok).toBe(true);
    expect(fixedA.checks.find((c) => c.check === "isolation rules")?.detail).toMatch(/; fixed$/);
    expect(await ping(a1, b1.tap.guestIp)).toBe(false);
    expect(await ping(b1, a1.tap.guestIp)).toBe(false);
  });

  it("lets a guest reach its gateway's metadata port but no other host port", async () => {
    // The second listener is there and answers from inside the namespace: a guest's attempt dies in the firewall.
    expect(await tcpConnect(dataPlaneNs, A.gatewayIp, OTHER_HOST_PORT)).toBe("connected");
    expect(await tcpConnect(a1.ns, A.gatewayIp, METADATA_PORT)).toBe("connected");
    expect(await tcpConnect(a1.ns, A.gatewayIp, OTHER_HOST_PORT)).toBe("timed out");
    expect(await tcpConnect(b1.ns, B.gatewayIp, METADATA_PORT)).toBe("connected");
    expect(await ping(a1, A.gatewayIp)).toBe(false);
  });

  it("drops a guest's packets with a spoofed source IP or MAC", async () => {
    const spoofed = "10.201.1.50";
    await must("ip", ["-n", a1.ns, "addr", "add", `${spoofed}/32`, "dev", "eth0"]);
    // a2 would answer the spoofed address at once: it needs no ARP for it.
    await must("ip", ["-n", a2.ns, "neigh", "replace", spoofed, "lladdr", a1.tap.mac, "dev", "eth0"]);
    expect(await ping(a1, a2.tap.guestIp)).toBe(true);
    expect(await ping(a1, a2.tap.guestIp, spoofed)).toBe(false);

    // Without the TAP's guard entry the same packet passes, so the guard is what dropped it.
    await nftIn(["delete", "element", "bridge", "mvm", "tap_guard", `{ "${a1.tap.name}" }`]);
    expect(await ping(a1, a2.tap.guestIp, spoofed)).toBe(true);
    const report = await network.verify(A, [a1.tap, a2.tap], true);
    expect(report.checks.find((c) => c.check === `anti-spoofing ${a1.tap.name}`)).toMatchObject({ ok: true });
    expect(report.checks.find((c) => c.check === `anti-spoofing ${a1.tap.name}`)?.detail).toMatch(/has no entry for tn1i3; fixed/);
    expect(await ping(a1, a2.tap.guestIp, spoofed)).toBe(false);
    await must("ip", ["-n", a1.ns, "addr", "del", `${spoofed}/32`, "dev", "eth0"]);

    await must("ip", ["-n", a1.ns, "link", "set", "eth0", "address", "02:fc:00:01:00:63"]);
    await must("ip", ["-n", a1.ns, "neigh", "flush", "dev", "eth0"]);
    expect(await ping(a1, a2.tap.guestIp)).toBe(false);
    await must("ip", ["-n", a1.ns, "link", "set", "eth0", "address", a1.tap.mac]);
    expect(await ping(a1, a2.tap.guestIp)).toBe(true);
  });

  it("verify reports clean, finds a deleted rule, a deleted TAP and a stray TAP, and fix repairs them", async () => {
    const b5: TapPlan = { name: tapName(2, 5), mac: macAddress(2, 5), guestIp: "10.201.2.5" };
    await network.ensureTap(B, b5);
    const clean = await network.verify(B, [b1.tap, b5], false);
    expect(clean.checks.filter((c) => !c.ok)).toEqual([]);
    expect(clean.ok).toBe(true);
    expect((await network.verify(A, [a1.tap, a2.tap], false)).ok).toBe(true);

    await nftIn(["delete", "rule", "inet", "mvm", "tenant_2_input", "handle", await nftRuleHandle("tenant_2_input", "drop")]);
    await must("ip", ["-n", dataPlaneNs, "link", "del", b5.name]);
    await must("ip", ["-n", dataPlaneNs, "tuntap", "add", "dev", "tn2i9", "mode", "tap"]);
    await must("ip", ["-n", dataPlaneNs, "link", "set", "tn2i9", "master", B.bridgeName]);

    const faulty = await network.verify(B, [b1.tap, b5], false);
    expect(faulty.ok).toBe(false);
    expect(faulty.missingTaps).toEqual([b5.name]);
    expect(faulty.strayTaps).toEqual(["tn2i9"]);
    expect(faulty.checks.filter((c) => !c.ok).map((c) => c.check)).toEqual(["input rules", `tap ${b5.name}`, "stray taps"]);
    // Reporting changed nothing.
    expect((await network.verify(B, [b1.tap, b5], false)).ok).toBe(false);

    const repaired = await network.verify(B, [b1.tap, b5], true);
    expect(repaired.ok).toBe(true);
    expect(repaired.strayTaps).toEqual(["tn2i9"]);
    for (const name of ["input rules", `tap ${b5.name}`, "stray taps"]) {
      expect(repaired.checks.find((c) => c.check === name)?.detail).toMatch(/; fixed$/);
    }
    const after = await network.verify(B, [b1.tap, b5], false);
    expect(after.checks.filter((c) => !c.ok)).toEqual([]);
    expect(await network.tapCounters("tn2i9")).toBeNull();
    // The restored drop rule works again: B's guest cannot reach a host port other than metadata.
    expect(await tcpConnect(b1.ns, B.gatewayIp, OTHER_HOST_PORT)).toBe("timed out");
    await network.removeTap(B, b5.name);
  });

  it("creates a real TAP with readable counters and removes it with its rules, idempotently", async () => {
    const t: TapPlan = { name: tapName(1, 7), mac: macAddress(1, 7), guestIp: "10.201.1.7" };
    await network.ensureTap(A, t);
    await network.ensureTap(A, t);
    const kind = await must("ip", ["-n", dataPlaneNs, "-d", "-j", "link", "show", "dev", t.name]);
    expect(JSON.parse(kind)[0]).toMatchObject({ ifname: t.name, master: A.bridgeName, linkinfo: { info_kind: "tun" } });
    const counters = await network.tapCounters(t.name);
    expect(counters).not.toBeNull();
    expect(Number.isInteger(counters?.rxBytes) && Number.isInteger(counters?.txBytes)).toBe(true);
    // A guest's traffic shows in its TAP's counters (the veth stand-in counts like a TAP).
    const before = (await network.tapCounters(a1.tap.name))?.rxBytes ?? -1;
    await ping(a1, a2.tap.guestIp);
    expect((await network.tapCounters(a1.tap.name))?.rxBytes ?? -1).toBeGreaterThan(before);

    await network.removeTap(A, t.name);
    await network.removeTap(A, t.name);
    expect(await network.tapCounters(t.name)).toBeNull();
    expect(await nftIn(["list", "table", "bridge", "mvm"])).not.toContain(`tap_${t.name}`);
  });

  it("ensureInstanceNetwork makes a tenant and its TAP from nothing, idempotently, as ensureTenant + ensureTap do", async () => {
    const C = tenant(3);
    const c1: TapPlan = { name: tapName(3, 2), mac: macAddress(3, 2), guestIp: "10.201.3.2" };
    const c2: TapPlan = { name: tapName(3, 3), mac: macAddress(3, 3), guestIp: "10.201.3.3" };
    try {
      await network.ensureInstanceNetwork(C, c1);
      const bridge = JSON.parse(await must("ip", ["-n", dataPlaneNs, "-d", "-j", "addr", "show", "dev", C.bridgeName]))[0];
      expect(bridge.linkinfo.info_kind).toBe("bridge");
      expect(bridge.flags).toContain("UP");
      expect(bridge.addr_info.map((a: { local: string }) => a.local)).toContain(C.gatewayIp);
      const tap = JSON.parse(await must("ip", ["-n", dataPlaneNs, "-d", "-j", "link", "show", "dev", c1.name]))[0];
      expect(tap).toMatchObject({ master: C.bridgeName, linkinfo: { info_kind: "tun" } });
      expect(tap.flags).toContain("UP");
      expect(await must("ip", ["netns", "exec", dataPlaneNs, "cat", "/proc/sys/net/ipv4/ip_forward"])).toMatch(/^1/);
      // Second instance of the same tenant (bridge present) and a repeat of the first: both leave a clean network.
      await network.ensureInstanceNetwork(C, c2);
      const dropHandle = await nftRuleHandle("tenant_3_input", "drop");
      await network.ensureInstanceNetwork(C, c1);
      const report = await network.verify(C, [c1, c2], false);
      expect(report.checks.filter((c) => !c.ok)).toEqual([]);
      expect(report.ok).toBe(true);
      // With everything in force the repeat wrote nothing: a transaction would have re-added the rule (new handle).
      expect(await nftRuleHandle("tenant_3_input", "drop")).toBe(dropHandle);
      // A rule deleted by hand is back after the next ensure.
      await nftIn(["delete", "rule", "inet", "mvm", "tenant_3_input", "handle", dropHandle]);
      expect((await network.verify(C, [c1, c2], false)).ok).toBe(false);
      await network.ensureInstanceNetwork(C, c1);
      expect(await nftRuleHandle("tenant_3_input", "drop")).not.toBe(dropHandle);
      expect((await network.verify(C, [c1, c2], false)).ok).toBe(true);
      // The guard is the TAP's own: the right MAC and IP in its chain.
      const guard = await nftIn(["list", "chain", "bridge", "mvm", `tap_${c1.name}`]);
      expect(guard).toContain(c1.mac);
      expect(guard).toContain(c1.guestIp);
      // An interface squatting on the bridge's name is refused, not taken over.
      const D = tenant(4);
      await must("ip", ["-n", dataPlaneNs, "tuntap", "add", "dev", D.bridgeName, "mode", "tap"]);
      await expect(network.ensureInstanceNetwork(D, { name: tapName(4, 2), mac: macAddress(4, 2), guestIp: "10.201.4.2" })).rejects.toThrow(/not a bridge/);
      await must("ip", ["-n", dataPlaneNs, "link", "del", D.bridgeName]);
      await network.removeTenant(D);
    } finally {
      await network.removeTenant(C);
    }
    expect((await network.verify(A, [a1.tap, a2.tap], false)).ok).toBe(true);
  });

  it("lists the net IDs of mvm's bridges and TAPs, and removes what a tenant with one of them left, by its net ID alone", async () => {
    const E = tenant(5);
    const e1: TapPlan = { name: tapName(5, 2), mac: macAddress(5, 2), guestIp: "10.201.5.2" };
    await network.ensureInstanceNetwork(E, e1);
    expect(await network.netIdsPresent()).toEqual(expect.arrayContaining([1, 5]));
    expect(await nftIn(["list", "table", "inet", "mvm"])).toContain("tenant_5_");

    await network.removeNetIdLeftovers(5);
    await network.removeNetIdLeftovers(5);
    expect(await network.netIdsPresent()).not.toContain(5);
    const names = (JSON.parse(await must("ip", ["-n", dataPlaneNs, "-j", "link", "show"])) as { ifname: string }[]).map((l) => l.ifname);
    expect(names).not.toContain(E.bridgeName);
    expect(names).not.toContain(e1.name);
    const inet = await nftIn(["list", "table", "inet", "mvm"]);
    expect(inet).not.toContain("tenant_5_");
    expect(inet).not.toContain(E.bridgeName);
    expect(await nftIn(["list", "table", "bridge", "mvm"])).not.toContain(`tap_${e1.name}`);
    expect((await network.verify(A, [a1.tap, a2.tap], false)).ok).toBe(true);
  });

  it("removes a tenant completely and leaves the other tenant working", async () => {
    await network.removeTenant(B);
    await network.removeTenant(B);
    const links = await must("ip", ["-n", dataPlaneNs, "-j", "link", "show"]);
    const names = (JSON.parse(links) as { ifname: string }[]).map((l) => l.ifname);
    expect(names).not.toContain(B.bridgeName);
    expect(names).not.toContain(b1.tap.name);
    const inet = await nftIn(["list", "table", "inet", "mvm"]);
    expect(inet).not.toContain("tenant_2_");
    expect(inet).not.toContain(B.bridgeName);
    expect(await nftIn(["list", "table", "bridge", "mvm"])).not.toContain(`tap_${b1.tap.name}`);
    expect((await network.verify(A, [a1.tap, a2.tap], false)).ok).toBe(true);
    expect(await ping(a1, a2.tap.guestIp)).toBe(true);
  });
});
