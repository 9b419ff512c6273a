// Reading the live state of an mvm nft table back: chains and their rules from `nft list table` (text, which prints
// rules the way nft-script.ts writes them), set and map elements from `nft -j list table` (JSON, where elements are
// unambiguous however many there are). `verify` reads each table both ways. The start and wake path reads once,
// `nft list ruleset` in text, and takes the elements from that text too (parseRulesetListing).

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

const TABLE_OPEN = /^table (\S+) (\S+) \{$/;
const TABLE_CLOSE = /^\}$/;
const SET_OR_MAP_OPEN = /^\t(set|map) (\S+) \{$/;
const ELEMENTS_START = "elements = {";

interface ElementToken {
  /** A quoted string (its text without the quotes), a bare word, or one of `:` and `,`. */
  kind: "string" | "word" | "colon" | "comma";
  text: string;
}

/**
 * The tokens between `elements = {` and its closing brace, read across the lines nft wraps long lists into. Quotes
 * are honoured (an interface name may hold a comma or a brace); null when the list never closes.
 */
function elementTokens(text: string): ElementToken[] | null {
  const tokens: ElementToken[] = [];
  let depth = 0;
  let i = 0;
  while (i < text.length) {
    const c = text[i] as string;
    if (c === '"') {
      const end = text.indexOf('"', i + 1);
      if (end < 0) return null;
      tokens.push({ kind: "string", text: text.slice(i + 1, end) });
      i = end + 1;
    } else if (c === "{") {
      depth += 1;
      tokens.push({ kind: "word", text: c });
      i += 1;
    } else if (c === "}") {
      if (depth === 0) return tokens;
      depth -= 1;
      tokens.push({ kind: "word", text: c });
      i += 1;
    } else if (c === ":" || c === ",") {
      tokens.push({ kind: c === ":" ? "colon" : "comma", text: c });
      i += 1;
    } else if (/\s/.test(c)) {
      i += 1;
    } else {
      let end = i;
      while (end < text.length && !/[\s"{}:,]/.test(text[end] as string)) end += 1;
      tokens.push({ kind: "word", text: text.slice(i, end) });
      i = end;
    }
  }
  return null;
}

function splitOnCommas(tokens: readonly ElementToken[]): ElementToken[][] {
  const parts: ElementToken[][] = [[]];
  for (const t of tokens) {
    if (t.kind === "comma") parts.push([]);
    else (parts.at(-1) as ElementToken[]).push(t);
  }
  return parts.filter((p) => p.length > 0);
}

const tokenText = (tokens: readonly ElementToken[]) =>
  tokens.length === 1 && tokens[0]?.kind === "string" ? tokens[0].text : tokens.map((t) => (t.kind === "string" ? `"${t.text}"` : t.text)).join(" ");

/**
 * Sets and verdict maps of one table's text listing, read like parseElementListing reads JSON: a set's members, a
 * map's key → jump target (another verdict as its text, such as `drop` or `goto x`). An element list that cannot
 * be read leaves its set or map out, so a caller looking for an entry finds none rather than a wrong one.
 */
function parseElementText(lines: readonly string[]): Pick<LiveTable, "sets" | "maps"> {
  const sets = new Map<string, string[]>();
  const maps = new Map<string, Map<string, string>>();
  for (let i = 0; i < lines.length; i += 1) {
    const open = SET_OR_MAP_OPEN.exec(lines[i] as string);
    if (!open) continue;
    const kind = open[1] as "set" | "map";
    const name = open[2] as string;
    let body = "";
    let j = i + 1;
    for (; j < lines.length && !BLOCK_CLOSE.test(lines[j] as string); j += 1) body += `${lines[j]}\n`;
    i = j;
    const at = body.indexOf(ELEMENTS_START);
    const tokens = at < 0 ? [] : elementTokens(body.slice(at + ELEMENTS_START.length));
    if (tokens === null) continue;
    const elements = splitOnCommas(tokens);
    if (kind === "set") {
      sets.set(name, elements.map(tokenText));
      continue;
    }
    const entries = new Map<string, string>();
    let readable = true;
    for (const element of elements) {
      const colon = element.findIndex((t) => t.kind === "colon");
      if (colon <= 0 || colon === element.length - 1) {
        readable = false;
        break;
      }
      const verdict = element.slice(colon + 1);
      const jump = verdict.length === 2 && verdict[0]?.text === "jump" && verdict[1]?.kind === "word";
      entries.set(tokenText(element.slice(0, colon)), jump ? (verdict[1] as ElementToken).text : tokenText(verdict));
    }
    if (readable) maps.set(name, entries);
  }
  return { sets, maps };
}

/**
 * Every table of `nft list ruleset` (text, without `-a`), keyed `<family> <name>`. One listing serves both of
 * mvm's tables: nft 1.0.6 cannot list two tables in one call (a batch of two `list table` commands fails to find
 * the first).
 */
export function parseRulesetListing(text: string): Map<string, LiveTable> {
  const tables = new Map<string, LiveTable>();
  let current: { key: string; lines: string[] } | null = null;
  const finish = () => {
    if (current === null) return;
    tables.set(current.key, { chains: parseChainListing(current.lines.join("\n")), ...parseElementText(current.lines) });
    current = null;
  };
  for (const line of text.split("\n")) {
    const open = TABLE_OPEN.exec(line);
    if (open) {
      finish();
      current = { key: `${open[1]} ${open[2]}`, lines: [] };
    } else if (current !== null && TABLE_CLOSE.test(line)) {
      finish();
    } else if (current !== null) {
      current.lines.push(line);
    }
  }
  finish();
  return tables;
}

/** True when `actual` holds exactly `expected`, in order. */
export function sameRules(actual: readonly string[] | undefined, expected: readonly string[]): boolean {
  return actual !== undefined && actual.length === expected.length && actual.every((r, i) => r === expected[i]);
}
