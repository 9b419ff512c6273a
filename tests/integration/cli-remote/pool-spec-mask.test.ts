// What the CLI sends as UpdatePool (poolSpecInputToProto) is what the agent reads back (poolSpecPatchFromMask): the
// masked fields and nothing else, for any partial spec.

import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { poolSpecInputToProto, poolSpecPatchFromMask } from "../../../src/api/convert/pool.js";
import { COMPRESSIONS, HYPERVISORS, SECCOMP_POLICIES } from "../../../src/core/model.js";
import type { PoolSpecInput } from "../../../src/core/use-cases/pools.js";

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const partialSpec: fc.Arbitrary<PoolSpecInput> = fc.record(
  {
    image: fc.oneof(
      fc.record({ kind: fc.constant("debian" as const), suite: fc.constantFrom("bookworm", "trixie"), packages: fc.array(fc.constantFrom("curl", "git")), extraFiles: fc.constant({}) }),
      fc.record({ kind: fc.constant("nix" as const), flakeRef: fc.constant("github:o/r"), profile: fc.constantFrom("minimal", "full") }),
    ),
    resources: fc.record({ vcpus: u32, memMib: u32, dataDiskMib: u32 }, { requiredKeys: [] }),
    desiredCounts: fc.record({ running: u32, warm: u32, sleeping: u32 }, { requiredKeys: [] }),
    hypervisor: fc.constantFrom(...HYPERVISORS),
    seccompPolicy: fc.constantFrom(...SECCOMP_POLICIES),
    snapshotCompression: fc.constantFrom(...COMPRESSIONS),
    metadataEnabled: fc.boolean(),
    sleepPolicy: fc.record({ warmAfterIdleS: u32, sleepAfterIdleS: u32, cpuIdlePct: fc.integer({ min: 0, max: 100 }), netIdleBytes: u32 }, { requiredKeys: [] }),
    pinned: fc.boolean(),
    critical: fc.boolean(),
  },
  { requiredKeys: [] },
);

/** Drops empty sub-objects: a partial spec with `resources: {}` names no field, so nothing of it travels. */
function named(spec: PoolSpecInput): PoolSpecInput {
  return Object.fromEntries(Object.entries(spec).filter(([, v]) => !(typeof v === "object" && v !== null && !("kind" in v) && Object.keys(v).length === 0))) as PoolSpecInput;
}

describe("poolSpecInputToProto", () => {
  it("round-trips through the update mask", () => {
    fc.assert(
      fc.property(partialSpec, (spec) => {
        const { spec: message, paths } = poolSpecInputToProto(spec);
        const violations: { field: string; rule: string }[] = [];
        const back = paths.length === 0 ? {} : poolSpecPatchFromMask(message, paths, violations);
        expect(violations).toEqual([]);
        expect(back).toEqual(named(spec));
      }),
    );
  });

  it("names each set leaf once", () => {
    const { paths } = poolSpecInputToProto({ resources: { memMib: 512 }, desiredCounts: { warm: 2 }, pinned: false });
    expect(paths).toEqual(["resources.mem_mib", "desired_counts.warm", "pinned"]);
  });
});
