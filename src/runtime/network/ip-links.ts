// Reading interfaces back from iproute2's JSON output (`ip -d -j addr show`, `ip -s -j link show`).

export interface LinkState {
  name: string;
  /** `bridge`, `tun`, `veth`, …; null for a device without link info (loopback, physical NICs). */
  kind: string | null;
  /** The bridge this interface is a port of, or null. */
  master: string | null;
  /** Administratively up. A bridge without ports never gets a carrier, so operstate would say nothing useful. */
  up: boolean;
  /** IPv4 addresses as `address/prefix`. */
  ipv4: string[];
}

interface IpAddrJson {
  ifname?: unknown;
  flags?: unknown;
  master?: unknown;
  linkinfo?: { info_kind?: unknown };
  addr_info?: { family?: unknown; local?: unknown; prefixlen?: unknown }[];
}

export function parseLinks(json: string): LinkState[] {
  const trimmed = json.trim();
  if (trimmed === "") return [];
  const entries = JSON.parse(trimmed) as IpAddrJson[];
  const links: LinkState[] = [];
  for (const e of entries) {
    if (typeof e.ifname !== "string") continue;
    const flags = Array.isArray(e.flags) ? e.flags : [];
    const kind = e.linkinfo?.info_kind;
    links.push({
      name: e.ifname,
      kind: typeof kind === "string" ? kind : null,
      master: typeof e.master === "string" ? e.master : null,
      up: flags.includes("UP"),
      ipv4: (e.addr_info ?? [])
        .filter((a) => a.family === "inet" && typeof a.local === "string")
        .map((a) => `${String(a.local)}/${String(a.prefixlen)}`),
    });
  }
  return links;
}

export interface LinkCounters {
  rxBytes: number;
  txBytes: number;
}

/** Byte counters of the single interface in `ip -s -j link show dev X` output. */
export function parseLinkCounters(json: string): LinkCounters | null {
  const entries = JSON.parse(json) as { stats64?: { rx?: { bytes?: unknown }; tx?: { bytes?: unknown } } }[];
  const stats = entries[0]?.stats64;
  const rx = stats?.rx?.bytes;
  const tx = stats?.tx?.bytes;
  if (typeof rx !== "number" || typeof tx !== "number") return null;
  return { rxBytes: rx, txBytes: tx };
}

/** iproute2's wording for a device that is not there (`Device "x" does not exist.`, `Cannot find device "x"`). */
export function isNoSuchDevice(stderr: string): boolean {
  return /does not exist|cannot find device/i.test(stderr);
}
