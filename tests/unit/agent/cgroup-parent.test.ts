import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { isMvmError } from "../../../src/core/errors.js";
import { cgroupParentFromEnv, openNodeRuntime } from "../../../src/agent/node-runtime.js";

describe("MVM_CGROUP_PARENT", () => {
  const scratch = mkdtempSync(join(tmpdir(), "mvm-cgroup-parent-"));
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  it("defaults to mvm and takes one directory name", () => {
    expect(cgroupParentFromEnv({})).toBe("mvm");
    expect(cgroupParentFromEnv({ MVM_CGROUP_PARENT: "" })).toBe("mvm");
    expect(cgroupParentFromEnv({ MVM_CGROUP_PARENT: "mvm.slice" })).toBe("mvm.slice");
  });

  it("refuses a path, a dot name or an over-long name, naming the variable and the rule", () => {
    for (const bad of ["a/b", "..", ".hidden", "-x", "x".repeat(65), "with space"]) {
      const error = (() => {
        try {
          cgroupParentFromEnv({ MVM_CGROUP_PARENT: bad });
        } catch (e) {
          return e;
        }
        return null;
      })();
      expect(isMvmError(error) && error.kind, bad).toBe("invalid");
      expect((error as Error).message).toMatch(/MVM_CGROUP_PARENT: must be 1-64 characters/);
    }
  });

  it("is checked before the runtime makes its data root", async () => {
    const dataDir = join(scratch, "data");
    await expect(
      openNodeRuntime({ dataDir, env: { MVM_CGROUP_PARENT: "../escape" }, netns: null, actor: { kind: "local", id: "local:test" } }),
    ).rejects.toThrow(/MVM_CGROUP_PARENT/);
    expect(existsSync(dataDir)).toBe(false);
  });
});
