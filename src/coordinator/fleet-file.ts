// The fleet file (SPEC §10.1): which agents the coordinator drives and the client certificate it uses for them.
//
//   credentials: { ca: ca.pem, cert: coordinator.pem, key: coordinator-key.pem }   # paths relative to this file
//   nodes:
//     - { name: node-a, address: 10.0.0.5:7443, labels: { zone: a } }
//
// YAML or JSON (JSON is YAML). Parsing checks everything and reports every violation with its path; nothing is
// read from the credential paths here.

import { isIP } from "node:net";
import { readFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { invalid, notFound, type FieldViolation } from "../core/errors.js";

export interface FleetNode {
  /** The coordinator's name for the node: 1-63 characters of [a-z0-9-]. */
  name: string;
  /** `host:port` or `[v6]:port` of the agent's mTLS API. */
  address: string;
  host: string;
  port: number;
  labels: Record<string, string>;
}

export interface FleetCredentials {
  /** Absolute paths of PEM files. */
  ca: string;
  cert: string;
  key: string;
}

export interface Fleet {
  credentials: FleetCredentials;
  nodes: FleetNode[];
}

const NAME_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const LABEL_KEY_PATTERN = /^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$/;
const TOP_FIELDS = new Set(["credentials", "nodes"]);
const NODE_FIELDS = new Set(["name", "address", "labels"]);
const CREDENTIAL_FIELDS = ["ca", "cert", "key"] as const;

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function unknownFields(value: Record<string, unknown>, allowed: Set<string>, path: string, violations: FieldViolation[]): void {
  for (const key of Object.keys(value)) {
    if (!allowed.has(key)) violations.push({ field: path === "" ? key : `${path}.${key}`, rule: `is not a known field (known: ${[...allowed].join(", ")})` });
  }
}

/** `host:port` or `[v6]:port`; null when malformed. */
export function parseAgentAddress(value: string): { host: string; port: number } | null {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(value);
  if (!m) return null;
  const port = Number(m[3]);
  const host = m[1] ?? m[2] ?? "";
  if (port < 1 || port > 65535 || (m[1] !== undefined && isIP(host) !== 6)) return null;
  return { host, port };
}

/** Validates a decoded fleet document; relative credential paths are taken from `baseDir`. */
export function parseFleet(input: unknown, baseDir: string): Fleet {
  const violations: FieldViolation[] = [];
  if (!isObject(input)) throw invalid([{ field: "fleet", rule: "must be a mapping with credentials and nodes" }]);
  unknownFields(input, TOP_FIELDS, "", violations);

  const credentials = { ca: "", cert: "", key: "" };
  const creds = input.credentials;
  if (!isObject(creds)) violations.push({ field: "credentials", rule: "is required: a mapping with ca, cert and key (PEM file paths)" });
  else {
    unknownFields(creds, new Set(CREDENTIAL_FIELDS), "credentials", violations);
    for (const name of CREDENTIAL_FIELDS) {
      const v = creds[name];
      if (typeof v !== "string" || v === "") violations.push({ field: `credentials.${name}`, rule: "is required: a PEM file path" });
      else credentials[name] = resolve(baseDir, v);
    }
  }

  const nodes: FleetNode[] = [];
  const list = input.nodes;
  if (!Array.isArray(list) || list.length === 0) violations.push({ field: "nodes", rule: "is required: a non-empty list of {name, address, labels}" });
  else {
    const names = new Map<string, number>();
    const addresses = new Map<string, number>();
    list.forEach((raw: unknown, i) => {
      const path = `nodes[${i}]`;
      if (!isObject(raw)) {
        violations.push({ field: path, rule: "must be a mapping with name, address and labels" });
        return;
      }
      unknownFields(raw, NODE_FIELDS, path, violations);
      const name = raw.name;
      const address = raw.address;
      let ok = true;
      if (typeof name !== "string" || !NAME_PATTERN.test(name)) {
        violations.push({ field: `${path}.name`, rule: "must be 1-63 characters of [a-z0-9-] with no leading or trailing hyphen" });
        ok = false;
      } else if (names.has(name)) {
        violations.push({ field: `${path}.name`, rule: `must be unique (nodes[${names.get(name)}] is also ${JSON.stringify(name)})` });
        ok = false;
      } else names.set(name, i);
      const parsed = typeof address === "string" ? parseAgentAddress(address) : null;
      if (parsed === null) {
        violations.push({ field: `${path}.address`, rule: `must be HOST:PORT or [IPV6]:PORT with a port of 1-65535 (got ${JSON.stringify(address)})` });
        ok = false;
      } else if (addresses.has(address as string)) {
        violations.push({ field: `${path}.address`, rule: `must be unique (nodes[${addresses.get(address as string)}] has it too)` });
        ok = false;
      } else addresses.set(address as string, i);
      const labels: Record<string, string> = {};
      if (raw.labels !== undefined) {
        if (!isObject(raw.labels)) {
          violations.push({ field: `${path}.labels`, rule: "must be a mapping of strings" });
          ok = false;
        } else {
          for (const [k, v] of Object.entries(raw.labels)) {
            if (!LABEL_KEY_PATTERN.test(k)) violations.push({ field: `${path}.labels.${k}`, rule: "key must be 1-63 characters of [A-Za-z0-9._/-], starting and ending alphanumeric" });
            else if (typeof v !== "string" || v.length > 63) violations.push({ field: `${path}.labels.${k}`, rule: "value must be a string of at most 63 characters" });
            else labels[k] = v;
          }
        }
      }
      if (ok && parsed) nodes.push({ name: name as string, address: address as string, host: parsed.host, port: parsed.port, labels });
    });
  }
  if (violations.length > 0) throw invalid(violations);
  return { credentials, nodes };
}

/** Reads and validates a fleet file (YAML or JSON). */
export async function readFleetFile(path: string): Promise<Fleet> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") throw notFound(`fleet file ${path}`);
    throw invalid([{ field: "--fleet", rule: `must name a readable file (${(e as NodeJS.ErrnoException).code ?? String(e)}: ${path})` }]);
  }
  let document: unknown;
  try {
    document = parseYaml(text);
  } catch (e) {
    throw invalid([{ field: `fleet file ${path}`, rule: `must be valid YAML or JSON: ${(e as Error).message.split("\n")[0]}` }]);
  }
  return parseFleet(document, dirname(resolve(path)));
}

/**
 * The nodes named in `names` (all when empty) that carry every label of `selector`; an unknown name is bad input,
 * so a typo never silently shrinks a rollout.
 */
export function selectNodes(fleet: Fleet, names: readonly string[], selector: Record<string, string>, field = "--nodes"): FleetNode[] {
  const known = new Set(fleet.nodes.map((n) => n.name));
  const unknown = names.filter((n) => !known.has(n));
  if (unknown.length > 0) throw invalid([{ field, rule: `must name nodes of the fleet file (unknown: ${unknown.join(", ")})` }]);
  const wanted = new Set(names);
  return fleet.nodes.filter((n) => (wanted.size === 0 || wanted.has(n.name)) && Object.entries(selector).every(([k, v]) => n.labels[k] === v));
}
