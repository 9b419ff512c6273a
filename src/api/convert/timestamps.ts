// Points in time between the domain (RFC 3339 UTC strings with milliseconds, `Date.prototype.toISOString()`) and
// google.protobuf.Timestamp. Millisecond precision both ways: the domain never holds more.

import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Timestamp as IsoTimestamp } from "../../core/model.js";

export function isoToTimestamp(iso: IsoTimestamp): Timestamp {
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) throw new RangeError(`not an RFC 3339 timestamp: ${JSON.stringify(iso)}`);
  // timestampFromMs(ms), as a literal: create() is the larger part of its cost, and replies carry several.
  const seconds = Math.floor(ms / 1000);
  return { $typeName: "google.protobuf.Timestamp", seconds: BigInt(seconds), nanos: (ms - seconds * 1000) * 1_000_000 };
}

/** An absent domain time (null) is an absent message field. */
export function optionalIsoToTimestamp(iso: IsoTimestamp | null): Timestamp | undefined {
  return iso === null ? undefined : isoToTimestamp(iso);
}

export function timestampToIso(ts: Timestamp): IsoTimestamp {
  return new Date(Math.floor(timestampMs(ts))).toISOString();
}

export function optionalTimestampToIso(ts: Timestamp | undefined): IsoTimestamp | null {
  return ts === undefined ? null : timestampToIso(ts);
}

/** For fields the domain always sets: an absent timestamp reads as the epoch rather than failing. */
export function requiredTimestampToIso(ts: Timestamp | undefined): IsoTimestamp {
  return ts === undefined ? new Date(0).toISOString() : timestampToIso(ts);
}
