// The `Network` port on Linux: one bridge per tenant with the gateway address, one TAP per instance, and the two nft
// tables of inet-ruleset.ts and bridge-ruleset.ts, all inside the data-plane network namespace when there is one
// (`ip -n NS …`, `ip netns exec NS nft …`). Every step measures and then acts, so each call is idempotent and a
// second run repairs whatever the first left half done.

import type { NetworkCheck, Network, TapPlan, TenantNetworkPlan, TenantNetworkReport } from "../../core/data-plane-ports.js";
import { failedPrecondition } from "../../core/errors.js";
import { bridgeName, parseBridgeName, parseTapName } from "../../core/naming.js";
import { execaHostCommand, hostCommandError, runChecked, type HostCommandRunner } from "../exec/host-command.js";
import { ensureTapGuardScript, removeTapGuardScript, tapGuardDispatch } from "./bridge-ruleset.js";
import { ensureTenantInetScript, removeTenantInetScript, tenantInetDispatch } from "./inet-ruleset.js";
import { isNoSuchDevice, parseLinkCounters, parseLinks, type LinkState } from "./ip-links.js";
import { checkInterfaceName, checkNetnsName, checkTapName, checkTapPlan, checkTenantPlan } from "./network-plan-checks.js";
import { emptyLiveTable, parseChainListing, parseElementListing, parseRulesetListing, type LiveTable } from "./nft-listing.js";
import { dispatchDeleteCommand, NFT_TABLE_NAME, tableRef, type NftDispatch, type NftFamily } from "./nft-script.js";
import { inspectTenantNetwork, instanceRulesProblems, type TenantNetworkInspection } from "./tenant-network-inspection.js";

export interface LinuxNetworkOptions {
  /** Network namespace holding the bridges, TAPs and rules; null for the root namespace. */
  netns: string | null;
  /**
   * Create `netns` (loopback up) when it does not exist. Default false: a missing namespace is an error, because the
   * operator is expected to have made it (and may have given it an uplink).
   */
  createNetns?: boolean;
  /** Runs ip, nft and sysctl. Default: execa. */
  run?: HostCommandRunner;
  /** Limit for each host command, ms. Default 15000. */
  commandTimeoutMs?: number;
}

const DEFAULT_COMMAND_TIMEOUT_MS = 15_000;

async function netnsExists(run: HostCommandRunner, name: string, timeoutMs: number): Promise<boolean> {
  const out = await runChecked(run, "ip", ["netns", "list"], { timeoutMs });
  // Lines read `NAME` or `NAME (id: N)`.
  return out.split("\n").some((line) => line.split(" ")[0] === name);
}

/** Creates the network namespace `name` with its loopback up, unless it exists. */
export async function ensureNetns(name: string, run: HostCommandRunner = execaHostCommand, timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS): Promise<void> {
  checkNetnsName(name);
  if (!(await netnsExists(run, name, timeoutMs))) {
    const added = await run("ip", ["netns", "add", name], { timeoutMs });
    // Another process may have made it in between: that is the state wanted.
    if (added.exitCode !== 0 && !/file exists/i.test(added.stderr)) {
      throw hostCommandError("ip", ["netns", "add", name], `exit code ${added.exitCode}`, added.stderr);
    }
  }
  await runChecked(run, "ip", ["-n", name, "link", "set", "dev", "lo", "up"], { timeoutMs });
}

export function createLinuxNetwork(options: LinuxNetworkOptions): Network {
  const netns = options.netns;
  if (netns !== null) checkNetnsName(netns);
  const run = options.run ?? execaHostCommand;
  const timeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;

  /** argv of a program run inside the data-plane namespace. */
  const inNetns = (program: string, args: readonly string[]): [string, string[]] =>
    netns === null ? [program, [...args]] : ["ip", ["netns", "exec", netns, program, ...args]];
  const ipArgs = (args: readonly string[]): string[] => (netns === null ? [...args] : ["-n", netns, ...args]);

  const ip = (args: readonly string[]) => runChecked(run, "ip", ipArgs(args), { timeoutMs });
  const ipRaw = (args: readonly string[]) => run("ip", ipArgs(args), { timeoutMs });
  const nftRaw = (args: readonly string[], input?: string) => {
    const [file, argv] = inNetns("nft", args);
    return run(file, argv, input === undefined ? { timeoutMs } : { timeoutMs, input });
  };
  const sysctl = (args: readonly string[]) => {
    const [file, argv] = inNetns("sysctl", args);
    return runChecked(run, file, argv, { timeoutMs });
  };

  let readiness: Promise<void> | null = null;
  const ready = (): Promise<void> => {
    if (netns === null) return Promise.resolve();
    readiness ??= (async () => {
      if (options.createNetns === true) await ensureNetns(netns, run, timeoutMs);
      else if (!(await netnsExists(run, netns, timeoutMs))) {
        throw failedPrecondition(`network namespace ${netns} does not exist; create it (ip netns add ${netns}) or allow mvm to create it`);
      }
    })();
    // A failed check is retried on the next call rather than remembered forever.
    readiness.catch(() => {
      readiness = null;
    });
    return readiness;
  };

  async function links(): Promise<LinkState[]> {
    return parseLinks(await ip(["-d", "-j", "addr", "show"]));
  }

  async function findLink(name: string): Promise<LinkState | null> {
    return (await links()).find((l) => l.name === name) ?? null;
  }

  /** Runs an nft script; when an entry of `dispatch` exists with another verdict (hand-edited), clears it and retries. */
  async function applyNft(script: string, dispatch: readonly { family: NftFamily; entry: NftDispatch }[]): Promise<void> {
    const first = await nftRaw(["-f", "-"], script);
    if (first.exitCode === 0) return;
    if (/file exists/i.test(first.stderr)) {
      for (const { family, entry } of dispatch) await nftRaw(["-f", "-"], `${dispatchDeleteCommand(family, entry)}\n`);
      const second = await nftRaw(["-f", "-"], script);
      if (second.exitCode === 0) return;
      throw hostCommandError("nft", ["-f", "-"], `exit code ${second.exitCode}`, second.stderr);
    }
    throw hostCommandError("nft", ["-f", "-"], `exit code ${first.exitCode}`, first.stderr);
  }

  async function tableExists(family: NftFamily): Promise<boolean> {
    const out = await nftRaw(["list", "tables"]);
    if (out.exitCode !== 0) throw hostCommandError("nft", ["list", "tables"], `exit code ${out.exitCode}`, out.stderr);
    return out.stdout.split("\n").some((line) => line.trim() === `table ${family} ${NFT_TABLE_NAME}`);
  }

  async function liveTable(family: NftFamily): Promise<LiveTable> {
    if (!(await tableExists(family))) return emptyLiveTable();
    const args = ["list", "table", family, NFT_TABLE_NAME];
    const text = await nftRaw(args);
    const json = await nftRaw(["-j", ...args]);
    for (const r of [text, json]) {
      if (r.exitCode !== 0) throw hostCommandError("nft", args, `exit code ${r.exitCode}`, r.stderr);
    }
    return { chains: parseChainListing(text.stdout), ...parseElementListing(json.stdout) };
  }

  async function liveRuleset(): Promise<Map<string, LiveTable>> {
    const r = await nftRaw(["list", "ruleset"]);
    if (r.exitCode !== 0) throw hostCommandError("nft", ["list", "ruleset"], `exit code ${r.exitCode}`, r.stderr);
    return parseRulesetListing(r.stdout);
  }

  async function deleteLinkIfPresent(name: string): Promise<void> {
    const r = await ipRaw(["link", "del", "dev", name]);
    if (r.exitCode !== 0 && !isNoSuchDevice(r.stderr)) {
      throw hostCommandError("ip", ipArgs(["link", "del", "dev", name]), `exit code ${r.exitCode}`, r.stderr);
    }
  }

  async function removeTapAndGuard(tapName: string): Promise<void> {
    await deleteLinkIfPresent(tapName);
    if (await tableExists("bridge")) {
      await applyNft(removeTapGuardScript(tapName), [{ family: "bridge", entry: tapGuardDispatch(tapName) }]);
    }
  }

  const inetDispatchOf = (plan: TenantNetworkPlan) => tenantInetDispatch(plan).map((entry) => ({ family: "inet" as const, entry }));

  async function ensureTenant(plan: TenantNetworkPlan): Promise<void> {
    checkTenantPlan(plan);
    await ready();
    const bridge = await findLink(plan.bridgeName);
    if (bridge === null) {
      const added = await ipRaw(["link", "add", "name", plan.bridgeName, "type", "bridge"]);
      if (added.exitCode !== 0 && !/file exists/i.test(added.stderr)) {
        throw hostCommandError("ip", ipArgs(["link", "add", "name", plan.bridgeName, "type", "bridge"]), `exit code ${added.exitCode}`, added.stderr);
      }
    } else if (bridge.kind !== "bridge") {
      throw failedPrecondition(`interface ${plan.bridgeName} exists but is a ${bridge.kind ?? "plain"} interface, not a bridge; remove it first`);
    }
    // Each start ensures its tenant's network, so what is already in place is not set again (one process fewer
    // per step on the start path); the nft rules below are always re-applied, they are what keeps tenants apart.
    if (!bridge?.ipv4.includes(`${plan.gatewayIp}/${plan.prefixLen}`)) {
      await ip(["addr", "replace", `${plan.gatewayIp}/${plan.prefixLen}`, "dev", plan.bridgeName]);
    }
    if (!bridge?.up) await ip(["link", "set", "dev", plan.bridgeName, "up"]);
    // Per namespace: inside a netns this touches only the data plane's own forwarding. Set when a tenant's bridge is
    // created, not on every start: it stays set, and `net verify` checks it (and `--fix` sets it again).
    if (bridge === null) await sysctl(["-w", "net.ipv4.ip_forward=1"]);
    await applyNft(ensureTenantInetScript(plan), inetDispatchOf(plan));
  }

  async function removeTenant(plan: TenantNetworkPlan): Promise<void> {
    checkTenantPlan(plan);
    await ready();
    for (const link of await links()) {
      const tap = parseTapName(link.name);
      if (tap !== null && (tap.netId === plan.netId || link.master === plan.bridgeName)) await removeTapAndGuard(link.name);
    }
    await deleteLinkIfPresent(plan.bridgeName);
    if (await tableExists("inet")) await applyNft(removeTenantInetScript(plan), inetDispatchOf(plan));
  }

  async function netIdsPresent(): Promise<number[]> {
    await ready();
    const ids = new Set<number>();
    for (const link of await links()) {
      const id = parseBridgeName(link.name) ?? parseTapName(link.name)?.netId ?? null;
      if (id !== null) ids.add(id);
    }
    return [...ids].sort((a, b) => a - b);
  }

  async function removeNetIdLeftovers(netId: number): Promise<void> {
    const bridge = bridgeName(netId);
    await ready();
    for (const link of await links()) {
      if (parseTapName(link.name)?.netId === netId || (link.master === bridge && parseTapName(link.name) !== null)) await removeTapAndGuard(link.name);
    }
    await deleteLinkIfPresent(bridge);
    const dispatch = tenantInetDispatch({ netId, bridgeName: bridge }).map((entry) => ({ family: "inet" as const, entry }));
    if (await tableExists("inet")) await applyNft(removeTenantInetScript({ netId, bridgeName: bridge }), dispatch);
  }

  async function ensureTap(plan: TenantNetworkPlan, tap: TapPlan): Promise<void> {
    checkTapPlan(plan, tap);
    await ready();
    const all = await links();
    const bridge = all.find((l) => l.name === plan.bridgeName);
    if (bridge === undefined || bridge.kind !== "bridge") {
      throw failedPrecondition(`bridge ${plan.bridgeName} of tenant ${plan.tenantId} does not exist; ensure the tenant network first`);
    }
    // The guard goes in before the device joins the bridge, so no frame of the guest ever passes unchecked.
    await applyNft(ensureTapGuardScript(tap), [{ family: "bridge", entry: tapGuardDispatch(tap.name) }]);
    // An existing interface of that name is taken as it is, whatever its kind (integration tests stand in veth
    // pairs for guests); only a missing one is created as a TAP.
    const existing = all.find((l) => l.name === tap.name);
    if (existing === undefined) await ip(["tuntap", "add", "dev", tap.name, "mode", "tap"]);
    await ip(["link", "set", "dev", tap.name, ...(existing?.master !== plan.bridgeName ? ["master", plan.bridgeName] : []), "up"]);
  }

  /**
   * The start and wake path: the links and the ruleset are read side by side; one nft transaction with the tenant's
   * rules and the TAP's guard runs only when some of it is not in force; then one `ip -batch` for whatever of bridge,
   * address and TAP is missing. nftables matches interfaces by name, so isolation and the guard are in force before
   * the bridge or the TAP exist. A batch that trips over a link made meanwhile by another writer falls back to the
   * step-by-step path.
   *
   * Reading first matters on a wake, which finds everything in place: the transaction flushes and re-adds the
   * tenant's chains, and nft then waits ~12 ms for the kernel to free the replaced rules, longer than the snapshot's
   * hash check it runs beside. A read costs ~3 ms and changes nothing.
   */
  async function ensureInstanceNetwork(plan: TenantNetworkPlan, tap: TapPlan): Promise<void> {
    checkTenantPlan(plan);
    checkTapPlan(plan, tap);
    await ready();
    const [all, ruleset] = await Promise.all([links(), liveRuleset()]);
    const table = (family: NftFamily) => ruleset.get(tableRef(family)) ?? emptyLiveTable();
    if (instanceRulesProblems(plan, tap, table("inet"), table("bridge")).length > 0) {
      await applyNft(`${ensureTenantInetScript(plan)}${ensureTapGuardScript(tap)}`, [
        ...inetDispatchOf(plan),
        { family: "bridge", entry: tapGuardDispatch(tap.name) },
      ]);
    }
    const bridge = all.find((l) => l.name === plan.bridgeName) ?? null;
    if (bridge !== null && bridge.kind !== "bridge") {
      throw failedPrecondition(`interface ${plan.bridgeName} exists but is a ${bridge.kind ?? "plain"} interface, not a bridge; remove it first`);
    }
    const existingTap = all.find((l) => l.name === tap.name);
    const batch: string[] = [];
    if (bridge === null) batch.push(`link add name ${plan.bridgeName} type bridge`);
    if (!bridge?.ipv4.includes(`${plan.gatewayIp}/${plan.prefixLen}`)) batch.push(`addr replace ${plan.gatewayIp}/${plan.prefixLen} dev ${plan.bridgeName}`);
    if (!bridge?.up) batch.push(`link set dev ${plan.bridgeName} up`);
    if (existingTap === undefined) batch.push(`tuntap add dev ${tap.name} mode tap`);
    if (existingTap?.master !== plan.bridgeName || !existingTap.up) {
      batch.push(`link set dev ${tap.name}${existingTap?.master !== plan.bridgeName ? ` master ${plan.bridgeName}` : ""} up`);
    }
    if (batch.length > 0) {
      const applied = await run("ip", ipArgs(["-batch", "-"]), { timeoutMs, input: `${batch.join("\n")}\n` });
      if (applied.exitCode !== 0) {
        if (!/file exists/i.test(applied.stderr)) {
          throw hostCommandError("ip", ipArgs(["-batch", "-"]), `exit code ${applied.exitCode}`, applied.stderr);
        }
        await ensureTenant(plan);
        await ensureTap(plan, tap);
        return;
      }
    }
    if (bridge === null) await sysctl(["-w", "net.ipv4.ip_forward=1"]);
  }

  async function removeTap(plan: TenantNetworkPlan, tapName: string): Promise<void> {
    checkTenantPlan(plan);
    checkTapName(tapName, "tap_name");
    await ready();
    await removeTapAndGuard(tapName);
  }

  async function tapCounters(tapName: string): Promise<{ rxBytes: number; txBytes: number } | null> {
    checkInterfaceName(tapName, "tap_name");
    await ready();
    const r = await ipRaw(["-s", "-j", "link", "show", "dev", tapName]);
    if (r.exitCode !== 0) {
      if (isNoSuchDevice(r.stderr)) return null;
      throw hostCommandError("ip", ipArgs(["-s", "-j", "link", "show", "dev", tapName]), `exit code ${r.exitCode}`, r.stderr);
    }
    return parseLinkCounters(r.stdout);
  }

  async function inspect(plan: TenantNetworkPlan, expectedTaps: readonly TapPlan[]): Promise<TenantNetworkInspection> {
    const [observedLinks, ipForward, inet, bridge] = await Promise.all([
      links(),
      sysctl(["-n", "net.ipv4.ip_forward"]),
      liveTable("inet"),
      liveTable("bridge"),
    ]);
    return inspectTenantNetwork(plan, expectedTaps, { links: observedLinks, ipForward, inet, bridge });
  }

  async function repair(plan: TenantNetworkPlan, expectedTaps: readonly TapPlan[], strayTaps: readonly string[]): Promise<NetworkCheck[]> {
    const failures: NetworkCheck[] = [];
    const attempt = async (what: string, step: () => Promise<void>) => {
      try {
        await step();
      } catch (e) {
        // Each step is tried: one that fails must not keep the others from repairing what they can.
        failures.push({ check: `repair ${what}`, ok: false, detail: e instanceof Error ? e.message : String(e) });
      }
    };
    await attempt("tenant network", () => ensureTenant(plan));
    await attempt("ip forwarding", async () => void (await sysctl(["-w", "net.ipv4.ip_forward=1"])));
    for (const tap of expectedTaps) await attempt(`tap ${tap.name}`, () => ensureTap(plan, tap));
    for (const name of strayTaps) await attempt(`stray tap ${name}`, () => removeTapAndGuard(name));
    return failures;
  }

  async function verify(plan: TenantNetworkPlan, expectedTaps: readonly TapPlan[], fix: boolean): Promise<TenantNetworkReport> {
    checkTenantPlan(plan);
    for (const tap of expectedTaps) checkTapPlan(plan, tap);
    await ready();
    const before = await inspect(plan, expectedTaps);
    const healthy = (i: TenantNetworkInspection) => i.checks.every((c) => c.ok);
    const report = (checks: NetworkCheck[], ok: boolean): TenantNetworkReport => ({
      tenantId: plan.tenantId,
      bridgeName: plan.bridgeName,
      ok,
      checks,
      strayTaps: before.strayTaps,
      missingTaps: before.missingTaps,
    });
    if (!fix || healthy(before)) return report(before.checks, healthy(before));

    const repairFailures = await repair(plan, expectedTaps, before.strayTaps);
    const after = await inspect(plan, expectedTaps);
    const afterByName = new Map(after.checks.map((c) => [c.check, c] as const));
    const merged = before.checks.map((b): NetworkCheck => {
      const a = afterByName.get(b.check) ?? b;
      if (b.ok) return a;
      if (a.ok) return { check: b.check, ok: true, detail: `${b.detail}; fixed` };
      return { check: b.check, ok: false, detail: `${b.detail}; still wrong after repair: ${a.detail}` };
    });
    const checks = [...merged, ...repairFailures];
    return report(checks, checks.every((c) => c.ok));
  }

  return { netns, ensureTenant, removeTenant, ensureTap, removeTap, ensureInstanceNetwork, tapCounters, verify, netIdsPresent, removeNetIdLeftovers };
}
