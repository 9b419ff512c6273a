// In-memory test doubles of the data-plane ports, FOR UNIT TESTS ONLY: they boot nothing, create no interface and
// write no cgroup. They keep just enough state to let tests observe what the use cases did and left behind, and they
// can be told to fail at a given step to exercise rollback.

import type {
  CgroupKey,
  CgroupLimits,
  CgroupUsage,
  Cgroups,
  ExecResult,
  GuestChannel,
  GuestTarget,
  Network,
  TapPlan,
  TenantNetworkPlan,
  TenantNetworkReport,
  VmLaunchSpec,
  Vmm,
  VmmCapabilities,
  VmmProcess,
  VmSnapshotFiles,
  VmSnapshotType,
  Volumes,
} from "../../core/data-plane-ports.js";
import type { HypervisorKind } from "../../core/model.js";

export type FakeFailPoint =
  | "ensureTenant"
  | "ensureTap"
  | "cgroups.ensure"
  | "createRootOverlay"
  | "ensureDataDisk"
  | "buildSecretsDisk"
  | "boot"
  | "snapshot"
  | "restore";

export class FakeDataPlane {
  readonly bridges = new Set<string>();
  readonly taps = new Map<string, TapPlan>();
  readonly cgroups = new Map<string, CgroupLimits>();
  readonly files = new Map<string, string>();
  /** pid → launch spec of every fake VMM that is "running". */
  readonly processes = new Map<number, VmLaunchSpec>();
  readonly execs: Array<{ target: GuestTarget; argv: readonly string[] }> = [];
  failAt: FakeFailPoint | null = null;
  private nextPid = 1000;

  private maybeFail(point: FakeFailPoint): void {
    if (this.failAt === point) throw new Error(`fake failure at ${point}`);
  }

  /** Simulates a VMM killed from outside mvm. */
  killFromOutside(pid: number): void {
    this.processes.delete(pid);
  }

  network(netns: string | null = null): Network {
    const plane = this;
    return {
      netns,
      async ensureTenant(plan: TenantNetworkPlan) {
        plane.maybeFail("ensureTenant");
        plane.bridges.add(plan.bridgeName);
      },
      async removeTenant(plan: TenantNetworkPlan) {
        plane.bridges.delete(plan.bridgeName);
      },
      async ensureTap(_plan: TenantNetworkPlan, tap: TapPlan) {
        plane.maybeFail("ensureTap");
        plane.taps.set(tap.name, tap);
      },
      async removeTap(_plan: TenantNetworkPlan, tapName: string) {
        plane.taps.delete(tapName);
      },
      async ensureInstanceNetwork(plan: TenantNetworkPlan, tap: TapPlan) {
        await this.ensureTenant(plan);
        await this.ensureTap(plan, tap);
      },
      async tapCounters(tapName: string) {
        return plane.taps.has(tapName) ? { rxBytes: 0, txBytes: 0 } : null;
      },
      async verify(plan: TenantNetworkPlan, expected: readonly TapPlan[]): Promise<TenantNetworkReport> {
        const missing = expected.filter((t) => !plane.taps.has(t.name)).map((t) => t.name);
        return {
          tenantId: plan.tenantId,
          bridgeName: plan.bridgeName,
          ok: plane.bridges.has(plan.bridgeName) && missing.length === 0,
          checks: [],
          strayTaps: [],
          missingTaps: missing,
        };
      },
    };
  }

  cgroupsPort(): Cgroups {
    const plane = this;
    const id = (k: CgroupKey) => `${k.tenantId}/${k.poolId}/${k.instanceId}`;
    return {
      version: 2,
      async ensure(key: CgroupKey, limits: CgroupLimits) {
        plane.maybeFail("cgroups.ensure");
        plane.cgroups.set(id(key), limits);
        return { procsFiles: [`/fake/cgroup/${id(key)}/cgroup.procs`] };
      },
      async remove(key: CgroupKey) {
        plane.cgroups.delete(id(key));
      },
      async usage(key: CgroupKey): Promise<CgroupUsage | null> {
        return plane.cgroups.has(id(key)) ? { cpuUsageUs: 0, memoryBytes: 0 } : null;
      },
      async limits(key: CgroupKey) {
        return plane.cgroups.get(id(key)) ?? null;
      },
    };
  }

  volumes(): Volumes {
    const plane = this;
    return {
      async createRootOverlay(base: string, overlay: string) {
        plane.maybeFail("createRootOverlay");
        plane.files.set(overlay, `overlay of ${base}`);
      },
      async ensureDataDisk(path: string, sizeMib: number) {
        plane.maybeFail("ensureDataDisk");
        if (!plane.files.has(path)) plane.files.set(path, `data ${sizeMib} MiB`);
      },
      async buildSecretsDisk(path: string, files: Record<string, string>) {
        plane.maybeFail("buildSecretsDisk");
        plane.files.set(path, JSON.stringify(files));
      },
      async preserveDataDisk(path: string, destination: string) {
        const content = plane.files.get(path);
        if (content === undefined) return;
        plane.files.delete(path);
        plane.files.set(destination, content);
      },
    };
  }

  vmm(kind: HypervisorKind = "qemu"): Vmm {
    const plane = this;
    return {
      kind,
      async capabilities(): Promise<VmmCapabilities> {
        return { kind, available: true, version: "fake", kvmUsable: false, diffSnapshots: false, notes: ["test double"] };
      },
      async boot(spec: VmLaunchSpec): Promise<VmmProcess> {
        plane.maybeFail("boot");
        const pid = plane.nextPid++;
        plane.processes.set(pid, spec);
        return { hypervisor: kind, pid, pidStartTime: pid * 10, apiSocket: `${spec.runDir}/qmp.sock`, serialLog: `${spec.runDir}/serial.log` };
      },
      async pause() {},
      async resume() {},
      async snapshot(p: VmmProcess, dir: string, type: VmSnapshotType): Promise<VmSnapshotFiles> {
        plane.maybeFail("snapshot");
        const memoryFile = `${dir}/memory`;
        plane.files.set(memoryFile, `snapshot of pid ${p.pid}`);
        return { type, memoryFile, stateFile: null, baseMemoryFile: null };
      },
      async restore(spec: VmLaunchSpec, snapshot: VmSnapshotFiles): Promise<VmmProcess> {
        plane.maybeFail("restore");
        if (!plane.files.has(snapshot.memoryFile)) throw new Error(`test double: no snapshot at ${snapshot.memoryFile}`);
        const pid = plane.nextPid++;
        plane.processes.set(pid, spec);
        return { hypervisor: kind, pid, pidStartTime: pid * 10, apiSocket: `${spec.runDir}/qmp.sock`, serialLog: `${spec.runDir}/serial.log` };
      },
      async shutdown(p: VmmProcess) {
        plane.processes.delete(p.pid);
      },
      async isAlive(p: VmmProcess) {
        return plane.processes.has(p.pid);
      },
    };
  }

  guest(reply: (argv: readonly string[]) => ExecResult = () => ({ exitCode: 0, stdout: "", stderr: "" })): GuestChannel {
    const plane = this;
    return {
      async exec(target: GuestTarget, argv: readonly string[]) {
        plane.execs.push({ target, argv });
        return reply(argv);
      },
    };
  }
}
