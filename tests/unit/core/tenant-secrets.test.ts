import { beforeEach, describe, expect, it } from "vitest";
import { isMvmError } from "../../../src/core/errors.js";
import type { Instance } from "../../../src/core/model.js";
import { MAX_SECRET_BYTES, MAX_SECRET_FILES, secretFilesViolations } from "../../../src/core/tenant-secrets.js";
import { createInstance } from "../../../src/core/use-cases/instances.js";
import { startInstance, type DataPlaneDeps } from "../../../src/core/use-cases/lifecycle.js";
import { createPool } from "../../../src/core/use-cases/pools.js";
import { sleepInstance, wakeInstance } from "../../../src/core/use-cases/sleep-wake.js";
import { createTenant, rotateSecrets } from "../../../src/core/use-cases/tenants.js";
import { FakeDataPlane } from "../../../src/runtime/fake/fake-data-plane.js";
import { fakeDataPlaneDeps } from "../../helpers/fake-data-plane-deps.js";

const bytes = (text: string) => new TextEncoder().encode(text);

describe("secret set rules", () => {
  it("names each bad file name, and the count and size limits", () => {
    expect(secretFilesViolations({ "db.password": bytes("x"), "API_KEY-2": bytes("y") }, "secrets.files")).toEqual([]);
    expect(secretFilesViolations({ ".": bytes(""), "..": bytes(""), "a/b": bytes(""), "": bytes(""), ["x".repeat(256)]: bytes("") }, "f").map((v) => v.field)).toEqual([
      'f["."]',
      'f[".."]',
      'f["a/b"]',
      'f[""]',
      `f[${JSON.stringify("x".repeat(256))}]`,
    ]);
    const many = Object.fromEntries(Array.from({ length: MAX_SECRET_FILES + 1 }, (_, i) => [`s${i}`, bytes("")]));
    expect(secretFilesViolations(many, "f")).toEqual([{ field: "f", rule: expect.stringMatching(/at most 256 files/) }]);
    expect(secretFilesViolations({ big: new Uint8Array(MAX_SECRET_BYTES + 1) }, "f")).toEqual([{ field: "f", rule: expect.stringMatching(/at most 1048576 bytes/) }]);
    expect(secretFilesViolations({ big: new Uint8Array(MAX_SECRET_BYTES) }, "f")).toEqual([]);
  });
});

describe("rotateSecrets and the secrets disk", () => {
  let plane: FakeDataPlane;
  let deps: DataPlaneDeps;
  let builds: Array<{ files: string[]; keepSize: boolean | undefined }>;
  const keyOf = (i: Instance) => ({ tenantId: i.tenantId, poolId: i.poolId, instanceId: i.instanceId });

  beforeEach(async () => {
    plane = new FakeDataPlane();
    deps = fakeDataPlaneDeps(plane);
    builds = [];
    const volumes = deps.volumes;
    deps = {
      ...deps,
      volumes: {
        ...volumes,
        buildSecretsDisk: async (path, files, options) => {
          builds.push({ files: Object.keys(files).sort(), keepSize: options?.keepSize });
          return volumes.buildSecretsDisk(path, files, options);
        },
      },
    };
    await createTenant(deps, { tenantId: "acme", quotas: {} });
    await createPool(deps, { tenantId: "acme", poolId: "web" }, { resources: { vcpus: 1, memMib: 256, dataDiskMib: 0 } });
    await deps.store.putPool({ ...(await deps.store.getPool("acme", "web"))!, currentRevision: "abc123" });
  });

  it("puts the set in force under user-secrets/ on every start, and a wake (same disk size) gets the set rotated while asleep", async () => {
    await rotateSecrets(deps, { tenantId: "acme", files: { token: bytes("one") } });
    const created = await createInstance(deps, { tenantId: "acme", poolId: "web" });
    const running = await startInstance(deps, keyOf(created));
    const secretsPath = [...plane.files.keys()].find((p) => p.includes(running.instanceId) && p.includes("secrets"))!;
    expect(JSON.parse(plane.files.get(secretsPath)!)["user-secrets/token"]).toBe("one");
    expect(JSON.parse(JSON.parse(plane.files.get(secretsPath)!)["identity.json"]).secrets_epoch).toBe(1);

    await sleepInstance(deps, keyOf(running));
    const rotated = await rotateSecrets(deps, { tenantId: "acme", files: { token: bytes("two"), extra: bytes("3") } });
    expect(rotated.secretsEpoch).toBe(2);
    await wakeInstance(deps, keyOf(running));
    const woken = JSON.parse(plane.files.get(secretsPath)!);
    expect([woken["user-secrets/token"], woken["user-secrets/extra"], JSON.parse(woken["identity.json"]).secrets_epoch]).toEqual(["two", "3", 2]);
    expect(builds.map((b) => b.keepSize)).toEqual([false, true]);
  });

  it("refuses a bad set before writing anything, and an unknown tenant", async () => {
    const error = await rotateSecrets(deps, { tenantId: "acme", files: { "../etc": bytes("x") } }).catch((e: unknown) => e);
    expect(isMvmError(error) && error.kind).toBe("invalid");
    expect(await deps.store.getTenantSecrets("acme")).toEqual({});
    expect((await deps.store.getTenant("acme"))?.secretsEpoch).toBe(0);
    const missing = await rotateSecrets(deps, { tenantId: "ghost" }).catch((e: unknown) => e);
    expect(isMvmError(missing) && missing.kind).toBe("not_found");
  });
});
