// NodeService's view of the host: static facts (readHostFacts), capabilities probed through the runtime's own
// adapters (a hypervisor is available when its adapter says so, KVM when a probe actually ran a guest), and disk
// use. Capabilities are probed once at start and again on request.

import { statfs } from "node:fs/promises";
import os from "node:os";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { HypervisorKind } from "../core/model.js";
import type { DataPlaneDeps } from "../core/use-cases/lifecycle.js";
import { findOnPath, readHostFacts } from "../runtime/host/host-facts.js";
import { Hypervisor } from "../../gen/mvm/v1/common_pb.js";
import { HypervisorInfoSchema, NodeCapabilitiesSchema, NodeInfoSchema, type HypervisorInfo, type NodeCapabilities, type NodeInfo } from "../../gen/mvm/v1/node_pb.js";
import type { DiskReport, NodeFacts } from "../api/api-deps.js";
import { measureDiskUsage } from "./disk-usage.js";

export const DEFAULT_DISK_RESERVE_BYTES = 1024 ** 3;

const BINARIES: Readonly<Record<HypervisorKind, string>> = {
  firecracker: "firecracker",
  qemu: os.machine() === "aarch64" ? "qemu-system-aarch64" : "qemu-system-x86_64",
};

export interface HostNodeFactsOptions {
  runtime: Pick<DataPlaneDeps, "store" | "vmm" | "cgroups" | "network">;
  revisionsDir(tenantId: string, poolId: string): string;
  agentVersion: string;
  agentStartedAt: Date;
  /** Bytes kept free on the data root. Default 1 GiB. */
  reserveBytes?: number;
}

async function probeHypervisor(runtime: HostNodeFactsOptions["runtime"], kind: HypervisorKind): Promise<HypervisorInfo> {
  const wire = kind === "firecracker" ? Hypervisor.FIRECRACKER : Hypervisor.QEMU;
  const binaryPath = (await findOnPath(BINARIES[kind])) ?? "";
  try {
    const caps = await runtime.vmm(kind).capabilities();
    return create(HypervisorInfoSchema, {
      kind: wire,
      available: caps.available,
      unavailableReason: caps.available ? "" : caps.notes.join("; ") || "not usable on this host",
      version: caps.version ?? "",
      binaryPath,
      hardwareAcceleration: caps.kvmUsable,
      // Both adapters snapshot and restore: QEMU as one migration stream, Firecracker full (and diff when dirty page
      // tracking is on).
      snapshots: caps.available,
      diffSnapshots: caps.available && caps.diffSnapshots,
    });
  } catch (e) {
    return create(HypervisorInfoSchema, {
      kind: wire,
      available: false,
      unavailableReason: `no ${kind} driver on this node: ${e instanceof Error ? e.message : String(e)}`,
      binaryPath,
    });
  }
}

export async function probeCapabilities(runtime: HostNodeFactsOptions["runtime"]): Promise<NodeCapabilities> {
  const [firecracker, qemu] = await Promise.all([probeHypervisor(runtime, "firecracker"), probeHypervisor(runtime, "qemu")]);
  const [jailer, seccompiler, nft, iptables, ip, mmdebstrap, mkfs] = await Promise.all(
    ["jailer", "seccompiler-bin", "nft", "iptables", "ip", "mmdebstrap", "mkfs.ext4"].map((b) => findOnPath(b)),
  );
  const kvm = [firecracker, qemu].find((h) => h.hardwareAcceleration);
  const auto =
    firecracker.available && firecracker.hardwareAcceleration ? Hypervisor.FIRECRACKER : qemu.available ? Hypervisor.QEMU : Hypervisor.UNSPECIFIED;
  return create(NodeCapabilitiesSchema, {
    hypervisors: [firecracker, qemu],
    autoHypervisor: auto,
    kvmUsable: kvm !== undefined,
    kvmDetail: kvm !== undefined ? `a guest ran under KVM with ${kvm.kind === Hypervisor.FIRECRACKER ? "firecracker" : "qemu"}` : qemu.unavailableReason || "no hypervisor reported usable KVM",
    jailerAvailable: jailer !== null,
    seccompilerAvailable: seccompiler !== null,
    cgroupVersion: runtime.cgroups.version,
    nftablesAvailable: nft !== null,
    iptablesAvailable: iptables !== null,
    bridgeSupported: ip !== null,
    netns: runtime.network.netns ?? "",
    debianBuilderAvailable: mmdebstrap !== null && mkfs !== null,
    // There is no nix image builder on this node yet (issue 3 ships the debian one).
    nixBuilderAvailable: false,
  });
}

export function createHostNodeFacts(options: HostNodeFactsOptions): NodeFacts {
  const { runtime } = options;
  let cached: Promise<NodeCapabilities> | null = null;
  const capabilities = (refresh: boolean) => {
    if (refresh || cached === null) {
      const probe = probeCapabilities(runtime);
      cached = probe;
      probe.catch(() => {
        if (cached === probe) cached = null;
      });
    }
    return cached;
  };
  // Host facts probe binaries (a process each); they do not change while the agent runs, free space aside.
  let facts: ReturnType<typeof readHostFacts> | null = null;
  return {
    capabilities,
    async nodeInfo(): Promise<NodeInfo> {
      facts ??= readHostFacts(runtime.store.dataRoot);
      const [node, host, caps, free] = await Promise.all([
        runtime.store.node(),
        facts,
        capabilities(false),
        statfs(runtime.store.dataRoot).then((s) => s.bavail * s.bsize),
      ]);
      return create(NodeInfoSchema, {
        nodeId: node.nodeId,
        hostname: host.hostname,
        arch: os.machine(),
        kernel: host.kernel,
        vcpus: host.vcpus,
        memMib: host.memMib,
        capabilities: caps,
        dataRoot: runtime.store.dataRoot,
        dataRootFreeBytes: BigInt(free),
        agentVersion: options.agentVersion,
        agentStartedAt: timestampFromMs(options.agentStartedAt.getTime()),
      });
    },
    diskUsage(tenantId: string | undefined): Promise<DiskReport> {
      return measureDiskUsage(
        { store: runtime.store, revisionsDir: options.revisionsDir, reserveBytes: options.reserveBytes ?? DEFAULT_DISK_RESERVE_BYTES },
        tenantId,
      );
    },
  };
}
