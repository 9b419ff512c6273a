// Real Firecracker, real KVM: boot, pause, snapshot, restore, and the same under the jailer. Runs only where the
// `firecracker` binary and a KVM that actually runs a guest exist (and MVM_FC_KERNEL/MVM_FC_ROOTFS name a guest
// built for it); anywhere else it is skipped with the reason printed, never faked.

import { constants } from "node:fs";
import { access, copyFile, mkdir, mkdtemp, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { VmLaunchSpec } from "../../../src/core/data-plane-ports.js";
import { findOnPath } from "../../../src/runtime/host/host-facts.js";
import { createFirecrackerVmm } from "../../../src/runtime/firecracker/firecracker-vmm.js";
import { probeKvmForFirecracker } from "../../../src/runtime/firecracker/firecracker-probe.js";
import { probeKvmCached } from "../../../src/runtime/qemu/kvm-probe.js";

async function skipReason(): Promise<string | null> {
  const firecracker = await findOnPath("firecracker");
  if (firecracker === null) return "firecracker is not installed on this host";
  const kvm = await probeKvmForFirecracker(() => probeKvmCached({}));
  if (!kvm.usable) return `kvm is not usable here: ${kvm.reason}`;
  if (!process.env.MVM_FC_KERNEL || !process.env.MVM_FC_ROOTFS) return "MVM_FC_KERNEL and MVM_FC_ROOTFS must name a guest kernel and raw root image";
  if (process.getuid?.() !== 0) return "needs root (TAP, jailer)";
  return null;
}

const reason = await skipReason();
if (reason !== null) console.log(`skipping tests/e2e/firecracker: ${reason}`);

describe.skipIf(reason !== null)("firecracker e2e", () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  async function spec(name: string): Promise<VmLaunchSpec> {
    const dir = await mkdtemp(join(tmpdir(), `mvm-fc-e2e-${name}-`));
    dirs.push(dir);
    const root = join(dir, "root.img");
    await copyFile(process.env.MVM_FC_ROOTFS as string, root);
    const blank = async (file: string) => {
      await writeFile(join(dir, file), "");
      await truncate(join(dir, file), 1024 * 1024);
      return join(dir, file);
    };
    await access(process.env.MVM_FC_KERNEL as string, constants.R_OK);
    await mkdir(join(dir, "run"), { mode: 0o700 });
    return {
      instanceId: "i-0e2e0001",
      vcpus: 1,
      memMib: 256,
      kernelPath: process.env.MVM_FC_KERNEL as string,
      initrdPath: process.env.MVM_FC_INITRD ?? null,
      kernelArgs: ["mvm.instance=i-0e2e0001", "ip=off"],
      disks: [
        { role: "root", path: root, format: "raw", readOnly: false },
        { role: "data", path: await blank("data.img"), format: "raw", readOnly: true },
        { role: "secrets", path: await blank("secrets.img"), format: "raw", readOnly: true },
      ],
      tap: { name: process.env.MVM_FC_TAP ?? "mvmfce2e0", mac: "02:fc:00:00:e2:01" },
      runDir: join(dir, "run"),
      netns: process.env.MVM_NETNS ?? null,
      cgroupProcsFiles: [],
      bootTimeoutMs: 30_000,
    };
  }

  it("boots, pauses, snapshots, restores and shuts down", async () => {
    const vmm = createFirecrackerVmm({});
    const s = await spec("direct");
    const proc = await vmm.boot(s);
    await vmm.pause(proc);
    const snap = join(s.runDir, "..", "snap");
    await mkdir(snap);
    const files = await vmm.snapshot(proc, snap, "full");
    await vmm.shutdown(proc, 0);
    const restored = await vmm.restore(s, files);
    expect(await vmm.isAlive(restored)).toBe(true);
    await vmm.shutdown(restored, 5_000);
  });

  it("boots under the jailer and removes the jail afterwards", async () => {
    const base = await mkdtemp(join(tmpdir(), "mvm-fc-jail-"));
    dirs.push(base);
    const vmm = createFirecrackerVmm({ jailer: { chrootBaseDir: base } });
    const s = await spec("jailed");
    const proc = await vmm.boot(s);
    expect(proc.apiSocket.startsWith(join(base, "firecracker", s.instanceId, "root"))).toBe(true);
    await vmm.shutdown(proc, 5_000);
    expect(await access(join(base, "firecracker", s.instanceId)).then(() => true, () => false)).toBe(false);
  });
});
