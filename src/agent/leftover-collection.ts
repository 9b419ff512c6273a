// The agent's first act at start (SPEC §11): garbage collection with removal, so that what a killed agent or CLI left
// behind (a VMM its record never claimed, that VMM's TAP and cgroup, a snapshot no longer needed) is gone before
// reconcile or a caller starts anything. A failure is logged and the agent starts anyway: `mvm node gc` can retry.

import type { Logger } from "pino";
import type { AuditActor } from "../core/observability-ports.js";
import { collectGarbage, type GarbageDeps, type GarbageReport } from "../core/use-cases/garbage.js";

export const LEFTOVER_COLLECTION_ACTOR: Readonly<AuditActor> = Object.freeze({ kind: "system", id: "system:agent-start" });

export async function collectLeftovers(runtime: GarbageDeps, logger: Logger): Promise<GarbageReport | null> {
  const startedMs = Date.now();
  try {
    const report = await collectGarbage({ ...runtime, actor: LEFTOVER_COLLECTION_ACTOR }, { apply: true });
    for (const item of report.items) {
      const fields = { kind: item.kind, name: item.name, owner: item.owner, sizeBytes: item.sizeBytes };
      if (item.removed) logger.warn(fields, "removed a leftover");
      else logger.error({ ...fields, err: item.error }, "could not remove a leftover");
    }
    logger.info({ items: report.items.length, reclaimedBytes: report.reclaimedBytes, durationMs: Date.now() - startedMs }, "leftover collection done");
    return report;
  } catch (e) {
    logger.error({ err: e instanceof Error ? e.message : String(e) }, "leftover collection failed; run mvm node gc --apply");
    return null;
  }
}
