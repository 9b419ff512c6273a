import { defineConfig } from "vitest/config";

// The cgroup parent of this run (see tests/global-setup.ts), set here so that the workers and every `mvm` process
// they start inherit it. Always the run's own, whatever the caller's environment says.
process.env.MVM_CGROUP_PARENT = `mvm-test-${process.pid}`;

export default defineConfig({
  test: {
    include: ["tests/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    globalSetup: ["tests/global-setup.ts"],
    env: { MVM_CGROUP_PARENT: process.env.MVM_CGROUP_PARENT },
  },
});
