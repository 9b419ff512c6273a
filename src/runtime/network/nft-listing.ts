// Reading the live state of an mvm nft table back for `verify`: chains and their rules from `nft list table`
// (text, which prints rules the way nft-script.ts writes them), set and map elements from `nft -j list table`
// (JSON, where elements are unambiguous however many there are).

export interface LiveChain {
  /** `type … hook … priority …; policy …;` for a base chain, null for a regular one. */
  hook: string | null;
  rules: string[];
}

export interface LiveTable {
  chains: Map<string, LiveChain>;
  /** Set name → its elements. */
  sets: Map<string, string[]>;
  /** Map name → key → jump target (other verdicts are kept as their JSON text). */
  maps: Map<string, Map<string, string>>;
}

export function emptyLiveTable(): LiveTable {
  return { chains: new Map(), sets: new Map(), maps: new Map() };
}

const CHAIN_OPEN = /^\tchain (\S+) \{$/;
const BLOCK_CLOSE = /^\t\}$/;

/** Chains of one table as printed by `nft list table <family> <name>` (without `-a`). */
export function parseChainListing(text: string): Map<string, LiveChain> {
  const chains = new Map<string, LiveChain>();
  let current: LiveChain | null = null;
  for (const line of text.split("\n")) {
    const open = CHAIN_OPEN.exec(line);
    if (open) {
      current = { hook: null, rules: [] };
      chains.set(open[1] as string, current);
      continue;
    }
    if (current === null) continue;
    if (BLOCK_CLOSE.test(line)) {
      current = null;
      continue;
    }
    const body = line.trim();
    if (body === "") continue;
    if (body.startsWith("type ") && current.hook === null && current.rules.length === 0) current.hook = body;
    else current.rules.push(body);
  }
  return chains;
}

interface JsonSetLike {
  name?: unknown;
  elem?: unknown;
}

function elementText(e: unknown): string {
  return typeof e === "string" ? e : JSON.stringify(e);
}

function verdictText(v: unknown): string {
  if (typeof v === "object" && v !== null && "jump" in v) {
    const jump = (v as { jump?: { target?: unknown } }).jump;
    if (typeof jump?.target === "string") return jump.target;
  }
  return JSON.stringify(v);
}

/** Sets and verdict maps of one table as printed by `nft -j list table <family> <name>`. */
export function parseElementListing(json: string): Pick<LiveTable, "sets" | "maps"> {
  const sets = new Map<string, string[]>();
  const maps = new Map<string, Map<string, string>>();
  const doc = JSON.parse(json) as { nftables?: unknown };
  const objects = Array.isArray(doc.nftables) ? (doc.nftables as Record<string, unknown>[]) : [];
  for (const o of objects) {
    if (typeof o !== "object" || o === null) continue;
    if ("set" in o) {
      const s = o.set as JsonSetLike;
      if (typeof s.name !== "string") continue;
      const elems = Array.isArray(s.elem) ? s.elem : s.elem === undefined ? [] : [s.elem];
      sets.set(s.name, elems.map(elementText));
    } else if ("map" in o) {
      const m = o.map as JsonSetLike;
      if (typeof m.name !== "string") continue;
      const entries = new Map<string, string>();
      for (const e of Array.isArray(m.elem) ? m.elem : []) {
        if (Array.isArray(e) && e.length === 2) entries.set(elementText(e[0]), verdictText(e[1]));
      }
      maps.set(m.name, entries);
    }
  }
  return { sets, maps };
}

/** True when `actual` holds exactly `expected`, in order. */
export function sameRules(actual: readonly string[] | undefined, expected: readonly string[]): boolean {
  return actual !== undefined && actual.length === expected.length && actual.every((r, i) => r === expected[i]);
}
