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
  GuestHook,
  GuestTarget,
  HostCompatibility,
  Network,
  OpenedSnapshot,
  RevisionFiles,
  SnapshotMeta,
  SnapshotSealInfo,
  SnapshotStore,
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
import { GUEST_HOOK_PATHS } from "../../core/data-plane-ports.js";
import { MvmError } from "../../core/errors.js";
import type { HypervisorKind } from "../../core/model.js";
import { bridgeName, parseBridgeName, parseTapName } from "../../core/naming.js";

export type FakeFailPoint =
  | "ensureTenant"
  | "ensureTap"
  | "cgroups.ensure"
  | "createRootOverlay"
  | "ensureDataDisk"
  | "buildSecretsDisk"
  | "boot"
  | "snapshot"
  | "restore"
  | "seal";

export class FakeDataPlane {
  readonly bridges = new Set<string>();
  readonly taps = new Map<string, TapPlan>();
  readonly cgroups = new Map<string, CgroupLimits>();
  readonly files = new Map<string, string>();
  /** pid → launch spec of every fake VMM that is "running". */
  readonly processes = new Map<number, VmLaunchSpec>();
  readonly execs: Array<{ target: GuestTarget; argv: readonly string[] }> = [];
  failAt: FakeFailPoint | null = null;
  /** dir → meta of every sealed fake snapshot. */
  readonly snapshotMetas = new Map<string, SnapshotMeta>();
  /** What `hostStamp` reports; change it to simulate another host. */
  host: Omit<HostCompatibility, "vmmVersion"> = { cpuModel: "fake cpu", hostKernel: "6.1.0-fake" };
  /** pids of fake VMMs that are paused. */
  readonly paused = new Set<number>();
  private nextPid = 1000;

  private maybeFail(point: FakeFailPoint): void {
    if (this.failAt === point) throw new Error(`fake failure at ${point}`);
  }

  /** `<tenant>/<pool>` → revision → bytes its files would free: the revision directories "on disk". */
  readonly revisions = new Map<string, Map<string, number>>();
  /** revision → when its directory changed; 0 (long ago) when not set. */
  readonly revisionChangedAtMs = new Map<string, number>();

  revisionFiles(): RevisionFiles {
    const plane = this;
    return {
      async list(tenantId: string, poolId: string) {
        return [...(plane.revisions.get(`${tenantId}/${poolId}`) ?? [])].map(([revision, freedBytes]) => ({
          revision,
          freedBytes,
          changedAtMs: plane.revisionChangedAtMs.get(revision) ?? 0,
        }));
      },
      async remove(tenantId: string, poolId: string, revision: string) {
        plane.revisions.get(`${tenantId}/${poolId}`)?.delete(revision);
      },
    };
  }

  /** pids of the fake VMMs launched into the instance's (fake) cgroup. */
  processesIn(key: CgroupKey): number[] {
    const procs = `/fake/cgroup/${key.tenantId}/${key.poolId}/${key.instanceId}/cgroup.procs`;
    return [...this.processes].filter(([, spec]) => spec.cgroupProcsFiles.includes(procs)).map(([pid]) => pid);
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
      async netIdsPresent() {
        const ids = [...plane.bridges].map(parseBridgeName).concat([...plane.taps.keys()].map((t) => parseTapName(t)?.netId ?? null));
        return [...new Set(ids.filter((id): id is number => id !== null))].sort((a, b) => a - b);
      },
      async removeNetIdLeftovers(netId: number) {
        plane.bridges.delete(bridgeName(netId));
        for (const tap of [...plane.taps.keys()]) if (parseTapName(tap)?.netId === netId) plane.taps.delete(tap);
      },
      async verify(plan: TenantNetworkPlan, expected: readonly TapPlan[]): Promise<TenantNetworkReport> {
        const missing = expected.filter((t) => !plane.taps.has(t.name)).map((t) => t.name);
        return {
          tenantId: plan.tenantId,
          bridgeName: plan.bridgeName,
          ok: plane.bridges.has(plan.bridgeName) && missing.length === 0,
          checks: [],
          strayTaps: [...plane.taps.keys()].filter((name) => parseTapName(name)?.netId === plan.netId && !expected.some((t) => t.name === name)),
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
      async list() {
        return [...plane.cgroups.keys()].map((k) => {
          const [tenantId, poolId, instanceId] = k.split("/") as [string, string, string];
          return { tenantId, poolId, instanceId };
        });
      },
      async processes(key: CgroupKey) {
        return plane.processesIn(key);
      },
      async killProcesses(key: CgroupKey) {
        const pids = plane.processesIn(key);
        for (const pid of pids) plane.processes.delete(pid);
        return pids;
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
      async createRootCopy(base: string, copy: string) {
        plane.maybeFail("createRootOverlay");
        plane.files.set(copy, `raw copy of ${base}`);
      },
      async ensureDataDisk(path: string, sizeMib: number) {
        plane.maybeFail("ensureDataDisk");
        if (!plane.files.has(path)) plane.files.set(path, `data ${sizeMib} MiB`);
      },
      async buildSecretsDisk(path: string, files: Record<string, string | Uint8Array>) {
        plane.maybeFail("buildSecretsDisk");
        plane.files.set(path, JSON.stringify(Object.fromEntries(Object.entries(files).map(([name, c]) => [name, typeof c === "string" ? c : Buffer.from(c).toString()]))));
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
      async pause(p: VmmProcess) {
        plane.paused.add(p.pid);
      },
      async resume(p: VmmProcess) {
        plane.paused.delete(p.pid);
      },
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

  /** A test double of the snapshot store: contents live in `files`, the "hash" is the content itself. */
  snapshotStore(): SnapshotStore {
    const plane = this;
    const digest = (content: string) => `fake-sha:${content}`;
    const drop = (dir: string) => {
      plane.snapshotMetas.delete(dir);
      for (const path of [...plane.files.keys()]) if (path.startsWith(`${dir}/`)) plane.files.delete(path);
    };
    return {
      async create(dir: string) {
        drop(dir);
      },
      async hostStamp(vmmVersion: string): Promise<HostCompatibility> {
        return { ...plane.host, vmmVersion };
      },
      async seal(dir: string, files: VmSnapshotFiles, info: SnapshotSealInfo): Promise<SnapshotMeta> {
        plane.maybeFail("seal");
        const content = plane.files.get(files.memoryFile);
        if (content === undefined) throw new Error(`test double: no memory file ${files.memoryFile}`);
        const name = info.compression === "none" ? "memory" : `memory.${info.compression}`;
        plane.files.delete(files.memoryFile);
        plane.files.set(`${dir}/${name}`, content);
        const meta: SnapshotMeta = {
          type: files.type,
          hypervisor: info.hypervisor,
          hypervisorVersion: info.host.vmmVersion,
          revision: info.revision,
          memMib: info.memMib,
          compression: info.compression,
          memoryFile: name,
          stateFile: null,
          memorySizeBytes: content.length,
          stateSizeBytes: 0,
          uncompressedSizeBytes: content.length,
          sha256: digest(content),
          stateSha256: "",
          createdAt: info.createdAt,
          host: info.host,
        };
        plane.snapshotMetas.set(dir, meta);
        return meta;
      },
      async readMeta(dir: string) {
        return plane.snapshotMetas.get(dir) ?? null;
      },
      async diskBytes(dir: string) {
        const contents = [...plane.files].filter(([path]) => path.startsWith(`${dir}/`)).map(([, content]) => content.length);
        return contents.length === 0 && !plane.snapshotMetas.has(dir) ? null : contents.reduce((a, b) => a + b, 0);
      },
      async open(dir: string, meta: SnapshotMeta): Promise<OpenedSnapshot> {
        const content = plane.files.get(`${dir}/${meta.memoryFile}`);
        if (content === undefined || digest(content) !== meta.sha256) {
          throw new MvmError("failed_precondition", `snapshot ${dir}/${meta.memoryFile}: sha256 does not match its meta (corrupt)`);
        }
        return { files: { type: meta.type, memoryFile: `${dir}/${meta.memoryFile}`, stateFile: null, baseMemoryFile: null }, release: async () => {} };
      },
      async remove(dir: string) {
        drop(dir);
      },
      // The fake has nothing to free later: its files go at once.
      async setAside(dir: string) {
        drop(dir);
        return { purge: async () => {} };
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
      // Recorded like the SSH path runs it: the hook's path in the default image, then its arguments.
      async runHook(target: GuestTarget, hook: GuestHook, args: readonly string[]) {
        const argv = [GUEST_HOOK_PATHS[hook], ...args];
        plane.execs.push({ target, argv });
        return reply(argv);
      },
    };
  }
}
