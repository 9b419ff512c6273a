// The order in which a process may take the store's locks, checked before every acquisition so that two processes
// (an agent and a CLI, say) can never wait on each other in a cycle:
//   1. the node lock before any tenant lock (never the node lock while holding only tenant locks);
//   2. at most one tenant lock at a time, unless the node lock is held — the node lock then excludes every other
//      process that could want two tenant locks, so nesting below it cannot form a cycle.
// Taking a lock that the same async chain already holds is always allowed (the locks are re-entrant).

export type StoreLockKey = { kind: "node" } | { kind: "tenant"; tenantId: string };

export function sameLockKey(a: StoreLockKey, b: StoreLockKey): boolean {
  if (a.kind === "node" || b.kind === "node") return a.kind === b.kind;
  return a.tenantId === b.tenantId;
}

export function describeLockKey(key: StoreLockKey): string {
  return key.kind === "node" ? "the node lock" : `the lock of tenant ${key.tenantId}`;
}

/** Why taking `next` while holding `held` could deadlock, or null when it is allowed. */
export function lockOrderViolation(held: readonly StoreLockKey[], next: StoreLockKey): string | null {
  if (held.some((k) => sameLockKey(k, next))) return null;
  const heldTenant = held.find((k) => k.kind === "tenant");
  if (heldTenant === undefined) return null;
  const holdsNode = held.some((k) => k.kind === "node");
  if (next.kind === "node") {
    return (
      `lock order: ${describeLockKey(next)} must be taken before any tenant lock, ` +
      `but ${describeLockKey(heldTenant)} is held`
    );
  }
  if (!holdsNode) {
    return (
      `lock order: ${describeLockKey(next)} requested while holding ${describeLockKey(heldTenant)}; ` +
      "tenant locks nest only under the node lock"
    );
  }
  return null;
}
