import { describe, expect, it } from "vitest";
import { DESIRED_STATE_SCHEMA_VERSION, parseDesiredState } from "../../../src/core/desired-state.js";
import { MvmError } from "../../../src/core/errors.js";
import type { FieldViolation } from "../../../src/core/errors.js";
import { DEFAULT_QUOTA, DEFAULT_SLEEP_POLICY } from "../../../src/core/model.js";

type Json = Record<string, unknown>;

function pool(overrides: Json = {}): Json {
  return {
    pool_id: "web",
    image: { kind: "debian", suite: "bookworm", packages: ["python3"] },
    resources: { vcpus: 1, mem_mib: 512 },
    ...overrides,
  };
}

function tenant(overrides: Json = {}): Json {
  return {
    tenant_id: "acme",
    network: { net_id: 1, ipv4_subnet: "10.240.1.0/24" },
    pools: [pool()],
    ...overrides,
  };
}

function doc(overrides: Json = {}): Json {
  return { schema_version: 1, node_id: "node-1", tenants: [tenant()], ...overrides };
}

function violationsOf(input: unknown): FieldViolation[] {
  try {
    parseDesiredState(input);
  } catch (e) {
    expect(e).toBeInstanceOf(MvmError);
    expect((e as MvmError).kind).toBe("invalid");
    return [...(e as MvmError).violations];
  }
  throw new Error("expected parseDesiredState to throw");
}

function fieldsOf(input: unknown): string[] {
  return violationsOf(input).map((v) => v.field);
}

describe("parseDesiredState: a valid document", () => {
  it("fills every default", () => {
    const state = parseDesiredState(doc());
    expect(state).toEqual({
      schemaVersion: DESIRED_STATE_SCHEMA_VERSION,
      nodeId: "node-1",
      pruneUnknownTenants: false,
      pruneUnknownPools: false,
      tenants: [
        {
          tenantId: "acme",
          network: { netId: 1, ipv4Subnet: "10.240.1.0/24" },
          quotas: { ...DEFAULT_QUOTA },
          labels: {},
          secretsHash: "",
          pools: [
            {
              poolId: "web",
              image: { kind: "debian", suite: "bookworm", packages: ["python3"], extraFiles: {} },
              resources: { vcpus: 1, memMib: 512, dataDiskMib: 0 },
              desiredCounts: { running: 0, warm: 0, sleeping: 0 },
              hypervisor: "auto",
              seccompPolicy: "default",
              snapshotCompression: "none",
              metadataEnabled: true,
              sleepPolicy: { ...DEFAULT_SLEEP_POLICY },
              pinned: false,
              critical: false,
              userData: "",
            },
          ],
        },
      ],
    });
  });

  it("accepts an empty fleet and a tenant without network or pools", () => {
    expect(parseDesiredState({ schema_version: 1, node_id: "n" }).tenants).toEqual([]);
    const t = parseDesiredState(doc({ tenants: [{ tenant_id: "solo" }] })).tenants[0];
    expect(t).toMatchObject({ tenantId: "solo", network: null, pools: [] });
  });

  it("merges partial quotas and sleep policies with the defaults", () => {
    const state = parseDesiredState(
      doc({ tenants: [tenant({ quotas: { max_pools: 2 }, pools: [pool({ sleep_policy: { sleep_after_idle_s: 3600 } })] })] }),
    );
    expect(state.tenants[0]?.quotas).toEqual({ ...DEFAULT_QUOTA, maxPools: 2 });
    expect(state.tenants[0]?.pools[0]?.sleepPolicy).toEqual({ ...DEFAULT_SLEEP_POLICY, sleepAfterIdleS: 3600 });
  });

  const snake = {
    schema_version: 1,
    node_id: "node-7",
    prune_unknown_tenants: true,
    prune_unknown_pools: true,
    tenants: [
      {
        tenant_id: "acme",
        network: { net_id: 7, ipv4_subnet: "10.240.0.0/16" },
        quotas: { max_vcpus: 64, max_mem_mib: 65536, max_running: 10, max_warm: 5, max_pools: 3, max_instances_per_pool: 20, max_disk_gib: 500 },
        labels: { "app.kubernetes.io/team": "infra", tier: "gold" },
        secrets_hash: "sha256:abc123",
        pools: [
          {
            pool_id: "ci",
            image: { kind: "nix", flake_ref: "github:acme/images#ci", profile: "python" },
            resources: { vcpus: 2, mem_mib: 2048, data_disk_mib: 4096 },
            desired_counts: { running: 2, warm: 1, sleeping: 3 },
            hypervisor: "firecracker",
            seccomp_policy: "strict",
            snapshot_compression: "zstd",
            metadata_enabled: false,
            sleep_policy: { warm_after_idle_s: 60, sleep_after_idle_s: 120, cpu_idle_pct: 2.5, net_idle_bytes: 4096 },
            pinned: true,
            critical: true,
          },
          {
            pool_id: "web",
            image: { kind: "debian", suite: "trixie", packages: ["nginx"], extra_files: { "/etc/nginx/x.conf": "a" } },
            resources: { vcpus: 1, mem_mib: 256 },
          },
        ],
      },
    ],
  };

  const camel = {
    schemaVersion: 1,
    nodeId: "node-7",
    pruneUnknownTenants: true,
    pruneUnknownPools: true,
    tenants: [
      {
        tenantId: "acme",
        network: { netId: 7, ipv4Subnet: "10.240.0.0/16" },
        quotas: { maxVcpus: 64, maxMemMib: 65536, maxRunning: 10, maxWarm: 5, maxPools: 3, maxInstancesPerPool: 20, maxDiskGib: 500 },
        labels: { "app.kubernetes.io/team": "infra", tier: "gold" },
        secretsHash: "sha256:abc123",
        pools: [
          {
            poolId: "ci",
            image: { nix: { flakeRef: "github:acme/images#ci", profile: "python" } },
            resources: { vcpus: 2, memMib: 2048, dataDiskMib: "4096" },
            desiredCounts: { running: 2, warm: 1, sleeping: 3 },
            hypervisor: "HYPERVISOR_FIRECRACKER",
            seccompPolicy: "SECCOMP_POLICY_STRICT",
            snapshotCompression: "COMPRESSION_ZSTD",
            metadataEnabled: false,
            sleepPolicy: { warmAfterIdleS: 60, sleepAfterIdleS: 120, cpuIdlePct: 2.5, netIdleBytes: "4096" },
            pinned: true,
            critical: true,
          },
          {
            poolId: "web",
            image: { debian: { suite: "trixie", packages: ["nginx"], extraFiles: { "/etc/nginx/x.conf": "a" } } },
            resources: { vcpus: 1, memMib: 256, dataDiskMib: null },
            hypervisor: "HYPERVISOR_UNSPECIFIED",
          },
        ],
      },
    ],
  };

  it("snake_case and camelCase (proto JSON) inputs parse to the same value", () => {
    const fromSnake = parseDesiredState(snake);
    expect(parseDesiredState(camel)).toEqual(fromSnake);
    expect(fromSnake.tenants[0]?.pools[0]).toMatchObject({
      image: { kind: "nix", flakeRef: "github:acme/images#ci", profile: "python" },
      resources: { vcpus: 2, memMib: 2048, dataDiskMib: 4096 },
      hypervisor: "firecracker",
      seccompPolicy: "strict",
      snapshotCompression: "zstd",
    });
    expect(fromSnake.tenants[0]?.pools[1]?.hypervisor).toBe("auto");
  });

  it("keeps map keys (labels, extra files) exactly as written", () => {
    const state = parseDesiredState(camel);
    expect(Object.keys(state.tenants[0]?.labels ?? {})).toEqual(["app.kubernetes.io/team", "tier"]);
    const image = state.tenants[0]?.pools[1]?.image;
    expect(image?.kind === "debian" && Object.keys(image.extraFiles)).toEqual(["/etc/nginx/x.conf"]);
  });

  it("accepts derived network fields when they match", () => {
    const network = { net_id: 3, ipv4_subnet: "10.1.0.0/29", gateway_ip: "10.1.0.1", bridge_name: "br-mvm-3" };
    expect(parseDesiredState(doc({ tenants: [tenant({ network })] })).tenants[0]?.network).toEqual({
      netId: 3,
      ipv4Subnet: "10.1.0.0/29",
    });
  });
});

describe("parseDesiredState: malformed documents, with exact field paths", () => {
  it("not an object", () => {
    expect(violationsOf([1, 2])).toEqual([{ field: "desired_state", rule: "must be an object" }]);
    expect(fieldsOf(null)).toEqual(["desired_state"]);
    expect(fieldsOf("schema_version: 1")).toEqual(["desired_state"]);
  });

  it("missing or wrong schema_version", () => {
    expect(fieldsOf({ node_id: "n" })).toEqual(["schema_version"]);
    expect(violationsOf(doc({ schema_version: 2 }))).toEqual([
      { field: "schema_version", rule: "must be 1, the version this build reads (got 2)" },
    ]);
    expect(fieldsOf(doc({ schema_version: "one" }))).toEqual(["schema_version"]);
  });

  it("missing or bad node_id", () => {
    expect(fieldsOf({ schema_version: 1 })).toEqual(["node_id"]);
    expect(fieldsOf(doc({ node_id: "../etc" }))).toEqual(["node_id"]);
  });

  it("unknown fields, at any depth, named as written", () => {
    const v = violationsOf(
      doc({
        prune_unknown_tennants: true,
        tenants: [tenant({ qoutas: {}, pools: [pool({ resources: { vcpus: 1, mem_mib: 512, storage_gb: 1 } })] })],
      }),
    );
    expect(v.map((x) => x.field)).toEqual(["prune_unknown_tennants", "tenants[0].qoutas", "tenants[0].pools[0].resources.storage_gb"]);
    expect(v[0]?.rule).toBe("unknown field (did you mean prune_unknown_tenants?)");
    expect(v[1]?.rule).toBe("unknown field (did you mean quotas?)");
    expect(v[2]?.rule).toMatch(/^unknown field \(expected one of: vcpus, mem_mib, data_disk_mib\)$/);
  });

  it("a field given in both spellings", () => {
    expect(violationsOf(doc({ nodeId: "node-2" }))).toEqual([{ field: "node_id", rule: "given twice, as node_id and nodeId" }]);
  });

  it("duplicate tenant IDs", () => {
    const t2 = tenant({ network: { net_id: 2, ipv4_subnet: "10.240.2.0/24" } });
    expect(violationsOf(doc({ tenants: [tenant(), t2] }))).toEqual([
      { field: "tenants[1].tenant_id", rule: "duplicate: tenants[0] has tenant_id acme" },
    ]);
  });

  it("duplicate pool IDs within a tenant, but not across tenants", () => {
    expect(fieldsOf(doc({ tenants: [tenant({ pools: [pool(), pool({ pool_id: "db" }), pool()] })] }))).toEqual([
      "tenants[0].pools[2].pool_id",
    ]);
    const other = tenant({ tenant_id: "other", network: { net_id: 2, ipv4_subnet: "10.240.2.0/24" } });
    expect(() => parseDesiredState(doc({ tenants: [tenant(), other] }))).not.toThrow();
  });

  it("duplicate net_ids", () => {
    const t2 = tenant({ tenant_id: "beta", network: { net_id: 1, ipv4_subnet: "10.240.2.0/24" } });
    expect(violationsOf(doc({ tenants: [tenant(), t2] }))).toEqual([
      { field: "tenants[1].network.net_id", rule: "duplicate: tenants[0].network has net_id 1" },
    ]);
  });

  it("overlapping subnets between tenants (a /16 containing a /24)", () => {
    const wide = tenant({ tenant_id: "beta", network: { net_id: 2, ipv4_subnet: "10.240.0.0/16" } });
    expect(violationsOf(doc({ tenants: [tenant(), wide] }))).toEqual([
      { field: "tenants[1].network.ipv4_subnet", rule: "overlaps tenants[0].network.ipv4_subnet (10.240.1.0/24)" },
    ]);
  });

  it("bad, missing and inconsistent network fields", () => {
    expect(fieldsOf(doc({ tenants: [tenant({ network: { net_id: 4096, ipv4_subnet: "10.240.1.1/24" } })] }))).toEqual([
      "tenants[0].network.net_id",
      "tenants[0].network.ipv4_subnet",
    ]);
    expect(fieldsOf(doc({ tenants: [tenant({ network: { ipv4_subnet: "10.0.0.0/8" } })] }))).toEqual([
      "tenants[0].network.net_id",
      "tenants[0].network.ipv4_subnet",
    ]);
    const wrongDerived = { net_id: 1, ipv4_subnet: "10.240.1.0/24", gateway_ip: "10.240.1.254", bridge_name: "br0" };
    expect(fieldsOf(doc({ tenants: [tenant({ network: wrongDerived })] }))).toEqual([
      "tenants[0].network.gateway_ip",
      "tenants[0].network.bridge_name",
    ]);
  });

  it("bad IDs", () => {
    expect(fieldsOf(doc({ tenants: [tenant({ tenant_id: "Acme", pools: [pool({ pool_id: "web/../x" })] })] }))).toEqual([
      "tenants[0].tenant_id",
      "tenants[0].pools[0].pool_id",
    ]);
    expect(fieldsOf(doc({ tenants: [{ pools: [{ image: pool().image, resources: pool().resources }] }] }))).toEqual([
      "tenants[0].tenant_id",
      "tenants[0].pools[0].pool_id",
    ]);
  });

  it("a pool naming another tenant", () => {
    expect(violationsOf(doc({ tenants: [tenant({ pools: [pool({ tenant_id: "globex" })] })] }))).toEqual([
      {
        field: "tenants[0].pools[0].tenant_id",
        rule: 'must be the enclosing tenant\'s id acme (or be left out), got "globex"',
      },
    ]);
    expect(() => parseDesiredState(doc({ tenants: [tenant({ pools: [pool({ tenantId: "acme" })] })] }))).not.toThrow();
  });

  it("negative and non-integer counts", () => {
    expect(
      violationsOf(doc({ tenants: [tenant({ pools: [pool({ desired_counts: { running: -1, warm: 1.5 } })] })] })),
    ).toEqual([
      { field: "tenants[0].pools[0].desired_counts.running", rule: "must be a non-negative integer" },
      { field: "tenants[0].pools[0].desired_counts.warm", rule: "must be a non-negative integer" },
    ]);
  });

  it("resources out of range, missing, or of the wrong type", () => {
    expect(fieldsOf(doc({ tenants: [tenant({ pools: [pool({ resources: { vcpus: 33, mem_mib: "lots" } })] })] }))).toEqual([
      "tenants[0].pools[0].resources.vcpus",
      "tenants[0].pools[0].resources.mem_mib",
    ]);
    expect(fieldsOf(doc({ tenants: [tenant({ pools: [pool({ resources: { vcpus: 2 } })] })] }))).toEqual([
      "tenants[0].pools[0].resources.mem_mib",
    ]);
    expect(fieldsOf(doc({ tenants: [tenant({ pools: [pool({ resources: undefined })] })] }))).toEqual([
      "tenants[0].pools[0].resources",
    ]);
  });

  it("invalid enums and booleans", () => {
    const bad = pool({ hypervisor: "kvm", seccomp_policy: "HYPERVISOR_QEMU", snapshot_compression: "gzip", pinned: "yes" });
    const v = violationsOf(doc({ tenants: [tenant({ pools: [bad] })] }));
    expect(v).toEqual([
      { field: "tenants[0].pools[0].hypervisor", rule: "must be one of auto, firecracker, qemu" },
      { field: "tenants[0].pools[0].seccomp_policy", rule: "must be one of default, strict" },
      { field: "tenants[0].pools[0].snapshot_compression", rule: "must be one of none, lz4, zstd" },
      { field: "tenants[0].pools[0].pinned", rule: "must be true or false" },
    ]);
    expect(fieldsOf(doc({ prune_unknown_pools: 1 }))).toEqual(["prune_unknown_pools"]);
  });

  it("bad images in either form", () => {
    const paths = (image: unknown) => fieldsOf(doc({ tenants: [tenant({ pools: [pool({ image })] })] }));
    expect(paths({ kind: "debian", suite: "Bookworm", packages: ["A"] })).toEqual([
      "tenants[0].pools[0].image.suite",
      "tenants[0].pools[0].image.packages[0]",
    ]);
    expect(paths({ debian: { suite: "bookworm", packages: ["ok", "$(x)"] } })).toEqual([
      "tenants[0].pools[0].image.debian.packages[1]",
    ]);
    expect(paths({ nix: { flake_ref: "a b", profile: "minimal" } })).toEqual(["tenants[0].pools[0].image.nix.flake_ref"]);
    expect(paths({ kind: "nix", flake_ref: "github:a/b", profile: "minimal", suite: "x" })).toEqual([
      "tenants[0].pools[0].image.suite",
    ]);
    expect(paths({ kind: "docker" })).toEqual(["tenants[0].pools[0].image.kind"]);
    expect(paths({ debian: { suite: "bookworm" }, nix: { flake_ref: "x", profile: "y" } })).toEqual(["tenants[0].pools[0].image"]);
    expect(paths({})).toEqual(["tenants[0].pools[0].image"]);
    expect(paths(undefined)).toEqual(["tenants[0].pools[0].image"]);
  });

  it("sleep policy: sleep before warm, also against the default warm threshold", () => {
    expect(
      violationsOf(doc({ tenants: [tenant({ pools: [pool({ sleep_policy: { sleep_after_idle_s: 100 } })] })] })),
    ).toEqual([
      {
        field: "tenants[0].pools[0].sleep_policy.sleep_after_idle_s",
        rule: "must be at least warm_after_idle_s (300), got 100",
      },
    ]);
  });

  it("malformed types: tenants and pools not lists, tenant not an object, labels not a map", () => {
    expect(fieldsOf(doc({ tenants: { acme: {} } }))).toEqual(["tenants"]);
    expect(fieldsOf(doc({ tenants: [tenant({ pools: "web" })] }))).toEqual(["tenants[0].pools"]);
    expect(fieldsOf(doc({ tenants: ["acme"] }))).toEqual(["tenants[0]"]);
    expect(fieldsOf(doc({ tenants: [tenant({ labels: ["a"] })] }))).toEqual(["tenants[0].labels"]);
    expect(fieldsOf(doc({ tenants: [tenant({ labels: { "bad key": "v" } })] }))).toEqual(['tenants[0].labels["bad key"]']);
    expect(fieldsOf(doc({ tenants: [tenant({ secrets_hash: "has space" })] }))).toEqual(["tenants[0].secrets_hash"]);
    expect(fieldsOf(doc({ tenants: [tenant({ quotas: { max_pools: -1 } })] }))).toEqual(["tenants[0].quotas.max_pools"]);
  });
});

describe("parseDesiredState: desired counts against the tenant's quota", () => {
  const quotas = { max_vcpus: 8, max_mem_mib: 4096, max_running: 4, max_warm: 2, max_pools: 2, max_instances_per_pool: 5, max_disk_gib: 10 };
  const within = (pools: Json[]) => doc({ tenants: [tenant({ quotas, pools })] });
  const counts = (running: number, warm = 0, sleeping = 0) => ({ desired_counts: { running, warm, sleeping } });

  it("allows counts exactly at every limit", () => {
    const pools = [
      pool({ pool_id: "a", resources: { vcpus: 2, mem_mib: 1024, data_disk_mib: 2048 }, ...counts(2, 0, 3) }),
      pool({ pool_id: "b", resources: { vcpus: 2, mem_mib: 1024 }, ...counts(0, 2) }),
    ];
    expect(() => parseDesiredState(within(pools))).not.toThrow();
  });

  it("refuses one past each limit, at the exact path", () => {
    expect(violationsOf(within([pool({ pool_id: "a", ...counts(5) })]))).toEqual([
      { field: "tenants[0].pools", rule: "desired running instances total 5 across pools, above quotas.max_running (4)" },
    ]);
    expect(fieldsOf(within([pool({ pool_id: "a", ...counts(0, 2) }), pool({ pool_id: "b", ...counts(0, 1) })]))).toEqual([
      "tenants[0].pools",
    ]);
    expect(violationsOf(within([pool({ pool_id: "a", ...counts(1, 1, 4) })]))).toEqual([
      {
        field: "tenants[0].pools[0].desired_counts",
        rule: "running + warm + sleeping is 6, above quotas.max_instances_per_pool (5)",
      },
    ]);
    const threePools = [pool({ pool_id: "a" }), pool({ pool_id: "b" }), pool({ pool_id: "c" })];
    expect(violationsOf(within(threePools))).toEqual([{ field: "tenants[0].pools", rule: "3 pools, above quotas.max_pools (2)" }]);
  });

  it("refuses vCPUs, memory and disk of the desired instances past the limits", () => {
    const rules = (p: Json) => violationsOf(within([p])).map((v) => v.rule);
    expect(rules(pool({ resources: { vcpus: 3, mem_mib: 512 }, ...counts(2, 1) }))).toEqual([
      "vCPUs of desired running + warm instances total 9 across pools, above quotas.max_vcpus (8)",
    ]);
    expect(rules(pool({ resources: { vcpus: 1, mem_mib: 2049 }, ...counts(1, 1) }))).toEqual([
      "memory (MiB) of desired running + warm instances total 4098 across pools, above quotas.max_mem_mib (4096)",
    ]);
    expect(rules(pool({ resources: { vcpus: 1, mem_mib: 256, data_disk_mib: 2600 }, ...counts(0, 0, 4) }))).toEqual([
      "data disks (GiB) of desired instances total 10.16 across pools, above quotas.max_disk_gib (10)",
    ]);
  });

  it("checks against the default quota when none is given", () => {
    expect(violationsOf(doc({ tenants: [tenant({ pools: [pool(counts(DEFAULT_QUOTA.maxRunning + 1))] })] }))).toEqual([
      {
        field: "tenants[0].pools",
        rule: `desired running instances total ${DEFAULT_QUOTA.maxRunning + 1} across pools, above quotas.max_running (${DEFAULT_QUOTA.maxRunning})`,
      },
    ]);
  });
});

describe("parseDesiredState: every fault in one pass", () => {
  it("a document with three different faults yields exactly three violations", () => {
    const input = {
      schema_version: 2,
      node_id: "node-1",
      tenants: [
        tenant(),
        tenant({ tenant_id: "beta", network: { net_id: 2, ipv4_subnet: "10.240.1.128/25" }, pools: [pool({ resources: { vcpus: 0, mem_mib: 512 } })] }),
      ],
    };
    // Reported in reading order: the top level first, then each tenant, then the checks across tenants.
    expect(fieldsOf(input)).toEqual(["schema_version", "tenants[1].pools[0].resources.vcpus", "tenants[1].network.ipv4_subnet"]);
  });

  it("reports faults from many tenants and pools together, in one error message", () => {
    let message = "";
    try {
      parseDesiredState(
        doc({
          node_id: "",
          tenants: [
            tenant({ pools: [pool({ hypervisor: "xen" }), pool({ pool_id: "db", desired_counts: { running: -2 } })] }),
            tenant({ tenant_id: "b", network: { net_id: 9, ipv4_subnet: "10.9.0.0/24" }, quotas: { max_warm: "many" } }),
          ],
        }),
      );
    } catch (e) {
      message = (e as Error).message;
    }
    for (const path of [
      "node_id",
      "tenants[0].pools[0].hypervisor",
      "tenants[0].pools[1].desired_counts.running",
      "tenants[1].quotas.max_warm",
    ]) {
      expect(message).toContain(`${path}: `);
    }
  });
});
