import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { HYPERVISORS } from "../../../src/core/model.js";
import {
  RESOURCE_LIMITS,
  desiredCountsViolations,
  enumViolations,
  imageSourceViolations,
  labelsViolations,
  quotaViolations,
  resourcesViolations,
  sleepPolicyViolations,
  toSnakeCase,
} from "../../../src/core/validation.js";

const fields = (vs: ReadonlyArray<{ field: string }>) => vs.map((v) => v.field);

describe("toSnakeCase", () => {
  it.each([
    ["maxVcpus", "max_vcpus"],
    ["maxInstancesPerPool", "max_instances_per_pool"],
    ["ipv4Subnet", "ipv4_subnet"],
    ["memMib", "mem_mib"],
    ["already_snake", "already_snake"],
    ["vcpus", "vcpus"],
  ])("%s -> %s", (camel, snake) => {
    expect(toSnakeCase(camel)).toBe(snake);
  });
});

describe("resourcesViolations", () => {
  it("accepts the edges of each range", () => {
    const { vcpus, memMib, dataDiskMib } = RESOURCE_LIMITS;
    expect(resourcesViolations({ vcpus: vcpus.min, memMib: memMib.min, dataDiskMib: dataDiskMib.min }, "resources")).toEqual([]);
    expect(resourcesViolations({ vcpus: vcpus.max, memMib: memMib.max, dataDiskMib: dataDiskMib.max }, "resources")).toEqual([]);
  });

  it("refuses one past each edge, naming the snake_case field and the range", () => {
    expect(resourcesViolations({ vcpus: 0, memMib: 127, dataDiskMib: -1 }, "resources")).toEqual([
      { field: "resources.vcpus", rule: "must be an integer from 1 to 32" },
      { field: "resources.mem_mib", rule: "must be an integer from 128 to 262144" },
      { field: "resources.data_disk_mib", rule: "must be an integer from 0 to 16777216" },
    ]);
    expect(fields(resourcesViolations({ vcpus: 33, memMib: 262145, dataDiskMib: 16777217 }, "r"))).toEqual([
      "r.vcpus",
      "r.mem_mib",
      "r.data_disk_mib",
    ]);
  });

  it("refuses non-integers and non-numbers, and skips fields not given", () => {
    expect(fields(resourcesViolations({ vcpus: 1.5, memMib: "256" }, "r"))).toEqual(["r.vcpus", "r.mem_mib"]);
    expect(resourcesViolations({}, "r")).toEqual([]);
    expect(resourcesViolations({ vcpus: Number.NaN }, "r")).toHaveLength(1);
  });
});

describe("quotaViolations", () => {
  it("accepts zero and large values; refuses negatives, fractions, strings", () => {
    expect(quotaViolations({ maxVcpus: 0, maxDiskGib: 4294967295 }, "quotas")).toEqual([]);
    expect(quotaViolations({ maxVcpus: -1, maxMemMib: 1.5, maxInstancesPerPool: "3", maxPools: 4294967296 }, "quotas")).toEqual([
      { field: "quotas.max_vcpus", rule: "must be a non-negative integer" },
      { field: "quotas.max_mem_mib", rule: "must be a non-negative integer" },
      { field: "quotas.max_pools", rule: "must be a non-negative integer" },
      { field: "quotas.max_instances_per_pool", rule: "must be a non-negative integer" },
    ]);
  });
  it("refuses a non-object", () => {
    expect(quotaViolations(null as never, "quotas")).toEqual([{ field: "quotas", rule: "must be an object" }]);
  });
});

describe("desiredCountsViolations", () => {
  it("accepts non-negative integers", () => {
    expect(desiredCountsViolations({ running: 0, warm: 3, sleeping: 100 }, "c")).toEqual([]);
  });
  it("refuses negative and fractional counts", () => {
    expect(fields(desiredCountsViolations({ running: -1, warm: 0.5, sleeping: true }, "c"))).toEqual([
      "c.running",
      "c.warm",
      "c.sleeping",
    ]);
  });
});

describe("sleepPolicyViolations", () => {
  const good = { warmAfterIdleS: 300, sleepAfterIdleS: 900, cpuIdlePct: 5, netIdleBytes: 1024 };
  it("accepts the default policy and equal thresholds", () => {
    expect(sleepPolicyViolations(good, "sp")).toEqual([]);
    expect(sleepPolicyViolations({ ...good, sleepAfterIdleS: 300 }, "sp")).toEqual([]);
  });
  it("refuses sleep before warm", () => {
    expect(sleepPolicyViolations({ ...good, sleepAfterIdleS: 299 }, "sp")).toEqual([
      { field: "sp.sleep_after_idle_s", rule: "must be at least warm_after_idle_s (300), got 299" },
    ]);
  });
  it("refuses cpu_idle_pct outside 0..100 and a zero warm threshold", () => {
    expect(fields(sleepPolicyViolations({ ...good, cpuIdlePct: 100.5 }, "sp"))).toEqual(["sp.cpu_idle_pct"]);
    expect(fields(sleepPolicyViolations({ ...good, cpuIdlePct: -0.1 }, "sp"))).toEqual(["sp.cpu_idle_pct"]);
    expect(sleepPolicyViolations({ ...good, cpuIdlePct: 0 }, "sp")).toEqual([]);
    expect(sleepPolicyViolations({ ...good, cpuIdlePct: 100 }, "sp")).toEqual([]);
    expect(fields(sleepPolicyViolations({ ...good, warmAfterIdleS: 0 }, "sp"))).toEqual(["sp.warm_after_idle_s"]);
    expect(fields(sleepPolicyViolations({ ...good, netIdleBytes: -1 }, "sp"))).toEqual(["sp.net_idle_bytes"]);
  });
});

describe("labelsViolations", () => {
  it("accepts plain and prefixed keys, empty values", () => {
    expect(labelsViolations({ app: "web", "app.kubernetes.io/name": "api-v1", tier: "", Env_2: "Prod.1" }, "labels")).toEqual([]);
    expect(labelsViolations(undefined, "labels")).toEqual([]);
  });
  it("names the offending key in the path", () => {
    const vs = labelsViolations({ "-bad": "x", good: "no spaces" }, "labels");
    expect(fields(vs)).toEqual(['labels["-bad"]', 'labels["good"]']);
    expect(vs[0]?.rule).toMatch(/^key must be/);
    expect(vs[1]?.rule).toMatch(/^value must be/);
  });
  it("limits name, prefix and value lengths to the Kubernetes sizes", () => {
    expect(labelsViolations({ ["a".repeat(63)]: "b".repeat(63) }, "l")).toEqual([]);
    expect(labelsViolations({ ["a".repeat(64)]: "x" }, "l")).toHaveLength(1);
    expect(labelsViolations({ x: "b".repeat(64) }, "l")).toHaveLength(1);
    expect(labelsViolations({ "Upper.Case/name": "x" }, "l")).toHaveLength(1);
    expect(labelsViolations({ "a/b/c": "x" }, "l")).toHaveLength(1);
  });
  it("refuses a non-map and non-string values", () => {
    expect(labelsViolations(["a"], "l")).toEqual([{ field: "l", rule: "must be a map of string keys to string values" }]);
    expect(fields(labelsViolations({ n: 5 }, "l"))).toEqual(['l["n"]']);
  });
});

describe("imageSourceViolations", () => {
  it("accepts a debian source", () => {
    const image = {
      kind: "debian",
      suite: "bookworm",
      packages: ["python3", "libstdc++6", "g++", "ca-certificates"],
      extraFiles: { "/etc/motd": "hello\n" },
    };
    expect(imageSourceViolations(image, "image")).toEqual([]);
  });
  it("refuses bad suites, package names and extra file paths", () => {
    const image = {
      kind: "debian",
      suite: "Bookworm",
      packages: ["ok", "x", "Bad", "-rf", "a;b"],
      extraFiles: { "etc/relative": "", "/etc/../shadow": "", "/ok": 5 },
    };
    expect(fields(imageSourceViolations(image, "image"))).toEqual([
      "image.suite",
      "image.packages[1]",
      "image.packages[2]",
      "image.packages[3]",
      "image.packages[4]",
      'image.extra_files["etc/relative"]',
      'image.extra_files["/etc/../shadow"]',
      'image.extra_files["/ok"]',
    ]);
  });
  it("accepts real flake references", () => {
    for (const flakeRef of ["github:acme/images#web", "git+https://git.example.com/r?ref=main&rev=abc#pkg", "path:/srv/flake", "."]) {
      expect(imageSourceViolations({ kind: "nix", flakeRef, profile: "minimal" }, "image")).toEqual([]);
    }
  });
  it("refuses flake references with whitespace or shell metacharacters, and bad profiles", () => {
    for (const flakeRef of ["", "a b", "x;rm -rf /", "$(id)", "`id`", "a|b", "--option", "a\nb", "'q'"]) {
      expect(fields(imageSourceViolations({ kind: "nix", flakeRef, profile: "minimal" }, "image"))).toEqual(["image.flake_ref"]);
    }
    for (const profile of ["", "Python", "-x", "a_b", "x-"]) {
      expect(fields(imageSourceViolations({ kind: "nix", flakeRef: "github:a/b", profile }, "image"))).toEqual(["image.profile"]);
    }
  });
  it("refuses an unknown kind and a non-object", () => {
    expect(imageSourceViolations({ kind: "docker" }, "image")).toEqual([{ field: "image.kind", rule: "must be one of debian, nix" }]);
    expect(imageSourceViolations("debian", "image")).toEqual([{ field: "image", rule: "must be an object" }]);
  });
});

describe("enumViolations", () => {
  it("accepts members and refuses anything else, listing the members", () => {
    expect(enumViolations("qemu", HYPERVISORS, "hypervisor")).toEqual([]);
    expect(enumViolations("QEMU", HYPERVISORS, "hypervisor")).toEqual([
      { field: "hypervisor", rule: "must be one of auto, firecracker, qemu" },
    ]);
    expect(enumViolations(undefined, HYPERVISORS, "hypervisor")).toHaveLength(1);
  });
  it("never accepts a string outside the set (property)", () => {
    fc.assert(
      fc.property(fc.string(), (s) => {
        const refused = enumViolations(s, HYPERVISORS, "h").length === 1;
        return refused === !(HYPERVISORS as readonly string[]).includes(s);
      }),
    );
  });
});
