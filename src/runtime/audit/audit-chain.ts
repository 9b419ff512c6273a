// The hash chain of an audit log (SPEC §10.3). A log is a file of lines, each one entry as canonical JSON followed by
// "\n". Entry n (1-based) has seq n, prevHash = hash of entry n-1 (GENESIS_PREV_HASH for entry 1), and
// hash = lowercase hex SHA-256 of the UTF-8 bytes of canonicalJson(the entry's object without its `hash` member).
// A verifier in another language: parse each line as a JSON object, remove `hash`, serialise canonically (see
// canonical-json.ts), hash, compare; check seq and prevHash. Members it does not know are part of the hash, so an
// entry written by a newer mvm with more fields still verifies.

import { createHash } from "node:crypto";
import { AUDIT_ACTIONS } from "../../core/observability-ports.js";
import type { ActorKind, AuditAction, AuditEntry, AuditOutcome } from "../../core/observability-ports.js";
import { CanonicalJsonError, canonicalJson } from "./canonical-json.js";

/** prevHash of the first entry of every log (the proto's "64 zeros"). */
export const GENESIS_PREV_HASH = "0".repeat(64);

export const ACTOR_KINDS = ["admin", "coordinator", "tenant", "node", "local", "system"] as const satisfies readonly ActorKind[];
export const AUDIT_OUTCOMES = ["success", "failure", "denied"] as const satisfies readonly AuditOutcome[];

const HEX64 = /^[0-9a-f]{64}$/;

export function sha256Hex(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

/** The hash an entry must carry: over the canonical JSON of every member except `hash`. */
export function entryHash(entry: Readonly<Record<string, unknown>>): string {
  const { hash: _ignored, ...rest } = entry;
  return sha256Hex(canonicalJson(rest));
}

/** The line written to the log for `entry`, newline included. */
export function entryLine(entry: AuditEntry): string {
  return `${canonicalJson(entry)}\n`;
}

export type ParsedLine =
  | { ok: true; entry: AuditEntry; raw: Record<string, unknown> }
  | { ok: false; json: boolean; reason: string };

function isStringMap(v: unknown): v is Record<string, string> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return false;
  return Object.values(v).every((x) => typeof x === "string");
}

/**
 * Parses one line (without its "\n") into an entry, checking its shape and its own hash (not its place in the
 * chain). `json: false` means the text is not a JSON object at all — what a torn or garbled write leaves.
 */
export function parseAuditLine(line: string): ParsedLine {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return { ok: false, json: false, reason: "line is not valid JSON" };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { ok: false, json: false, reason: "line is not a JSON object" };
  }
  const v = value as Record<string, unknown>;
  const actor = v.actor as Record<string, unknown> | undefined;
  const problems: string[] = [];
  if (!Number.isSafeInteger(v.seq) || (v.seq as number) < 1) problems.push("seq: must be an integer >= 1");
  if (typeof v.at !== "string") problems.push("at: must be a string");
  if (typeof v.tenantId !== "string") problems.push("tenant_id: must be a string");
  if (typeof actor !== "object" || actor === null || !(ACTOR_KINDS as readonly unknown[]).includes(actor.kind) || typeof actor.id !== "string") {
    problems.push(`actor: must be {kind: ${ACTOR_KINDS.join("|")}, id: string}`);
  }
  if (!(AUDIT_ACTIONS as readonly unknown[]).includes(v.action)) problems.push("action: not a known audit action");
  if (typeof v.target !== "string") problems.push("target: must be a string");
  if (!(AUDIT_OUTCOMES as readonly unknown[]).includes(v.outcome)) problems.push(`outcome: must be one of ${AUDIT_OUTCOMES.join(", ")}`);
  if (typeof v.reason !== "string") problems.push("reason: must be a string");
  if (!isStringMap(v.details)) problems.push("details: must map strings to strings");
  if (typeof v.prevHash !== "string" || !HEX64.test(v.prevHash)) problems.push("prev_hash: must be 64 lower-case hex digits");
  if (typeof v.hash !== "string" || !HEX64.test(v.hash)) problems.push("hash: must be 64 lower-case hex digits");
  if (problems.length > 0) return { ok: false, json: true, reason: problems.join("; ") };
  let computed: string;
  try {
    computed = entryHash(v);
  } catch (e) {
    if (e instanceof CanonicalJsonError) return { ok: false, json: true, reason: e.message };
    throw e;
  }
  if (computed !== v.hash) return { ok: false, json: true, reason: "hash does not match the entry's content (the entry was changed)" };
  const a = actor as { kind: ActorKind; id: string };
  const entry: AuditEntry = {
    seq: v.seq as number,
    at: v.at as string,
    tenantId: v.tenantId as string,
    actor: { kind: a.kind, id: a.id },
    action: v.action as AuditAction,
    target: v.target as string,
    outcome: v.outcome as AuditOutcome,
    reason: v.reason as string,
    details: { ...(v.details as Record<string, string>) },
    prevHash: v.prevHash as string,
    hash: v.hash as string,
  };
  return { ok: true, entry, raw: v };
}

export interface ChainCheck {
  /** Expected seq of the next line; starts at 1. */
  nextSeq: number;
  /** Hash the next line's prevHash must equal. */
  prevHash: string;
}

export function startChain(): ChainCheck {
  return { nextSeq: 1, prevHash: GENESIS_PREV_HASH };
}

/**
 * Checks the next line of a log against the chain so far; returns null and advances `chain` when it fits, else why
 * the line at seq `chain.nextSeq` breaks it. `terminated` says whether the line ended with "\n".
 */
export function checkChainLine(chain: ChainCheck, line: string, terminated: boolean, tenantId: string): string | null {
  const seq = chain.nextSeq;
  if (!terminated) return `the last line is incomplete (a torn write; the next append moves it aside)`;
  const parsed = parseAuditLine(line);
  if (!parsed.ok) return parsed.reason;
  const e = parsed.entry;
  if (e.seq !== seq) {
    return `found seq ${e.seq} where seq ${seq} belongs (an entry was deleted, inserted or reordered)`;
  }
  if (e.tenantId !== tenantId) return `tenant_id is ${JSON.stringify(e.tenantId)}, not ${JSON.stringify(tenantId)}`;
  if (e.prevHash !== chain.prevHash) {
    return seq === 1
      ? "prev_hash is not the genesis value (entries before it were removed)"
      : `prev_hash does not match the hash of seq ${seq - 1} (an earlier entry was changed or removed)`;
  }
  chain.nextSeq = seq + 1;
  chain.prevHash = e.hash;
  return null;
}
