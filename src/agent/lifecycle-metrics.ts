// The lifecycle metrics of SPEC §8.4 that are fed by what the use cases report, not by the API: state transitions
// (seen by the watch hub, whoever caused them: a call, the reconcile loop, the idle policy, a VMM that died) and the
// duration of boots, wakes and sleeps (timed by the audit trail of each operation), and the phases of each wake.

import type { OperationObserver, OperationPhase, OperationTiming } from "../core/observability-ports.js";
import { operationBetween } from "../core/state-machine.js";
import type { WatchHub, WatchHubObserver } from "../core/watch-hub.js";
import type { Metrics } from "../platform/metrics.js";

export function transitionMetrics(metrics: Metrics): WatchHubObserver {
  return {
    statusChanged(from, to) {
      // A change no operation explains (a VMM that died: running → stopped is `stop`, so it is counted as one).
      metrics.transitions.inc({ from, to, operation: operationBetween(from, to) ?? "external" });
    },
  };
}

/** Boot, wake and sleep durations by hypervisor, from successful operations; the hub says which hypervisor ran. */
export function operationMetrics(metrics: Metrics, hub: WatchHub): OperationObserver {
  const histograms = {
    instance_start: metrics.bootDuration,
    instance_wake: metrics.wakeDuration,
    instance_sleep: metrics.sleepDuration,
  } as const;
  return {
    finished(timing: OperationTiming) {
      if (timing.outcome !== "success" || !(timing.action in histograms)) return;
      // Asking a running guest its wake hook again restores nothing: it is no wake to time.
      if (timing.details.retry !== undefined) return;
      const histogram = histograms[timing.action as keyof typeof histograms];
      const instance = hub.find(timing.target);
      // A sleeping instance has no VMM any more; its snapshot says which hypervisor wrote it, the record does not.
      const hypervisor = instance?.vmm?.hypervisor ?? "unknown";
      histogram.observe({ hypervisor }, timing.durationMs / 1000);
    },
    phase(phase: OperationPhase) {
      if (phase.action === "instance_wake") metrics.wakePhaseDuration.observe({ hypervisor: phase.hypervisor, phase: phase.phase }, phase.durationMs / 1000);
    },
  };
}
