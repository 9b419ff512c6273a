// What `mvm coordinator plan` shows of each node's plan: the steps with their reasons, and what cannot converge.

import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { stepToProto, itemErrorToProto } from "../../../src/api/convert/desired-state.js";
import { formatNodePlans, planDetail, type NodeResultRow } from "../../../src/cli/commands/coordinator.js";
import { ReconcileActionKind, ReconcilePlanSchema } from "../../../gen/mvm/v1/reconcile_pb.js";

describe("coordinator plan output", () => {
  const plan = create(ReconcilePlanSchema, {
    nodeId: "n-000000000001",
    actions: [
      stepToProto({ kind: "create_tenant", target: { tenantId: "beta" }, reason: "desired, absent", field: "tenants[1]" } as never),
      stepToProto({ kind: "start_instance", target: { tenantId: "acme", poolId: "web", instanceId: "i-0000000a" }, reason: "pool wants 1 running, has 0", field: "tenants[0].pools[0]" } as never),
      { ...stepToProto({ kind: "create_tenant", target: { tenantId: "gamma" }, reason: "from a newer agent", field: "" } as never), kind: 99 as ReconcileActionKind },
    ],
    errors: [
      itemErrorToProto({ target: { tenantId: "acme", poolId: "db" }, field: "tenants[0].pools[1].spec.image", kind: "failed_precondition", message: "no built revision", retryable: true, attempt: 0, nextRetryAtMs: null }),
    ],
  });

  it("lists each step by kind, target and reason, and each item that cannot converge", () => {
    const detail = planDetail(plan);
    expect(detail.actions).toBe(3);
    expect(detail.errors).toBe(1);
    expect(detail.steps.map((s) => s.line)).toEqual([
      "create tenant beta (desired, absent)",
      "start acme/web/i-0000000a (pool wants 1 running, has 0)",
      "unknown(99) gamma (from a newer agent)",
    ]);
    expect(detail.steps[1]).toMatchObject({ kind: "start_instance", target: "acme/web/i-0000000a", field: "tenants[0].pools[0]" });
    expect(detail.cannotConverge).toEqual([{ target: "acme/db", field: "tenants[0].pools[1].spec.image", message: "no built revision" }]);
    expect(planDetail(undefined)).toEqual({ actions: 0, errors: 0, steps: [], cannotConverge: [] });
  });

  it("prints a block per node with something to do, none for the others or for failed nodes", () => {
    const row = (node: string, extra: Record<string, unknown>): NodeResultRow => ({ node, address: "127.0.0.1:1", result: "ok", attempts: 1, elapsedMs: 1, ...extra });
    const text = formatNodePlans([
      row("a", planDetail(plan)),
      row("b", planDetail(create(ReconcilePlanSchema, {}))),
      { ...row("c", {}), result: "unavailable", error: "connection refused" },
    ]);
    expect(text).toBe(
      [
        "",
        "a:",
        "  create tenant beta (desired, absent)",
        "  start acme/web/i-0000000a (pool wants 1 running, has 0)",
        "  unknown(99) gamma (from a newer agent)",
        "  cannot converge acme/db (tenants[0].pools[1].spec.image): no built revision",
        "",
      ].join("\n"),
    );
    expect(formatNodePlans([row("b", planDetail(undefined))])).toBe("");
  });
});
