// `mvm doctor`: what this host can do, probed rather than assumed (a /dev/kvm that exists may still be unusable).

import { access, constants, readFile } from "node:fs/promises";
import { execa } from "execa";
import { kernelHasCpuBurst } from "../cgroups/cgroup-files.js";
import { probeKvmCached } from "../qemu/kvm-probe.js";
import { findOnPath, readHostFacts } from "./host-facts.js";

export type CheckLevel = "ok" | "warn" | "fail";

export interface HostCheck {
  check: string;
  level: CheckLevel;
  detail: string;
  /** A failing required check means mvm cannot run microVMs here. */
  required: boolean;
}

const PROBE_TIMEOUT_MS = 5_000;
/** Below this much free space in the data root, images and snapshots will not fit. */
const MIN_FREE_BYTES = 2 * 1024 ** 3;

async function readable(path: string, mode = constants.R_OK): Promise<boolean> {
  return access(path, mode).then(
    () => true,
    () => false,
  );
}

async function commandWorks(file: string, args: string[]): Promise<{ ok: boolean; output: string }> {
  try {
    const r = await execa(file, args, { timeout: PROBE_TIMEOUT_MS, reject: false });
    return { ok: r.exitCode === 0, output: `${r.stdout}${r.stderr}`.trim() };
  } catch (e) {
    return { ok: false, output: (e as Error).message };
  }
}

export async function runHostChecks(dataRoot: string): Promise<HostCheck[]> {
  const facts = await readHostFacts(dataRoot);
  const binary = (name: string) => facts.binaries.find((b) => b.name === name);
  const checks: HostCheck[] = [];
  const qemu = binary("qemu-system-x86_64");
  checks.push({
    check: "qemu",
    level: qemu?.path ? "ok" : "fail",
    detail: qemu?.path ? `${qemu.version ?? "version unknown"} (${qemu.path})` : "qemu-system-x86_64 not found: run mvm bootstrap",
    required: true,
  });
  const kvm = qemu?.path ? await probeKvmCached({ binary: qemu.path }) : { usable: false, reason: "no QEMU to probe with" };
  checks.push({
    check: "kvm",
    level: kvm.usable ? "ok" : "warn",
    detail: kvm.usable ? kvm.reason : `not usable, software emulation (TCG) will be used: ${kvm.reason}`,
    required: false,
  });
  // Firecracker has no software emulation: its binary alone does not make it usable.
  const fc = binary("firecracker");
  checks.push({
    check: "firecracker",
    level: fc?.path && kvm.usable ? "ok" : "warn",
    detail: !fc?.path
      ? "not installed: pools use QEMU (hypervisor auto)"
      : `${fc.version ?? "version unknown"} (${fc.path})${kvm.usable ? "" : "; KVM is not usable here, so pools use QEMU (hypervisor auto)"}`,
    required: false,
  });
  const jailer = binary("jailer");
  checks.push({ check: "jailer", level: jailer?.path ? "ok" : "warn", detail: jailer?.path ?? "not installed", required: false });
  const seccompiler = await findOnPath("seccompiler-bin");
  checks.push({
    check: "seccompiler",
    level: seccompiler ? "ok" : "warn",
    detail: seccompiler ?? "seccompiler-bin not installed: seccomp policy strict needs a precompiled bpf filter (MVM_SECCOMP_FILTER_BPF)",
    required: false,
  });
  checks.push({
    check: "cgroups",
    level: facts.cgroupVersion ? "ok" : "fail",
    detail: facts.cgroupVersion
      ? `v${facts.cgroupVersion}; ${kernelHasCpuBurst(facts.kernel) ? "CPU burst available" : "no CPU burst (kernel before 5.14): instances are held to their vCPUs even while booting"}`
      : "no cgroup v1 memory controller or v2 hierarchy under /sys/fs/cgroup",
    required: true,
  });
  const nft = binary("nft");
  checks.push({
    check: "nftables",
    level: nft?.path ? "ok" : "fail",
    detail: nft?.path ? (nft.version ?? "present") : "nft not found: run mvm bootstrap",
    required: true,
  });
  const netns = await commandWorks("ip", ["netns", "list"]);
  checks.push({ check: "netns", level: netns.ok ? "ok" : "fail", detail: netns.ok ? "ip netns works" : netns.output, required: true });
  const tun = await readable("/dev/net/tun", constants.R_OK | constants.W_OK);
  checks.push({ check: "tun", level: tun ? "ok" : "fail", detail: tun ? "/dev/net/tun" : "/dev/net/tun missing or not writable", required: true });
  const bridge =
    (await readable("/sys/module/bridge")) ||
    (await readFile("/proc/modules", "utf8").then((m) => /^bridge /m.test(m), () => false)) ||
    (await commandWorks("modprobe", ["-n", "bridge"])).ok;
  checks.push({ check: "bridge", level: bridge ? "ok" : "fail", detail: bridge ? "bridge support available" : "no bridge module", required: true });
  const mmdebstrap = binary("mmdebstrap");
  checks.push({
    check: "mmdebstrap",
    level: mmdebstrap?.path ? "ok" : "fail",
    detail: mmdebstrap?.path ? (mmdebstrap.version ?? "present") : "not found: the debian image builder needs it (mvm bootstrap)",
    required: true,
  });
  const free = facts.dataRootFreeBytes;
  checks.push({
    check: "free space",
    level: free === null ? "warn" : free >= MIN_FREE_BYTES ? "ok" : "fail",
    detail: free === null ? `cannot read free space of ${dataRoot}` : `${(free / 1024 ** 3).toFixed(1)} GiB free in ${dataRoot}`,
    required: true,
  });
  return checks;
}
