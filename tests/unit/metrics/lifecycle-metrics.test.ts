// Transitions and boot/wake/sleep durations reach the metrics from the use cases themselves (through the watch hub
// and the audited operations), so the reconcile loop and the idle policy are counted as well as API calls.

import { describe, expect, it } from "vitest";
import { operationMetrics, transitionMetrics } from "../../../src/agent/lifecycle-metrics.js";
import { observeInstanceWrites } from "../../../src/core/observed-store.js";
import type { AuditEntry, AuditLog, AuditRecord, OperationPhase, OperationTiming } from "../../../src/core/observability-ports.js";
import { operationBetween } from "../../../src/core/state-machine.js";
import { createInstance } from "../../../src/core/use-cases/instances.js";
import { destroyInstance, startInstance, stopInstance, type DataPlaneDeps } from "../../../src/core/use-cases/lifecycle.js";
import { createPool } from "../../../src/core/use-cases/pools.js";
import { sleepInstance, wakeInstance } from "../../../src/core/use-cases/sleep-wake.js";
import { createTenant } from "../../../src/core/use-cases/tenants.js";
import { WatchHub } from "../../../src/core/watch-hub.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { MemoryStore } from "../../../src/runtime/fake/memory-store.js";
import { createMetrics } from "../../../src/platform/metrics.js";
import { fakeDataPlaneDeps } from "../../helpers/fake-data-plane-deps.js";

function samples(text: string, name: string): string[] {
  return text.split("\n").filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
}

const nullAudit: AuditLog = {
  async append(record: AuditRecord): Promise<AuditEntry> {
    return { ...record, seq: 0, at: "", prevHash: "", hash: "" };
  },
};

/** A created instance in acme/web, whose pool has a built revision. */
async function instanceOfBuiltPool(deps: DataPlaneDeps): Promise<{ tenantId: string; poolId: string; instanceId: string }> {
  await createTenant(deps, { tenantId: "acme" });
  await createPool(deps, { tenantId: "acme", poolId: "web" }, {});
  const pool = await deps.store.getPool("acme", "web");
  await deps.store.putPool({ ...pool!, currentRevision: "abc123" });
  const created = await createInstance(deps, { tenantId: "acme", poolId: "web" });
  return { tenantId: "acme", poolId: "web", instanceId: created.instanceId };
}

describe("lifecycle metrics", () => {
  it("names the operation of every legal edge and none for an edge the state machine lacks", () => {
    expect(operationBetween("stopped", "running")).toBe("start");
    expect(operationBetween("sleeping", "running")).toBe("wake");
    expect(operationBetween("warm", "running")).toBe("resume");
    expect(operationBetween("warm", "sleeping")).toBe("sleep");
    expect(operationBetween("running", "destroyed")).toBe("destroy");
    expect(operationBetween("stopped", "sleeping")).toBeNull();
  });

  it("counts transitions and times boots as use cases run, whoever calls them", async () => {
    const metrics = createMetrics();
    const hub = new WatchHub({ observer: transitionMetrics(metrics) });
    const timings: OperationTiming[] = [];
    const timingMetrics = operationMetrics(metrics, hub);
    const base = fakeDataPlaneDeps(new FakeDataPlane(), observeInstanceWrites(new MemoryStore(), hub));
    const deps = {
      ...base,
      audit: nullAudit,
      operations: { finished: (t: OperationTiming) => (timings.push(t), timingMetrics.finished(t)) },
    };
    const key = await instanceOfBuiltPool(deps);
    await startInstance(deps, key);
    await stopInstance(deps, key);
    await startInstance(deps, key);
    await destroyInstance(deps, key);

    const text = await metrics.render();
    expect(samples(text, "mvm_instance_transitions_total").sort()).toEqual([
      'mvm_instance_transitions_total{from="created",to="running",operation="start"} 1',
      'mvm_instance_transitions_total{from="running",to="destroyed",operation="destroy"} 1',
      'mvm_instance_transitions_total{from="running",to="stopped",operation="stop"} 1',
      'mvm_instance_transitions_total{from="stopped",to="running",operation="start"} 1',
    ]);
    expect(samples(text, "mvm_boot_duration_seconds_count")).toEqual(['mvm_boot_duration_seconds_count{hypervisor="qemu"} 2']);
    const starts = timings.filter((t) => t.action === "instance_start");
    expect(starts).toHaveLength(2);
    // The fake clock advances one ms per reading: a start reads it several times, so its duration is positive.
    for (const t of starts) expect(t.durationMs).toBeGreaterThan(0);
    expect(timings.map((t) => t.action)).toContain("tenant_create");
  });

  it("times a wake that restored a VM, not one that only asked a running guest its wake hook again", async () => {
    const metrics = createMetrics();
    const timings = operationMetrics(metrics, new WatchHub());
    const wake = { tenantId: "acme", action: "instance_wake", target: "acme/web/i-0123abcd", outcome: "success", durationMs: 400 } as const;
    timings.finished({ ...wake, details: {} });
    timings.finished({ ...wake, durationMs: 20, details: { retry: "wake_hook" } });
    const text = await metrics.render();
    expect(samples(text, "mvm_wake_duration_seconds_count")).toEqual(['mvm_wake_duration_seconds_count{hypervisor="unknown"} 1']);
    expect(samples(text, "mvm_wake_duration_seconds_sum")).toEqual(['mvm_wake_duration_seconds_sum{hypervisor="unknown"} 0.4']);
  });

  it("splits each successful wake into prepare, restore and guest, which add up to no more than the wake", async () => {
    const metrics = createMetrics();
    const hub = new WatchHub();
    const observer = operationMetrics(metrics, hub);
    const phases: OperationPhase[] = [];
    const timings: OperationTiming[] = [];
    const base = fakeDataPlaneDeps(new FakeDataPlane(), observeInstanceWrites(new MemoryStore(), hub));
    const deps = {
      ...base,
      audit: nullAudit,
      operations: {
        finished: (t: OperationTiming) => (timings.push(t), observer.finished(t)),
        phase: (p: OperationPhase) => (phases.push(p), observer.phase!(p)),
      },
    };
    const key = await instanceOfBuiltPool(deps);
    await startInstance(deps, key);
    await sleepInstance(deps, key);
    expect(phases).toEqual([]);
    await wakeInstance(deps, key);

    const target = `acme/web/${key.instanceId}`;
    expect(phases.map((p) => [p.action, p.target, p.phase, p.hypervisor])).toEqual([
      ["instance_wake", target, "prepare", "qemu"],
      ["instance_wake", target, "restore", "qemu"],
      ["instance_wake", target, "guest", "qemu"],
    ]);
    // The fake clock moves on at every reading: each phase took some time, and all of them fit in the wake.
    for (const p of phases) expect(p.durationMs).toBeGreaterThan(0);
    const wake = timings.find((t) => t.action === "instance_wake")!;
    expect(phases.reduce((sum, p) => sum + p.durationMs, 0)).toBeLessThanOrEqual(wake.durationMs);
    const text = await metrics.render();
    expect(samples(text, "mvm_wake_phase_duration_seconds_count").sort()).toEqual([
      'mvm_wake_phase_duration_seconds_count{hypervisor="qemu",phase="guest"} 1',
      'mvm_wake_phase_duration_seconds_count{hypervisor="qemu",phase="prepare"} 1',
      'mvm_wake_phase_duration_seconds_count{hypervisor="qemu",phase="restore"} 1',
    ]);
  });
});

