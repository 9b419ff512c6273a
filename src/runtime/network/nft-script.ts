// The shape shared by both of mvm's nftables tables (`inet mvm` for routing, NAT and the host; `bridge mvm` for
// anti-spoofing). Everything mvm owns lives in those two tables, and every change is one `nft -f -` transaction:
// either all of a tenant's (or a TAP's) rules change, or none do. Other tables are never named.
//
// Rules are written exactly as `nft list` prints them back, so that `verify` can compare the live ruleset with the
// intended one line by line.

export const NFT_TABLE_NAME = "mvm";

export type NftFamily = "inet" | "bridge";

/** A regular chain (reached by `jump` from a base chain through a verdict map) and its rules, in order. */
export interface NftChain {
  name: string;
  rules: string[];
}

/** A base chain: attached to a netfilter hook, holding only the dispatch into per-tenant or per-TAP chains. */
export interface NftBaseChain extends NftChain {
  /** The part inside `{ … }` of `add chain`, e.g. `type filter hook forward priority filter; policy accept;`. */
  hook: string;
}

/** One entry of a verdict map: packets whose interface is `key` jump to `chain`. */
export interface NftDispatch {
  map: string;
  key: string;
  chain: string;
}

export function quoted(name: string): string {
  return `"${name}"`;
}

export function tableRef(family: NftFamily): string {
  return `${family} ${NFT_TABLE_NAME}`;
}

/** Lines that (re)create a chain with exactly `rules`: `add` is a no-op for an existing chain, `flush` empties it. */
export function chainLines(family: NftFamily, chain: NftChain, hook?: string): string[] {
  const t = tableRef(family);
  return [
    hook === undefined ? `add chain ${t} ${chain.name}` : `add chain ${t} ${chain.name} { ${hook} }`,
    `flush chain ${t} ${chain.name}`,
    ...chain.rules.map((rule) => `add rule ${t} ${chain.name} ${rule}`),
  ];
}

/** Creates a chain when missing (a no-op otherwise), so that later lines in the transaction may refer to it. */
export function chainPresenceLine(family: NftFamily, name: string): string {
  return `add chain ${tableRef(family)} ${name}`;
}

/**
 * Lines that delete a chain known to exist in this transaction (see `chainPresenceLine`): nft has no "delete if
 * present" before 1.0.8, and a chain must be empty and unreferenced before it goes.
 */
export function chainRemovalLines(family: NftFamily, name: string): string[] {
  const t = tableRef(family);
  return [`flush chain ${t} ${name}`, `delete chain ${t} ${name}`];
}

export function dispatchElement(d: NftDispatch): string {
  return `${quoted(d.key)} : jump ${d.chain}`;
}

/** Adding an element that is already there with the same verdict is a no-op, so this line is idempotent. */
export function dispatchAddLine(family: NftFamily, d: NftDispatch): string {
  return `add element ${tableRef(family)} ${d.map} { ${dispatchElement(d)} }`;
}

/** Removes a dispatch entry whether or not it exists (add, then delete, in one transaction); its chain must exist. */
export function dispatchRemovalLines(family: NftFamily, d: NftDispatch): string[] {
  return [dispatchAddLine(family, d), `delete element ${tableRef(family)} ${d.map} { ${quoted(d.key)} }`];
}

/** A stand-alone command that deletes one dispatch entry, whatever verdict it holds; fails when it is absent. */
export function dispatchDeleteCommand(family: NftFamily, d: NftDispatch): string {
  return `delete element ${tableRef(family)} ${d.map} { ${quoted(d.key)} }`;
}

export function renderScript(lines: readonly string[]): string {
  return `${lines.join("\n")}\n`;
}
