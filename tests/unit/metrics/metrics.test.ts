import { describe, expect, it } from "vitest";
import { createMetrics } from "../../../src/platform/metrics.js";

/** The sample lines of `name` (exact metric name, no suffix matching) in an exposition text. */
function samples(text: string, name: string): string[] {
  return text.split("\n").filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
}

describe("createMetrics", () => {
  it("uses a registry of its own, so two sets do not collide or share values", async () => {
    const a = createMetrics({ processMetrics: false });
    const b = createMetrics({ processMetrics: false });
    a.quotaRejections.inc({ tenant: "acme", limit: "max_running" });
    expect(samples(await a.render(), "mvm_quota_rejections_total")).toEqual(['mvm_quota_rejections_total{tenant="acme",limit="max_running"} 1']);
    expect(samples(await b.render(), "mvm_quota_rejections_total")).toEqual([]);
    expect(a.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
  });

  it("records RPCs as a count by code and a latency histogram by method", async () => {
    const m = createMetrics({ processMetrics: false });
    m.observeRpc("mvm.v1.InstanceService", "StartInstance", "ok", 0.003);
    m.observeRpc("mvm.v1.InstanceService", "StartInstance", "ok", 0.2);
    m.observeRpc("mvm.v1.InstanceService", "StartInstance", "failed_precondition", 0.001);
    // A stream is counted, but its duration (the client's choice) is no latency.
    m.observeRpc("mvm.v1.InstanceService", "WatchInstances", "ok", null);
    const text = await m.render();
    expect(samples(text, "mvm_rpc_requests_total").sort()).toEqual([
      'mvm_rpc_requests_total{service="mvm.v1.InstanceService",method="StartInstance",code="failed_precondition"} 1',
      'mvm_rpc_requests_total{service="mvm.v1.InstanceService",method="StartInstance",code="ok"} 2',
      'mvm_rpc_requests_total{service="mvm.v1.InstanceService",method="WatchInstances",code="ok"} 1',
    ]);
    expect(samples(text, "mvm_rpc_duration_seconds_count")).toEqual([
      'mvm_rpc_duration_seconds_count{service="mvm.v1.InstanceService",method="StartInstance"} 3',
    ]);
    expect(text).toContain('mvm_rpc_duration_seconds_bucket{le="0.005",service="mvm.v1.InstanceService",method="StartInstance"} 2');
  });

  it("setInstanceCounts recounts from scratch, so label sets that are gone disappear", async () => {
    const m = createMetrics({ processMetrics: false });
    m.setInstanceCounts([
      { tenantId: "acme", poolId: "web", status: "running" },
      { tenantId: "acme", poolId: "web", status: "running" },
      { tenantId: "acme", poolId: "web", status: "sleeping" },
      { tenantId: "beta", poolId: "ci", status: "warm" },
    ]);
    expect(samples(await m.render(), "mvm_instances").sort()).toEqual([
      'mvm_instances{tenant="acme",pool="web",status="running"} 2',
      'mvm_instances{tenant="acme",pool="web",status="sleeping"} 1',
      'mvm_instances{tenant="beta",pool="ci",status="warm"} 1',
    ]);
    m.setInstanceCounts([{ tenantId: "acme", poolId: "web", status: "stopped" }]);
    expect(samples(await m.render(), "mvm_instances")).toEqual(['mvm_instances{tenant="acme",pool="web",status="stopped"} 1']);
  });

  it("setSnapshotBytes replaces every tenant's value, from a record or a map", async () => {
    const m = createMetrics({ processMetrics: false });
    m.setSnapshotBytes({ acme: 1024, beta: 5 });
    expect(samples(await m.render(), "mvm_snapshot_bytes").sort()).toEqual(['mvm_snapshot_bytes{tenant="acme"} 1024', 'mvm_snapshot_bytes{tenant="beta"} 5']);
    m.setSnapshotBytes(new Map([["beta", 7]]));
    expect(samples(await m.render(), "mvm_snapshot_bytes")).toEqual(['mvm_snapshot_bytes{tenant="beta"} 7']);
  });

  it("every other metric appears with its labels once updated", async () => {
    const m = createMetrics({ processMetrics: false });
    m.recordTransition("running", "sleeping", "sleep");
    m.bootDuration.observe({ hypervisor: "qemu" }, 12);
    m.wakeDuration.observe({ hypervisor: "firecracker" }, 0.04);
    m.sleepDuration.observe({ hypervisor: "firecracker" }, 1.5);
    m.reconcileRuns.inc({ result: "partial" });
    m.reconcileDuration.observe(0.7);
    m.reconcileErrors.inc({ kind: "exhausted" });
    m.auditEntries.inc({ action: "instance_start", outcome: "success" });
    m.watchers.set({ stream: "instances" }, 3);
    m.watchersCutOff.inc({ stream: "instances" });
    const text = await m.render();
    const expected: Array<[string, string]> = [
      ["mvm_instance_transitions_total", 'mvm_instance_transitions_total{from="running",to="sleeping",operation="sleep"} 1'],
      ["mvm_boot_duration_seconds_count", 'mvm_boot_duration_seconds_count{hypervisor="qemu"} 1'],
      ["mvm_wake_duration_seconds_sum", 'mvm_wake_duration_seconds_sum{hypervisor="firecracker"} 0.04'],
      ["mvm_sleep_duration_seconds_count", 'mvm_sleep_duration_seconds_count{hypervisor="firecracker"} 1'],
      ["mvm_reconcile_runs_total", 'mvm_reconcile_runs_total{result="partial"} 1'],
      ["mvm_reconcile_duration_seconds_sum", "mvm_reconcile_duration_seconds_sum 0.7"],
      ["mvm_reconcile_errors_total", 'mvm_reconcile_errors_total{kind="exhausted"} 1'],
      ["mvm_audit_entries_total", 'mvm_audit_entries_total{action="instance_start",outcome="success"} 1'],
      ["mvm_watchers", 'mvm_watchers{stream="instances"} 3'],
      ["mvm_watchers_cut_off_total", 'mvm_watchers_cut_off_total{stream="instances"} 1'],
    ];
    for (const [name, line] of expected) expect(samples(text, name)).toEqual([line]);
    // A boot of 12 s lands in the 20 s bucket but not the 10 s one.
    expect(text).toContain('mvm_boot_duration_seconds_bucket{le="10",hypervisor="qemu"} 0');
    expect(text).toContain('mvm_boot_duration_seconds_bucket{le="20",hypervisor="qemu"} 1');
  });

  it("includes process metrics by default", async () => {
    const text = await createMetrics().render();
    expect(text).toMatch(/^process_cpu_user_seconds_total \d/m);
    expect(text).toMatch(/^nodejs_heap_size_used_bytes \d/m);
    expect(text).toContain("# TYPE mvm_rpc_requests_total counter");
  });
});
