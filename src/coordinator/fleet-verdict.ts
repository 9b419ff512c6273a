// How a fleet-wide command ends: the exit code says whether every node succeeded, some did, or none did, so a
// script can tell a partial rollout from a total failure without parsing the per-node table.

export type FleetVerdict = "ok" | "partial" | "failed";

/**
 * 0: every node succeeded (also: no node selected); 10: some nodes failed; 11: every node failed. Codes 1-9 keep their
 * meaning from the rest of the CLI (input errors are refused with 2 before any node is called).
 */
export const FLEET_EXIT_CODES: Readonly<Record<FleetVerdict, number>> = { ok: 0, partial: 10, failed: 11 };

export function fleetVerdict(outcomes: readonly { ok: boolean }[]): FleetVerdict {
  const failed = outcomes.filter((o) => !o.ok).length;
  if (failed === 0) return "ok";
  return failed === outcomes.length ? "failed" : "partial";
}
