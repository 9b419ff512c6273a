// DataPlaneDeps made of in-memory test doubles (MemoryStore, FakeDataPlane): for unit tests of the use cases only.

import type { HypervisorKind } from "../../src/core/model.js";
import type { Store } from "../../src/core/ports.js";
import type { DataPlaneDeps } from "../../src/core/use-cases/lifecycle.js";
import type { FakeDataPlane } from "../../src/runtime/fake/fake-data-plane.js";
import { MemoryStore } from "../../src/runtime/fake/memory-store.js";

export function fakeDataPlaneDeps(plane: FakeDataPlane, store: Store = new MemoryStore()): DataPlaneDeps {
  let counter = 0;
  return {
    store,
    clock: { nowMs: () => 1_700_000_000_000 + counter++ },
    ids: { randomHex: (n: number) => (counter++).toString(16).padStart(n * 2, "0") },
    keys: { ed25519: (c: string) => ({ publicKey: `ssh-ed25519 AAAA ${c}`, privateKey: "PRIVATE" }) },
    networkPool: { cidr: "10.240.0.0/12", prefixLen: 24 },
    vmm: (kind: HypervisorKind) => plane.vmm(kind),
    chooseHypervisor: async () => "qemu",
    network: plane.network("mvm-test"),
    cgroups: plane.cgroupsPort(),
    volumes: plane.volumes(),
    snapshots: plane.snapshotStore(),
    guest: plane.guest((argv) => ({ exitCode: 0, stdout: `ran ${argv.join(" ")}\n`, stderr: "" })),
    paths: {
      revisionDir: (t, p, r) => `/data/${t}/${p}/revisions/${r}`,
      instanceDir: (t, p, i) => `/data/${t}/${p}/instances/${i}`,
      tenantPrivateKey: (t) => `/data/${t}/ssh/id_ed25519`,
      keptDataDisk: (t, p, i) => `/data/${t}/${p}/kept/${i}/data.ext4`,
    },
    cgroupLimits: (pool) => ({ memoryBytes: pool.resources.memMib * 1024 * 1024, cpuQuotaUs: 100_000, cpuPeriodUs: 100_000, cpuBurstUs: 100_000, pidsMax: 64 }),
    metadataPort: 8169,
    bootTimeoutMs: 1000,
    stopTimeoutMs: 1000,
  };
}
