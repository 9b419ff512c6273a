// The Firecracker adapter of the `Vmm` port (SPEC §6.1, §6.6): one Firecracker process per VM, started directly or
// under the jailer, configured through its API socket with the requests built in firecracker-requests.ts. The guest's
// serial console is Firecracker's stdout (sent to the serial log; a daemonized jailer sends stdio to /dev/null, so
// there the serial device writes into the jail instead), and the guest is up when it reports ready there.

import { spawn } from "node:child_process";
import { chmod, chown, mkdir, open, readFile, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { VmLaunchSpec, VmSnapshotFiles, VmSnapshotType, Vmm, VmmCapabilities, VmmProcess } from "../../core/data-plane-ports.js";
import { MvmError, failedPrecondition } from "../../core/errors.js";
import type { SeccompPolicy } from "../../core/model.js";
import { findOnPath } from "../host/host-facts.js";
import { isSameProcess, readProcExe, readProcStartTime } from "../process/proc-stat.js";
import { readVmmPidFile, spawnVmm, vmmLauncherArgv } from "../process/spawn-vmm.js";
import { terminateProcess, waitForProcessExit, watchForExit } from "../process/terminate.js";
import { waitForGuestReady } from "../qemu/guest-ready.js";
import { probeKvmCached } from "../qemu/kvm-probe.js";
import type { KvmProbeResult } from "../qemu/kvm-probe.js";
import { unlinkIfPresent, writeFileAtomic } from "../store/atomic-file.js";
import { mergeDiffIntoBase } from "./diff-snapshot-merge.js";
import { FirecrackerApiClient } from "./firecracker-api-client.js";
import { firecrackerArgs } from "./firecracker-command.js";
import { binaryVersion, checkGuestKernel, probeKvmForFirecracker } from "./firecracker-probe.js";
import {
  bootRequests,
  ctrlAltDelRequest,
  describeInstanceRequest,
  pauseRequest,
  restoreRequests,
  resumeRequest,
  snapshotCreateRequest,
} from "./firecracker-requests.js";
import type { FirecrackerDrive, FirecrackerRequest } from "./firecracker-requests.js";
import { linkIntoJail, moveOutOfJail, prepareJail, removeJail } from "./jail.js";
import type { JailResource } from "./jail.js";
import { jailIdentity, jailLayout, jailerArgv } from "./jailer-command.js";
import type { JailLayout } from "./jailer-command.js";
import { MetricsDrain } from "./metrics-fifo.js";
import { createFifos } from "../system/fifo.js";
import type { FirecrackerMetricsSample } from "./metrics-fifo.js";
import { resolveSeccompFilter } from "./seccomp-filter.js";
import type { SeccompOptions } from "./seccomp-filter.js";

export interface FirecrackerJailerOptions {
  /** The jailer binary, looked up on PATH unless absolute. Default `jailer`. */
  binary?: string;
  /** Absolute; jails are `<chrootBaseDir>/firecracker/<instance id>/root`. Must be on the file system of the data root. */
  chrootBaseDir: string;
  /** First uid/gid of the per-instance range. Default 900000. */
  uidBase?: number;
  /** Size of the per-instance uid/gid range. Default 1000000. */
  uidRange?: number;
  /** Pass `--daemonize` (the serial console then goes to a file inside the jail). Default false. */
  daemonize?: boolean;
  /** `--cgroup-version`. Default 2 when /sys/fs/cgroup is a v2 hierarchy, else 1. */
  cgroupVersion?: 1 | 2;
  /** `--parent-cgroup`. Default: the jailer's own default. */
  parentCgroup?: string | null;
  /** `--cgroup` settings; mvm's own cgroups already hold the VMM, so the default is none. */
  cgroups?: string[];
  /** `--resource-limit` settings. Default none. */
  resourceLimits?: string[];
}

export interface FirecrackerVmmOptions {
  /** Firecracker binary, looked up on PATH unless absolute. Default `firecracker`. */
  binary?: string;
  /** Launch under the jailer; null or absent launches Firecracker directly. */
  jailer?: FirecrackerJailerOptions | null;
  seccomp?: SeccompOptions;
  /** Boot with `track_dirty_pages` so that diff snapshots can be taken. Default false. */
  diffSnapshots?: boolean;
  /** Time one API call may take, 503 retries included, ms. Default 5000. */
  apiTimeoutMs?: number;
  /** `ip` binary used to enter a network namespace (direct launch). Default `ip`. */
  ipBinary?: string;
  /** Whether KVM runs a guest; default: the QEMU probe (a guest of a few bytes under KVM). */
  kvmProbe?: () => Promise<KvmProbeResult>;
}

/** mvm's time for an operation next to Firecracker's own latency metrics of it. */
export interface FirecrackerOverheadReport {
  /** Wall time mvm spent per operation (last call), ms. */
  mvmMs: Record<string, number>;
  /** Firecracker's newest metrics sample, or null before its first flush. */
  firecracker: FirecrackerMetricsSample | null;
}

export interface FirecrackerVmm extends Vmm {
  /** Timings of a VMM started by this process; null for one it does not drain metrics of. */
  overhead(vmm: VmmProcess): FirecrackerOverheadReport | null;
}

const DEFAULT_BINARY = "firecracker";
const DEFAULT_API_TIMEOUT_MS = 5_000;
const API_SOCKET_NAME = "firecracker.socket";
const EXIT_POLL_MS = 50;
const CTRL_ALT_DEL_REPEAT_MS = 3_000;
const LOG_TAIL_BYTES = 4_096;
/** Record next to the API socket naming the full memory image the running VM was restored from. */
const RESTORED_FROM_FILE = "restored-from";

/** Where one launch keeps its files, as Firecracker names them and as the host sees them. */
interface LaunchFiles {
  jail: JailLayout | null;
  apiSocketHost: string;
  apiSocketVmm: string;
  serialLog: string;
  logHost: string;
  logVmm: string;
  metricsHost: string;
  metricsVmm: string;
  pidFile: string;
  /** Directory next to the socket for mvm's own per-VM records (outside the chroot when jailed). */
  stateDir: string;
}

interface Tracked {
  drain: MetricsDrain;
  mvmMs: Record<string, number>;
}

export function createFirecrackerVmm(options: FirecrackerVmmOptions = {}): FirecrackerVmm {
  const binary = options.binary ?? DEFAULT_BINARY;
  const jailer = options.jailer ?? null;
  const apiTimeoutMs = options.apiTimeoutMs ?? DEFAULT_API_TIMEOUT_MS;
  const trackDirtyPages = options.diffSnapshots ?? false;
  const kvmProbe = () => probeKvmForFirecracker(options.kvmProbe ?? (() => probeKvmCached({})));
  const tracked = new Map<string, Tracked>();
  const keyOf = (vmm: { pid: number; pidStartTime: number }) => `${vmm.pid}:${vmm.pidStartTime}`;
  const client = (socket: string) => new FirecrackerApiClient(socket, { timeoutMs: apiTimeoutMs });

  async function resolveBinary(name: string): Promise<string> {
    const path = name.startsWith("/") ? name : await findOnPath(name);
    if (path === null) throw failedPrecondition(`firecracker: ${name} is not installed (not found on PATH)`);
    return path;
  }

  function launchFiles(spec: VmLaunchSpec, execFile: string): LaunchFiles {
    if (jailer === null) {
      return {
        jail: null,
        apiSocketHost: join(spec.runDir, API_SOCKET_NAME),
        apiSocketVmm: join(spec.runDir, API_SOCKET_NAME),
        serialLog: join(spec.runDir, "serial.log"),
        logHost: join(spec.runDir, "firecracker.log"),
        logVmm: join(spec.runDir, "firecracker.log"),
        metricsHost: join(spec.runDir, "metrics.fifo"),
        metricsVmm: join(spec.runDir, "metrics.fifo"),
        pidFile: join(spec.runDir, "vmm.pid"),
        stateDir: spec.runDir,
      };
    }
    const jail = jailLayout(jailer.chrootBaseDir, execFile, spec.instanceId);
    return {
      jail,
      apiSocketHost: join(jail.rootDir, "run", API_SOCKET_NAME),
      apiSocketVmm: `/run/${API_SOCKET_NAME}`,
      serialLog: jailer.daemonize ? join(jail.rootDir, "serial.log") : join(spec.runDir, "serial.log"),
      logHost: join(jail.rootDir, "firecracker.log"),
      logVmm: "/firecracker.log",
      metricsHost: join(jail.rootDir, "metrics.fifo"),
      metricsVmm: "/metrics.fifo",
      pidFile: join(spec.runDir, "vmm.pid"),
      stateDir: jail.jailDir,
    };
  }

  /** The jail of a running VMM, from its socket path (`<jailDir>/root/run/firecracker.socket`); null when direct. */
  function jailOf(vmm: VmmProcess): JailLayout | null {
    if (jailer === null || !vmm.apiSocket.endsWith(`/root/run/${API_SOCKET_NAME}`)) return null;
    const rootDir = dirname(dirname(vmm.apiSocket));
    return { rootDir, jailDir: dirname(rootDir) };
  }

  function stateDirOf(vmm: VmmProcess): string {
    return jailOf(vmm)?.jailDir ?? dirname(vmm.apiSocket);
  }

  async function cgroupVersion(): Promise<1 | 2> {
    if (jailer?.cgroupVersion !== undefined) return jailer.cgroupVersion;
    return readFile("/sys/fs/cgroup/cgroup.controllers").then(
      () => 2 as const,
      () => 1 as const,
    );
  }

  /**
   * Starts Firecracker (directly or jailed) and returns it once its API answers. `resources` are linked into the jail
   * (when jailed); `configure` gets the API client and a function naming paths as Firecracker sees them.
   */
  async function launch(
    spec: VmLaunchSpec,
    action: string,
    prepare: (files: LaunchFiles, inVmm: (resource: JailResource) => Promise<string>) => Promise<FirecrackerRequest[]>,
    waitForGuest: boolean,
  ): Promise<VmmProcess> {
    const started = Date.now();
    const deadline = started + spec.bootTimeoutMs;
    const execFile = await resolveBinary(binary);
    const jailerBinary = jailer === null ? null : await resolveBinary(jailer.binary ?? "jailer");
    const files = launchFiles(spec, execFile);

    await mkdir(spec.runDir, { recursive: true, mode: 0o700 });
    await chmod(spec.runDir, 0o700);
    const previous = await readVmmPidFile(files.pidFile);
    if (previous !== null && (await isSameProcess(previous.pid, previous.startTime))) {
      throw failedPrecondition(`instance ${spec.instanceId}: a vmm already runs from ${spec.runDir} (pid ${previous.pid})`);
    }
    // The ready line is looked for from the start of the serial log, so nothing of an earlier boot may remain.
    await unlinkIfPresent(files.serialLog);
    await unlinkIfPresent(files.apiSocketHost);
    await unlinkIfPresent(files.metricsHost);

    const identity = jailer === null ? null : jailIdentity(spec.instanceId, jailer.uidBase ?? 900_000, jailer.uidRange ?? 1_000_000);
    if (files.jail !== null && identity !== null) await prepareJail(files.jail, [], identity);
    const inVmm = async (resource: JailResource): Promise<string> => {
      if (files.jail === null || identity === null) return resource.hostPath;
      await linkIntoJail(files.jail, resource, identity);
      return `/${resource.name}`;
    };

    let drain: MetricsDrain | null = null;
    let vmm: VmmProcess | null = null;
    try {
      const requests = await prepare(files, inVmm);
      const policy: SeccompPolicy = spec.seccompPolicy ?? options.seccomp?.policy ?? "default";
      const filter = await resolveSeccompFilter(policy, options.seccomp ?? {}, spec.runDir);
      const filterInVmm = filter === null ? null : await inVmm({ hostPath: filter, name: "seccomp-filter.bpf", ownedByJail: true });
      await writeFile(files.logHost, "", { mode: 0o600 });
      await createFifos(files.metricsHost);
      if (identity !== null) {
        await chown(files.logHost, identity.uid, identity.gid);
        await chown(files.metricsHost, identity.uid, identity.gid);
      }
      // Open before Firecracker opens its end: it opens the FIFO non-blocking, which fails while nobody reads.
      drain = MetricsDrain.open(files.metricsHost);

      const fcArgs = firecrackerArgs({
        apiSocket: files.apiSocketVmm,
        instanceId: spec.instanceId,
        seccompFilterPath: filterInVmm,
        jailed: jailer !== null,
      });
      const argv =
        jailer === null || jailerBinary === null || identity === null
          ? [execFile, ...fcArgs]
          : jailerArgv({
              jailerBinary,
              execFile,
              instanceId: spec.instanceId,
              uid: identity.uid,
              gid: identity.gid,
              chrootBaseDir: jailer.chrootBaseDir,
              netns: spec.netns,
              daemonize: jailer.daemonize ?? false,
              cgroupVersion: await cgroupVersion(),
              parentCgroup: jailer.parentCgroup ?? null,
              cgroups: jailer.cgroups ?? [],
              resourceLimits: jailer.resourceLimits ?? [],
              firecrackerArgs: fcArgs,
            });
      const spawnOptions = {
        argv,
        // The jailer joins the namespace itself (after the cgroups were joined here).
        netns: jailer === null ? spec.netns : null,
        cgroupProcsFiles: spec.cgroupProcsFiles,
        logFile: files.serialLog,
        pidFile: files.pidFile,
        cwd: spec.runDir,
        ...(options.ipBinary === undefined ? {} : { ipBinary: options.ipBinary }),
      };
      const spawned = jailer?.daemonize ? await spawnForDaemonizingJailer(spawnOptions) : await spawnVmm(spawnOptions);
      vmm = { hypervisor: "firecracker", pid: spawned.pid, pidStartTime: spawned.startTime, apiSocket: files.apiSocketHost, serialLog: files.serialLog };

      const api = client(files.apiSocketHost);
      await waitForApi(api, vmm, deadline);
      for (const request of requests) await api.send(request);
      if (waitForGuest) {
        const exitWatch = watchForExit(vmm.pid, vmm.pidStartTime, EXIT_POLL_MS);
        try {
          const outcome = await waitForGuestReady(files.serialLog, spec.instanceId, { deadline, signal: exitWatch.signal });
          if (outcome.kind !== "ready") {
            throw new MvmError(
              "unavailable",
              outcome.kind === "failed"
                ? `the guest reported failure: ${outcome.line}`
                : outcome.kind === "aborted"
                  ? "firecracker exited before the guest reported ready"
                  : `the guest did not report ready within ${spec.bootTimeoutMs} ms`,
            );
          }
        } finally {
          exitWatch.stop();
        }
      } else {
        const state = await instanceState(api);
        if (state !== "Running") throw new MvmError("unavailable", `expected the vm to run after the restore, firecracker reports ${state}`);
      }
      tracked.set(keyOf(vmm), { drain, mvmMs: { [action]: Date.now() - started } });
      return vmm;
    } catch (e) {
      drain?.close();
      if (vmm !== null) await terminateProcess(vmm.pid, vmm.pidStartTime).catch(() => undefined);
      const why = e instanceof Error ? e.message : String(e);
      const diagnostics = await describeLogs(files);
      if (files.jail !== null) await removeJail(files.jail).catch(() => undefined);
      else await unlinkIfPresent(files.metricsHost).catch(() => undefined);
      const kind = e instanceof MvmError && e.kind !== "internal" ? e.kind : "unavailable";
      throw new MvmError(kind, `${action} ${spec.instanceId} (firecracker${jailer === null ? "" : ", jailed"}): ${why}${diagnostics}`, e instanceof MvmError ? e.violations : [], {
        cause: e,
      });
    }
  }

  function drivesOf(spec: VmLaunchSpec): VmLaunchSpec["disks"] {
    for (const disk of spec.disks) {
      if (disk.format !== "raw") {
        throw failedPrecondition(`disks.${disk.role}: firecracker needs raw disk images, ${disk.path} is ${disk.format}`);
      }
    }
    return spec.disks;
  }

  async function linkedDrives(spec: VmLaunchSpec, inVmm: (r: JailResource) => Promise<string>): Promise<FirecrackerDrive[]> {
    const drives: FirecrackerDrive[] = [];
    for (const disk of drivesOf(spec)) {
      drives.push({ role: disk.role, path: await inVmm({ hostPath: disk.path, name: `${disk.role}.img`, ownedByJail: true }), readOnly: disk.readOnly });
    }
    return drives;
  }

  async function boot(spec: VmLaunchSpec): Promise<VmmProcess> {
    drivesOf(spec);
    const kernel = await checkGuestKernel(spec.kernelPath);
    if (!kernel.suitable) throw failedPrecondition(`kernel ${spec.kernelPath}: firecracker cannot boot it: ${kernel.reason}`);
    return launch(
      spec,
      "boot",
      async (files, inVmm) => {
        const kernelPath = await inVmm({ hostPath: spec.kernelPath, name: "vmlinux", ownedByJail: false });
        const initrdPath = spec.initrdPath === null ? null : await inVmm({ hostPath: spec.initrdPath, name: "initrd", ownedByJail: false });
        return bootRequests({
          vcpus: spec.vcpus,
          memMib: spec.memMib,
          trackDirtyPages,
          kernelPath,
          initrdPath,
          kernelArgs: spec.kernelArgs,
          drives: await linkedDrives(spec, inVmm),
          tap: spec.tap,
          logPath: files.logVmm,
          metricsPath: files.metricsVmm,
          serialOutPath: jailer?.daemonize ? "/serial.log" : null,
        });
      },
      true,
    );
  }

  async function restore(spec: VmLaunchSpec, snapshot: VmSnapshotFiles): Promise<VmmProcess> {
    drivesOf(spec);
    if (snapshot.stateFile === null) throw failedPrecondition("restore: a firecracker snapshot needs its state file");
    let memoryFile = snapshot.memoryFile;
    if (snapshot.type === "diff") {
      if (snapshot.baseMemoryFile === null) throw failedPrecondition("restore: a diff snapshot needs the memory file of its base");
      await mergeDiffIntoBase(snapshot.memoryFile, snapshot.baseMemoryFile);
      memoryFile = snapshot.baseMemoryFile;
    }
    const stateFile = snapshot.stateFile;
    const vmm = await launch(
      spec,
      "restore",
      async (files, inVmm) => {
        // The snapshot names the drives by the paths they had at boot: the same names are linked into the new jail.
        await linkedDrives(spec, inVmm);
        return restoreRequests({
          logPath: files.logVmm,
          metricsPath: files.metricsVmm,
          memoryFile: await inVmm({ hostPath: memoryFile, name: "snapshot.mem", ownedByJail: true }),
          stateFile: await inVmm({ hostPath: stateFile, name: "snapshot.state", ownedByJail: true }),
          tapName: spec.tap.name,
          trackDirtyPages,
        });
      },
      false,
    );
    await writeFileAtomic(join(stateDirOf(vmm), RESTORED_FROM_FILE), `${memoryFile}\n`, { mode: 0o600 });
    return vmm;
  }

  async function requireAlive(vmm: VmmProcess, action: string): Promise<void> {
    if (!(await isSameProcess(vmm.pid, vmm.pidStartTime))) {
      throw failedPrecondition(`${action}: the vmm (pid ${vmm.pid}) is not running`);
    }
  }

  async function timed<T>(vmm: VmmProcess, action: string, work: () => Promise<T>): Promise<T> {
    const started = Date.now();
    try {
      return await work();
    } catch (e) {
      if (e instanceof MvmError) throw new MvmError(e.kind, `${action} (firecracker pid ${vmm.pid}): ${e.message}`, e.violations, { cause: e });
      throw new MvmError("unavailable", `${action} (firecracker pid ${vmm.pid}): ${e instanceof Error ? e.message : String(e)}`, [], { cause: e });
    } finally {
      const entry = tracked.get(keyOf(vmm));
      if (entry !== undefined) entry.mvmMs[action] = Date.now() - started;
    }
  }

  async function setState(vmm: VmmProcess, action: "pause" | "resume"): Promise<void> {
    await requireAlive(vmm, action);
    await timed(vmm, action, async () => {
      const api = client(vmm.apiSocket);
      await api.send(action === "pause" ? pauseRequest() : resumeRequest());
      const wanted = action === "pause" ? "Paused" : "Running";
      const state = await instanceState(api);
      if (state !== wanted) throw new MvmError("unavailable", `expected vm state ${wanted}, firecracker reports ${state}`);
    });
  }

  async function snapshot(vmm: VmmProcess, dir: string, type: VmSnapshotType): Promise<VmSnapshotFiles> {
    await requireAlive(vmm, "snapshot");
    if (type === "diff" && !trackDirtyPages) {
      throw failedPrecondition("snapshot: a diff snapshot needs dirty page tracking, which this node does not enable (diff snapshots off)");
    }
    let baseMemoryFile: string | null = null;
    if (type === "diff") {
      baseMemoryFile = (await readFile(join(stateDirOf(vmm), RESTORED_FROM_FILE), "utf8").catch(() => "")).trim() || null;
      if (baseMemoryFile === null) {
        throw failedPrecondition("snapshot: a diff needs a full snapshot this vm was restored from; take a full snapshot first");
      }
    }
    return timed(vmm, `snapshot_${type}`, async () => {
      const api = client(vmm.apiSocket);
      const state = await instanceState(api);
      if (state !== "Paused") throw failedPrecondition(`snapshot: the vm must be paused, firecracker reports ${state}`);
      const memoryFile = join(dir, `memory.${type}`);
      const stateFile = join(dir, `vmstate.${type}`);
      const jail = jailOf(vmm);
      if (jail === null) {
        await api.send(snapshotCreateRequest(type, memoryFile, stateFile), { timeoutMs: Math.max(apiTimeoutMs, 120_000) });
      } else {
        const names = { memory: `snapshot-out.${type}.mem`, state: `snapshot-out.${type}.state` };
        await unlinkIfPresent(join(jail.rootDir, names.memory));
        await unlinkIfPresent(join(jail.rootDir, names.state));
        await api.send(snapshotCreateRequest(type, `/${names.memory}`, `/${names.state}`), { timeoutMs: Math.max(apiTimeoutMs, 120_000) });
        await moveOutOfJail(join(jail.rootDir, names.memory), memoryFile);
        await moveOutOfJail(join(jail.rootDir, names.state), stateFile);
      }
      return { type, memoryFile, stateFile, baseMemoryFile };
    });
  }

  async function cleanUp(vmm: VmmProcess): Promise<void> {
    const entry = tracked.get(keyOf(vmm));
    entry?.drain.close();
    tracked.delete(keyOf(vmm));
    const jail = jailOf(vmm);
    if (jail !== null) await removeJail(jail);
    else {
      await unlinkIfPresent(vmm.apiSocket).catch(() => undefined);
      await unlinkIfPresent(join(dirname(vmm.apiSocket), "metrics.fifo")).catch(() => undefined);
      await unlinkIfPresent(join(dirname(vmm.apiSocket), RESTORED_FROM_FILE)).catch(() => undefined);
    }
  }

  async function shutdown(vmm: VmmProcess, timeoutMs: number): Promise<void> {
    const { pid, pidStartTime } = vmm;
    if (!(await isSameProcess(pid, pidStartTime))) return cleanUp(vmm);
    const deadline = Date.now() + Math.max(0, timeoutMs);
    // Ctrl-Alt-Del makes the guest's init reboot; with `reboot=k` the reboot ends Firecracker. Repeated, because one
    // sent before the guest's init listens is lost.
    while (Date.now() < deadline) {
      const remaining = deadline - Date.now();
      const sent = await client(vmm.apiSocket)
        .send(ctrlAltDelRequest(), { timeoutMs: Math.min(apiTimeoutMs, remaining) })
        .then(
          () => true,
          () => false,
        );
      if (!sent) break;
      if (await waitForProcessExit(pid, pidStartTime, Math.min(CTRL_ALT_DEL_REPEAT_MS, deadline - Date.now()))) return cleanUp(vmm);
    }
    await terminateProcess(pid, pidStartTime);
    await cleanUp(vmm);
  }

  async function capabilities(): Promise<VmmCapabilities> {
    const notes: string[] = [];
    const path = binary.startsWith("/") ? binary : await findOnPath(binary);
    const version = path === null ? null : await binaryVersion(path);
    if (version === null) notes.push(`${binary}: not installed or did not answer --version`);
    let jailerOk = true;
    if (jailer !== null) {
      const jailerPath = (jailer.binary ?? "jailer").startsWith("/") ? (jailer.binary as string) : await findOnPath(jailer.binary ?? "jailer");
      jailerOk = jailerPath !== null && (await binaryVersion(jailerPath)) !== null;
      if (!jailerOk) notes.push(`jailer: ${jailer.binary ?? "jailer"} is configured but not installed or not answering --version`);
    }
    const kvm = await kvmProbe().catch((e: unknown): KvmProbeResult => ({ usable: false, reason: e instanceof Error ? e.message : String(e) }));
    if (!kvm.usable) notes.push(`kvm not usable (${kvm.reason}): firecracker has no software emulation`);
    notes.push("guest kernels are checked at boot: an uncompressed ELF vmlinux with virtio-mmio, see docs/firecracker.md");
    return {
      kind: "firecracker",
      available: version !== null && jailerOk && kvm.usable,
      version,
      kvmUsable: kvm.usable,
      diffSnapshots: trackDirtyPages,
      notes,
    };
  }

  return {
    kind: "firecracker",
    capabilities,
    boot,
    pause: (vmm) => setState(vmm, "pause"),
    resume: (vmm) => setState(vmm, "resume"),
    snapshot,
    restore,
    shutdown,
    isAlive: (vmm) => isSameProcess(vmm.pid, vmm.pidStartTime),
    overhead(vmm) {
      const entry = tracked.get(keyOf(vmm));
      if (entry === undefined) return null;
      return { mvmMs: { ...entry.mvmMs }, firecracker: entry.drain.latest };
    },
  };
}

async function instanceState(api: FirecrackerApiClient): Promise<string> {
  const info = (await api.send(describeInstanceRequest())).body as { state?: unknown } | null;
  return typeof info?.state === "string" ? info.state : "unknown";
}

/** Polls `GET /` until the API answers; gives up when the process exits or the deadline passes. */
async function waitForApi(api: FirecrackerApiClient, vmm: VmmProcess, deadline: number): Promise<void> {
  let last = "no answer yet";
  for (;;) {
    if (!(await isSameProcess(vmm.pid, vmm.pidStartTime))) throw new MvmError("unavailable", `firecracker exited before its api answered (${last})`);
    try {
      await api.send(describeInstanceRequest(), { timeoutMs: Math.max(1, Math.min(1_000, deadline - Date.now())) });
      return;
    } catch (e) {
      last = e instanceof Error ? e.message : String(e);
    }
    if (Date.now() >= deadline) throw new MvmError("unavailable", `firecracker api did not answer before the boot timeout: ${last}`);
    await sleep(EXIT_POLL_MS);
  }
}

/**
 * `--daemonize` makes the jailer call setsid(), which fails in a process that already leads its group; spawnVmm
 * starts its launcher as a session leader, so the daemonizing jailer is started here as an ordinary child instead.
 * The jailer then leaves this session by itself and points stdio at /dev/null. The pid stays the same through
 * launcher, jailer and Firecracker (each execs the next).
 */
async function spawnForDaemonizingJailer(options: {
  argv: readonly string[];
  netns: string | null;
  cgroupProcsFiles: readonly string[];
  pidFile: string;
  cwd: string;
  ipBinary?: string;
}): Promise<{ pid: number; startTime: number }> {
  const [program, ...args] = vmmLauncherArgv(options);
  const child = spawn(program as string, args, { cwd: options.cwd, detached: false, stdio: "ignore", env: { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin" } });
  await new Promise<void>((resolve, reject) => {
    child.once("spawn", () => resolve());
    child.once("error", reject);
  });
  let exited: string | null = null;
  child.once("exit", (code, signal) => {
    exited = signal ?? String(code);
  });
  child.unref();
  const pid = child.pid as number;
  const deadline = Date.now() + 5_000;
  const jailerName = basename(options.argv[0] ?? "jailer");
  for (;;) {
    if (exited !== null) throw new MvmError("unavailable", `starting jailer: it exited (${exited}) before firecracker ran`);
    const startTime = await readProcStartTime(pid);
    const exe = await readProcExe(pid);
    if (startTime !== null && exe !== null && !exe.endsWith("/sh") && !exe.endsWith("/dash") && basename(exe) !== jailerName) {
      await writeFileAtomic(options.pidFile, `${pid} ${startTime}\n`, { mode: 0o600 });
      return { pid, startTime };
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new MvmError("unavailable", "starting jailer: firecracker did not start within 5 s");
    }
    await sleep(5);
  }
}

async function describeLogs(files: LaunchFiles): Promise<string> {
  return `\nserial console (last lines):\n${await tail(files.serialLog)}\nfirecracker log (last lines):\n${await tail(files.logHost)}`;
}

async function tail(path: string): Promise<string> {
  try {
    const handle = await open(path, "r");
    try {
      const { size } = await handle.stat();
      const start = Math.max(0, size - LOG_TAIL_BYTES);
      const buffer = Buffer.alloc(size - start);
      await handle.read(buffer, 0, buffer.length, start);
      const lines = buffer.toString("utf8").split("\n").filter((l) => l.trim() !== "");
      return lines.length === 0 ? "  (empty)" : lines.slice(-15).map((l) => `  ${l}`).join("\n");
    } finally {
      await handle.close();
    }
  } catch {
    return "  (missing)";
  }
}
