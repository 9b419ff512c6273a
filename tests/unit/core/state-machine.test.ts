import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import { INSTANCE_STATUSES } from "../../../src/core/model.js";
import type { InstanceStatus } from "../../../src/core/model.js";
import {
  OPERATIONS,
  TRANSITIONS,
  allowedOperations,
  planTransition,
} from "../../../src/core/state-machine.js";
import type { Operation } from "../../../src/core/state-machine.js";

/**
 * SPEC §3 written out cell by cell, independently of the module's table: a target state is a transition, "=" a
 * no-op, "x" a rejection.
 */
const EXPECTED: Record<InstanceStatus, Record<Operation, InstanceStatus | "=" | "x">> = {
  created: { bind: "ready", start: "running", warm: "x", resume: "x", sleep: "x", wake: "x", stop: "x", destroy: "destroyed" },
  ready: { bind: "=", start: "running", warm: "x", resume: "x", sleep: "x", wake: "x", stop: "x", destroy: "destroyed" },
  running: { bind: "x", start: "=", warm: "warm", resume: "=", sleep: "sleeping", wake: "=", stop: "stopped", destroy: "destroyed" },
  warm: { bind: "x", start: "x", warm: "=", resume: "running", sleep: "sleeping", wake: "x", stop: "stopped", destroy: "destroyed" },
  sleeping: { bind: "x", start: "x", warm: "x", resume: "x", sleep: "=", wake: "running", stop: "stopped", destroy: "destroyed" },
  stopped: { bind: "x", start: "running", warm: "x", resume: "x", sleep: "x", wake: "x", stop: "=", destroy: "destroyed" },
  destroyed: { bind: "x", start: "x", warm: "x", resume: "x", sleep: "x", wake: "x", stop: "x", destroy: "=" },
};

function rejection(status: InstanceStatus, op: Operation): MvmError {
  try {
    planTransition(status, op);
  } catch (e) {
    expect(e).toBeInstanceOf(MvmError);
    return e as MvmError;
  }
  throw new Error(`expected ${op} on ${status} to be rejected`);
}

const statusArb = fc.constantFrom(...INSTANCE_STATUSES);
const opArb = fc.constantFrom(...OPERATIONS);

describe("instance state machine", () => {
  for (const status of INSTANCE_STATUSES) {
    for (const op of OPERATIONS) {
      const expected = EXPECTED[status][op];
      it(`${op} on ${status} → ${expected === "=" ? "no-op" : expected === "x" ? "rejected" : expected}`, () => {
        if (expected === "x") {
          const err = rejection(status, op);
          expect(err.kind).toBe("failed_precondition");
        } else if (expected === "=") {
          expect(planTransition(status, op)).toEqual({ kind: "noop", status });
        } else {
          expect(planTransition(status, op)).toEqual({ kind: "transition", from: status, to: expected });
        }
      });
    }
  }

  it("has exactly the transitions of SPEC §3 in its table", () => {
    const expectedEdges = INSTANCE_STATUSES.flatMap((from) =>
      OPERATIONS.flatMap((op) => {
        const to = EXPECTED[from][op];
        return to === "=" || to === "x" ? [] : [`${from} -${op}-> ${to}`];
      }),
    );
    const tableEdges = TRANSITIONS.map((t) => `${t.from} -${t.op}-> ${t.to}`);
    expect([...tableEdges].sort()).toEqual([...expectedEdges].sort());
    expect(new Set(tableEdges).size).toBe(tableEdges.length);
  });

  it("lists the operations that leave each state", () => {
    expect(allowedOperations("created")).toEqual(["bind", "start", "destroy"]);
    expect(allowedOperations("ready")).toEqual(["start", "destroy"]);
    expect(allowedOperations("running")).toEqual(["warm", "sleep", "stop", "destroy"]);
    expect(allowedOperations("warm")).toEqual(["resume", "sleep", "stop", "destroy"]);
    expect(allowedOperations("sleeping")).toEqual(["wake", "stop", "destroy"]);
    expect(allowedOperations("stopped")).toEqual(["start", "destroy"]);
    expect(allowedOperations("destroyed")).toEqual([]);
  });

  it("tells to use resume or wake instead of start", () => {
    expect(rejection("warm", "start").message).toBe(
      "cannot start an instance in state warm: use resume to run a warm instance " +
        "(allowed operations: resume, sleep, stop, destroy)",
    );
    expect(rejection("sleeping", "start").message).toContain("use wake");
    expect(rejection("sleeping", "start").message).not.toContain("use resume");
  });

  it("names the current state and the allowed operations in every rejection", () => {
    fc.assert(
      fc.property(statusArb, opArb, (status, op) => {
        fc.pre(EXPECTED[status][op] === "x");
        const err = rejection(status, op);
        expect(err.kind).toBe("failed_precondition");
        expect(err.message).toContain(`state ${status}`);
        const allowed = allowedOperations(status);
        if (allowed.length > 0) expect(err.message).toContain(`allowed operations: ${allowed.join(", ")}`);
        else expect(err.message).toContain("no operation is allowed");
      }),
    );
  });

  it("classifies every (state, operation) pair as a table edge, a no-op or a failed precondition", () => {
    fc.assert(
      fc.property(statusArb, opArb, (status, op) => {
        const edge = TRANSITIONS.find((t) => t.from === status && t.op === op);
        let plan;
        try {
          plan = planTransition(status, op);
        } catch (e) {
          expect((e as MvmError).kind).toBe("failed_precondition");
          expect(edge).toBeUndefined();
          return;
        }
        if (edge) expect(plan).toEqual({ kind: "transition", from: status, to: edge.to });
        else expect(plan).toEqual({ kind: "noop", status });
      }),
    );
  });

  it("follows the table along random operation sequences from any state", () => {
    fc.assert(
      fc.property(statusArb, fc.array(opArb, { maxLength: 40 }), (initial, ops) => {
        let status: InstanceStatus = initial;
        for (const op of ops) {
          const before = status;
          const expected = EXPECTED[before][op];
          try {
            const plan = planTransition(before, op);
            status = plan.kind === "transition" ? plan.to : plan.status;
          } catch (e) {
            expect(expected).toBe("x");
            expect((e as MvmError).message).toContain(`state ${before}`);
            expect(status).toBe(before);
            continue;
          }
          expect(status).toBe(expected === "=" ? before : expected);
          if (before === "destroyed") expect(status).toBe("destroyed");
        }
      }),
    );
  });

  it("keeps destroyed terminal", () => {
    for (const op of OPERATIONS) {
      if (op === "destroy") expect(planTransition("destroyed", op)).toEqual({ kind: "noop", status: "destroyed" });
      else expect(rejection("destroyed", op).message).toContain("state destroyed");
    }
  });
});
