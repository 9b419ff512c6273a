// What a node's programs (the agent, and the CLI when no agent runs) need to act on this host: every use case's
// dependencies, plus the observers that make each action visible (audit log, watch events, metrics).

import type { RevisionFiles } from "../core/data-plane-ports.js";
import type { AuditLog, InstanceEventSink } from "../core/observability-ports.js";
import type { BuildDeps } from "../core/use-cases/builds.js";
import type { DataPlaneDeps } from "../core/use-cases/lifecycle.js";

export interface NodeRuntime extends DataPlaneDeps, BuildDeps {
  audit: AuditLog;
  events: InstanceEventSink;
  /** Built revisions on disk, for garbage collection. */
  revisionFiles: RevisionFiles;
  /** Releases what the runtime holds open (watchers, timers). */
  close(): Promise<void>;
}
