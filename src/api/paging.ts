// Paging of list calls (SPEC §8.1): `page_size` (0 means the default, larger than the maximum is cut to it) and an
// opaque `page_token` naming the last item of the previous page. Tokens are keyed, not offsets, so an item created
// or deleted between two pages neither repeats nor hides another one. A token carries a hash of the request's
// filter and is refused with another filter.

import { createHash } from "node:crypto";
import { invalid } from "../core/errors.js";

export interface PageRequest {
  pageSize: number;
  pageToken: string;
}

export interface PageLimits {
  /** Used when page_size is 0. */
  defaultSize: number;
  /** page_size above it is cut to it. */
  maxSize: number;
}

export const LIST_PAGE_LIMITS: PageLimits = { defaultSize: 100, maxSize: 1000 };

export interface Page<T> {
  items: T[];
  nextPageToken: string;
}

interface TokenBody {
  v: 1;
  /** Key of the last item of the previous page. */
  k: string;
  /** Hash of the filter the token belongs to. */
  f: string;
}

function filterHash(filterKey: string): string {
  return createHash("sha256").update(filterKey).digest("hex").slice(0, 16);
}

export function encodePageToken(lastKey: string, filterKey: string): string {
  const body: TokenBody = { v: 1, k: lastKey, f: filterHash(filterKey) };
  return Buffer.from(JSON.stringify(body), "utf8").toString("base64url");
}

function decodePageToken(token: string, filterKey: string): string {
  let body: unknown;
  try {
    body = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    body = null;
  }
  const b = body as Partial<TokenBody> | null;
  if (b === null || typeof b !== "object" || b.v !== 1 || typeof b.k !== "string" || typeof b.f !== "string") {
    throw invalid([{ field: "page_token", rule: "must be a next_page_token returned by the previous page" }]);
  }
  if (b.f !== filterHash(filterKey)) {
    throw invalid([{ field: "page_token", rule: "belongs to a list with another filter: repeat the first request's filter, or start again without a token" }]);
  }
  return b.k;
}

/**
 * One page of `items`, which must be sorted by `keyOf` in `order` with unique keys. `filterKey` describes the
 * filter (any stable string), `limits` the page sizes.
 */
export function paginate<T>(
  items: readonly T[],
  keyOf: (item: T) => string,
  request: PageRequest,
  filterKey: string,
  limits: PageLimits = LIST_PAGE_LIMITS,
  order: "asc" | "desc" = "asc",
): Page<T> {
  const size = request.pageSize === 0 ? limits.defaultSize : Math.min(request.pageSize, limits.maxSize);
  let start = 0;
  if (request.pageToken !== "") {
    const after = decodePageToken(request.pageToken, filterKey);
    const beyond = (key: string) => (order === "asc" ? key > after : key < after);
    start = items.findIndex((item) => beyond(keyOf(item)));
    if (start < 0) start = items.length;
  }
  const page = items.slice(start, start + size);
  const more = start + size < items.length;
  const last = page[page.length - 1];
  return { items: page, nextPageToken: more && last !== undefined ? encodePageToken(keyOf(last), filterKey) : "" };
}

/** A stable description of a filter object: keys sorted at every level. */
export function filterKeyOf(filter: unknown): string {
  const sort = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(sort);
    if (v !== null && typeof v === "object") {
      return Object.fromEntries(Object.keys(v as Record<string, unknown>).sort().map((k) => [k, sort((v as Record<string, unknown>)[k])]));
    }
    return v;
  };
  return JSON.stringify(sort(filter) ?? null);
}
