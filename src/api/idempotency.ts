// `request_id` on mutating calls (SPEC §8.1): a retried call with the same request_id is applied once. The first
// call's response is kept for TTL_MS; a retry within that time gets it back without acting again, and a retry that
// arrives while the first call still runs waits for it. Failures are not kept, so a retry after a failure tries
// again. The map is bounded: past MAX_ENTRIES the oldest entries go first.
//
// Keys are per caller and per method, so one tenant cannot read another's response by guessing its request_id.
// A request_id reused with a different request is refused rather than answered with the wrong response.

import { createHash } from "node:crypto";
import { invalid } from "../core/errors.js";

export const REQUEST_ID_RULE = "must be 1-128 characters of [A-Za-z0-9._:-]";
const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

export interface IdempotencyOptions {
  /** How long a response is kept, ms. Default 600000 (10 minutes, as the contract promises). */
  ttlMs?: number;
  /** Responses kept at most; the oldest go first. Default 10000. */
  maxEntries?: number;
  /** Milliseconds since the epoch. Default Date.now. */
  now?: () => number;
}

interface Entry {
  fingerprint: string;
  expiresAt: number;
  result: Promise<unknown>;
}

export function fingerprintOf(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

export class IdempotencyCache {
  private readonly entries = new Map<string, Entry>();
  private readonly ttlMs: number;
  private readonly maxEntries: number;
  private readonly now: () => number;

  constructor(options: IdempotencyOptions = {}) {
    this.ttlMs = options.ttlMs ?? 600_000;
    this.maxEntries = options.maxEntries ?? 10_000;
    this.now = options.now ?? Date.now;
  }

  get size(): number {
    return this.entries.size;
  }

  /**
   * Runs `work` once per (`scope`, `requestId`) within the TTL. `requestId` "" means no idempotency. `fingerprint`
   * identifies the request's content (e.g. a hash of its encoding).
   */
  async run<T>(scope: string, requestId: string, fingerprint: string, work: () => Promise<T>): Promise<T> {
    if (requestId === "") return work();
    if (!REQUEST_ID_PATTERN.test(requestId)) throw invalid([{ field: "request_id", rule: REQUEST_ID_RULE }]);
    const key = `${scope}\u0000${requestId}`;
    const now = this.now();
    this.evictExpired(now);
    const existing = this.entries.get(key);
    if (existing !== undefined) {
      if (existing.fingerprint !== fingerprint) {
        throw invalid([{ field: "request_id", rule: "was already used for a different request within the last 10 minutes; use a new one" }]);
      }
      return existing.result as Promise<T>;
    }
    const result = work();
    const entry: Entry = { fingerprint, expiresAt: now + this.ttlMs, result };
    this.entries.set(key, entry);
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
    try {
      return await result;
    } catch (e) {
      if (this.entries.get(key) === entry) this.entries.delete(key);
      throw e;
    }
  }

  private evictExpired(now: number): void {
    // Entries are in insertion order, which is expiry order: stop at the first live one.
    for (const [key, entry] of this.entries) {
      if (entry.expiresAt > now) break;
      this.entries.delete(key);
    }
  }
}
