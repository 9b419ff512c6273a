// The adapter's command sequences, against a scripted runner: which program runs with which arguments, in which
// namespace, and how answers such as "does not exist" are taken. The real kernel side is in tests/integration.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { TenantNetworkPlan } from "../../../src/core/data-plane-ports.js";
import { isMvmError } from "../../../src/core/errors.js";
import type { HostCommandResult, HostCommandRunner } from "../../../src/runtime/exec/host-command.js";
import { createLinuxNetwork, ensureNetns } from "../../../src/runtime/network/linux-network.js";

interface Call {
  argv: string[];
  input?: string;
}

type Responder = (argv: string[], input?: string) => Partial<HostCommandResult> | undefined;

function scriptedRunner(respond: Responder): { run: HostCommandRunner; calls: Call[] } {
  const calls: Call[] = [];
  const run: HostCommandRunner = async (file, args, options) => {
    const argv = [file, ...args];
    calls.push(options?.input === undefined ? { argv } : { argv, input: options.input });
    const r = respond(argv, options?.input) ?? {};
    return { exitCode: r.exitCode ?? 0, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
  };
  return { run, calls };
}

const plan: TenantNetworkPlan = {
  tenantId: "acme",
  netId: 1,
  bridgeName: "br-mvm-1",
  gatewayIp: "10.201.1.1",
  subnet: "10.201.1.0/24",
  prefixLen: 24,
  metadataPort: 8169,
};
const tap = { name: "tn1i3", mac: "02:fc:00:01:00:03", guestIp: "10.201.1.3" };
const bridgeJson = JSON.stringify([{ ifname: "br-mvm-1", flags: ["UP"], linkinfo: { info_kind: "bridge" }, addr_info: [] }]);

// Real nft 1.0.6 output for tenants 1 and 2 and TAP tn1i3 (see tenant-network-inspection.test.ts).
const fixture = (name: string) => readFileSync(join(import.meta.dirname, "fixtures", name), "utf8");

const joined = (calls: Call[]) => calls.map((c) => c.argv.join(" "));

describe("linux network adapter (scripted commands)", () => {
  it("works inside the namespace: ip -n for links, ip netns exec for nft and sysctl", async () => {
    const { run, calls } = scriptedRunner((argv) => {
      if (argv.join(" ") === "ip netns list") return { stdout: "dp (id: 0)\nother\n" };
      if (argv.includes("addr") && argv.includes("show")) return { stdout: "[]" };
      return undefined;
    });
    const net = createLinuxNetwork({ netns: "dp", run });
    expect(net.netns).toBe("dp");
    await net.ensureTenant(plan);
    expect(joined(calls)).toEqual([
      "ip netns list",
      "ip -n dp -d -j addr show",
      "ip -n dp link add name br-mvm-1 type bridge",
      "ip -n dp addr replace 10.201.1.1/24 dev br-mvm-1",
      "ip -n dp link set dev br-mvm-1 up",
      "ip netns exec dp sysctl -w net.ipv4.ip_forward=1",
      "ip netns exec dp nft -f -",
    ]);
    expect(calls.at(-1)?.input).toContain("add table inet mvm");
  });

  it("ensureInstanceNetwork: links and ruleset read, one nft transaction for tenant and guard, then one ip batch for what is missing", async () => {
    const fresh = scriptedRunner((argv) => {
      if (argv.join(" ") === "ip netns list") return { stdout: "dp\n" };
      if (argv.includes("show")) return { stdout: "[]" };
      return undefined;
    });
    await createLinuxNetwork({ netns: "dp", run: fresh.run }).ensureInstanceNetwork(plan, tap);
    expect(joined(fresh.calls).slice(1).sort()).toEqual(
      [
        "ip -n dp -d -j addr show",
        "ip netns exec dp nft list ruleset",
        "ip netns exec dp nft -f -",
        "ip -n dp -batch -",
        "ip netns exec dp sysctl -w net.ipv4.ip_forward=1",
      ].sort(),
    );
    const nft = fresh.calls.find((c) => c.argv.includes("-f"));
    expect(nft?.input).toContain("add table inet mvm");
    expect(nft?.input).toContain(`add chain bridge mvm tap_${tap.name}`);
    const batch = fresh.calls.find((c) => c.argv.includes("-batch"));
    expect(batch?.input?.trim().split("\n")).toEqual([
      "link add name br-mvm-1 type bridge",
      "addr replace 10.201.1.1/24 dev br-mvm-1",
      "link set dev br-mvm-1 up",
      `tuntap add dev ${tap.name} mode tap`,
      `link set dev ${tap.name} master br-mvm-1 up`,
    ]);
    // The guard is in place before the batch adds the TAP to the bridge.
    expect(fresh.calls.indexOf(nft!)).toBeLessThan(fresh.calls.indexOf(batch!));

    // Bridge addressed and up, TAP already its port, every rule in force (real nft output for this plan and TAP):
    // two reads, no write.
    const addressed = [
      { ifname: "br-mvm-1", flags: ["UP"], linkinfo: { info_kind: "bridge" }, addr_info: [{ family: "inet", local: "10.201.1.1", prefixlen: 24 }] },
      { ifname: tap.name, flags: ["UP"], master: "br-mvm-1", linkinfo: { info_kind: "tun" }, addr_info: [] },
    ];
    const ruleset = `${fixture("inet-two-tenants.nft.txt")}${fixture("bridge-one-tap.nft.txt")}`;
    const inPlace = (listing: string) => (argv: string[]) =>
      argv.includes("show") ? { stdout: JSON.stringify(addressed) } : argv.includes("ruleset") ? { stdout: listing } : undefined;
    const steady = scriptedRunner(inPlace(ruleset));
    await createLinuxNetwork({ netns: null, run: steady.run }).ensureInstanceNetwork(plan, tap);
    expect(joined(steady.calls).sort()).toEqual(["ip -d -j addr show", "nft list ruleset"]);

    // One rule of the guard gone (edited by hand): the whole transaction runs again.
    const damaged = scriptedRunner(inPlace(ruleset.replace("\t\tarp saddr ip != 10.201.1.3 drop\n", "")));
    await createLinuxNetwork({ netns: null, run: damaged.run }).ensureInstanceNetwork(plan, tap);
    expect(joined(damaged.calls).sort()).toEqual(["ip -d -j addr show", "nft -f -", "nft list ruleset"]);
    expect(damaged.calls.find((c) => c.argv.includes("-f"))?.input).toContain("arp saddr ip != 10.201.1.3 drop");

    // A link made meanwhile by another writer: the batch fails with "File exists" and the step-by-step path runs.
    const raced = scriptedRunner((argv) => {
      if (argv.includes("-batch")) return { exitCode: 2, stderr: "RTNETLINK answers: File exists\nCommand failed -:1" };
      if (argv.includes("show")) return { stdout: bridgeJson };
      return undefined;
    });
    await createLinuxNetwork({ netns: null, run: raced.run }).ensureInstanceNetwork(plan, tap);
    expect(joined(raced.calls)).toContain(`ip tuntap add dev ${tap.name} mode tap`);
  });

  it("refuses to work in a namespace that does not exist, unless told to create it", async () => {
    const { run, calls } = scriptedRunner((argv) => (argv.join(" ") === "ip netns list" ? { stdout: "" } : { stdout: "[]" }));
    const net = createLinuxNetwork({ netns: "nope", run });
    await expect(net.ensureTenant(plan)).rejects.toThrow(/network namespace nope does not exist/);
    expect(calls).toHaveLength(1);

    const made = scriptedRunner((argv) => (argv.join(" ") === "ip netns list" ? { stdout: "" } : { stdout: "[]" }));
    await ensureNetns("fresh", made.run);
    expect(joined(made.calls)).toEqual(["ip netns list", "ip netns add fresh", "ip -n fresh link set dev lo up"]);
  });

  it("runs in the root namespace without ip -n or netns exec", async () => {
    const { run, calls } = scriptedRunner((argv) => (argv.includes("show") ? { stdout: bridgeJson } : undefined));
    const net = createLinuxNetwork({ netns: null, run });
    await net.ensureTenant(plan);
    expect(joined(calls)).toEqual(["ip -d -j addr show", "ip addr replace 10.201.1.1/24 dev br-mvm-1", "nft -f -"]);
  });

  it("turns on forwarding when it creates the bridge", async () => {
    const { run, calls } = scriptedRunner((argv) => (argv.includes("show") ? { stdout: "[]" } : undefined));
    await createLinuxNetwork({ netns: null, run }).ensureTenant(plan);
    expect(joined(calls)).toContain("ip link add name br-mvm-1 type bridge");
    expect(joined(calls)).toContain("sysctl -w net.ipv4.ip_forward=1");
  });

  it("sets the gateway address and brings the bridge up only when they are missing, and always re-applies the rules", async () => {
    const down = JSON.stringify([{ ifname: "br-mvm-1", flags: [], linkinfo: { info_kind: "bridge" }, addr_info: [] }]);
    const fresh = scriptedRunner((argv) => (argv.includes("show") ? { stdout: down } : undefined));
    await createLinuxNetwork({ netns: null, run: fresh.run }).ensureTenant(plan);
    expect(joined(fresh.calls)).toContain("ip addr replace 10.201.1.1/24 dev br-mvm-1");
    expect(joined(fresh.calls)).toContain("ip link set dev br-mvm-1 up");

    const ready = JSON.stringify([
      { ifname: "br-mvm-1", flags: ["UP"], linkinfo: { info_kind: "bridge" }, addr_info: [{ family: "inet", local: "10.201.1.1", prefixlen: 24 }] },
    ]);
    const inPlace = scriptedRunner((argv) => (argv.includes("show") ? { stdout: ready } : undefined));
    await createLinuxNetwork({ netns: null, run: inPlace.run }).ensureTenant(plan);
    expect(joined(inPlace.calls)).toEqual(["ip -d -j addr show", "nft -f -"]);
  });

  it("refuses to take over an interface of the bridge's name that is not a bridge", async () => {
    const veth = JSON.stringify([{ ifname: "br-mvm-1", flags: ["UP"], linkinfo: { info_kind: "veth" } }]);
    const { run } = scriptedRunner((argv) => (argv.includes("show") ? { stdout: veth } : undefined));
    const err = await createLinuxNetwork({ netns: null, run }).ensureTenant(plan).catch((e: unknown) => e);
    expect(isMvmError(err) && err.kind).toBe("failed_precondition");
    expect((err as Error).message).toMatch(/br-mvm-1 exists but is a veth interface, not a bridge/);
  });

  it("installs a TAP's anti-spoofing rules before the TAP joins the bridge", async () => {
    const { run, calls } = scriptedRunner((argv) => (argv.includes("show") ? { stdout: bridgeJson } : undefined));
    await createLinuxNetwork({ netns: null, run }).ensureTap(plan, tap);
    expect(joined(calls)).toEqual([
      "ip -d -j addr show",
      "nft -f -",
      "ip tuntap add dev tn1i3 mode tap",
      "ip link set dev tn1i3 master br-mvm-1 up",
    ]);
    expect(calls[1]?.input).toContain("add rule bridge mvm tap_tn1i3 ip saddr != 10.201.1.3 drop");
  });

  it("moves an existing TAP from another bridge and leaves one already in place alone", async () => {
    const elsewhere = JSON.stringify([...JSON.parse(bridgeJson), { ifname: "tn1i3", flags: ["UP"], master: "br-mvm-9", linkinfo: { info_kind: "tun" } }]);
    const moved = scriptedRunner((argv) => (argv.includes("show") ? { stdout: elsewhere } : undefined));
    await createLinuxNetwork({ netns: null, run: moved.run }).ensureTap(plan, tap);
    expect(joined(moved.calls).slice(2)).toEqual(["ip link set dev tn1i3 master br-mvm-1 up"]);

    const inPlace = elsewhere.replace("br-mvm-9", "br-mvm-1");
    const kept = scriptedRunner((argv) => (argv.includes("show") ? { stdout: inPlace } : undefined));
    await createLinuxNetwork({ netns: null, run: kept.run }).ensureTap(plan, tap);
    expect(joined(kept.calls).slice(2)).toEqual(["ip link set dev tn1i3 up"]);
  });

  it("refuses a TAP before its tenant's bridge exists", async () => {
    const { run } = scriptedRunner((argv) => (argv.includes("show") ? { stdout: "[]" } : undefined));
    await expect(createLinuxNetwork({ netns: null, run }).ensureTap(plan, tap)).rejects.toThrow(/bridge br-mvm-1 of tenant acme does not exist/);
  });

  it("clears a map entry that holds another verdict, then retries the transaction once", async () => {
    let attempts = 0;
    const { run, calls } = scriptedRunner((argv, input) => {
      if (argv.includes("show")) return { stdout: bridgeJson };
      if (argv[0] === "nft" && input?.startsWith("add table")) {
        attempts += 1;
        return attempts === 1 ? { exitCode: 1, stderr: "Error: Could not process rule: File exists" } : undefined;
      }
      return undefined;
    });
    await createLinuxNetwork({ netns: null, run }).ensureTenant(plan);
    expect(attempts).toBe(2);
    const deletes = calls.filter((c) => c.input?.startsWith("delete element")).map((c) => c.input?.trim());
    expect(deletes).toEqual([
      'delete element inet mvm forward_from { "br-mvm-1" }',
      'delete element inet mvm forward_to { "br-mvm-1" }',
      'delete element inet mvm input_from { "br-mvm-1" }',
      'delete element inet mvm nat_from { "br-mvm-1" }',
    ]);
  });

  it("fails with nft's message when a transaction is refused", async () => {
    const { run } = scriptedRunner((argv) => {
      if (argv.includes("show")) return { stdout: bridgeJson };
      if (argv[0] === "nft") return { exitCode: 1, stderr: "Error: syntax error, unexpected junk" };
      return undefined;
    });
    const err = await createLinuxNetwork({ netns: null, run }).ensureTenant(plan).catch((e: unknown) => e);
    expect(isMvmError(err) && err.kind).toBe("unavailable");
    expect((err as Error).message).toBe("nft -f -: exit code 1: Error: syntax error, unexpected junk");
  });

  it("reads TAP counters, and null for a TAP that is not there", async () => {
    const stats = JSON.stringify([{ ifname: "tn1i3", stats64: { rx: { bytes: 42 }, tx: { bytes: 7 } } }]);
    const present = scriptedRunner(() => ({ stdout: stats }));
    expect(await createLinuxNetwork({ netns: null, run: present.run }).tapCounters("tn1i3")).toEqual({ rxBytes: 42, txBytes: 7 });
    expect(joined(present.calls)).toEqual(["ip -s -j link show dev tn1i3"]);
    const absent = scriptedRunner(() => ({ exitCode: 1, stderr: 'Device "tn1i3" does not exist.' }));
    expect(await createLinuxNetwork({ netns: null, run: absent.run }).tapCounters("tn1i3")).toBeNull();
    const broken = scriptedRunner(() => ({ exitCode: 2, stderr: "Operation not permitted" }));
    await expect(createLinuxNetwork({ netns: null, run: broken.run }).tapCounters("tn1i3")).rejects.toThrow(/Operation not permitted/);
  });

  it("removes a TAP idempotently: a missing device and a missing table are not errors", async () => {
    const { run, calls } = scriptedRunner((argv) => {
      if (argv.join(" ") === "ip link del dev tn1i3") return { exitCode: 1, stderr: 'Cannot find device "tn1i3"' };
      if (argv.join(" ") === "nft list tables") return { stdout: "table inet mvm\n" };
      return undefined;
    });
    await createLinuxNetwork({ netns: null, run }).removeTap(plan, "tn1i3");
    expect(joined(calls)).toEqual(["ip link del dev tn1i3", "nft list tables"]);
  });
});
