// The QEMU adapter of the `Vmm` port (SPEC §6.1): `qemu-system-x86_64 -M microvm`, KVM when a probe shows it works,
// TCG otherwise; controlled over QMP; a guest is up when its init reports ready on the serial console.

import { chmod, mkdir, open, writeFile } from "node:fs/promises";
import { execa } from "execa";
import { join } from "node:path";
import type { VmLaunchSpec, Vmm, VmmCapabilities, VmmProcess, VmSnapshotFiles, VmSnapshotType } from "../../core/data-plane-ports.js";
import { MvmError, failedPrecondition } from "../../core/errors.js";
import { isSameProcess } from "../process/proc-stat.js";
import { parkVmmLauncher, readVmmPidFile, spawnVmm, startStandbyLauncher, type ParkedLauncher, type StandbyLauncher } from "../process/spawn-vmm.js";
import { terminateProcess, waitForProcessExit, watchForExit } from "../process/terminate.js";
import { unlinkIfPresent } from "../store/atomic-file.js";
import { waitForGuestReady } from "./guest-ready.js";
import { probeKvmCached, readHostTscKhz } from "./kvm-probe.js";
import type { KvmProbeResult } from "./kvm-probe.js";
import { buildQemuArgv, controlPortFiles, migrationSourceUri, migrationTargetUri, qemuRunFiles } from "./qemu-command.js";
import { createControlPortFifos, hasControlPortFifos } from "./control-port.js";
import type { QemuAccel, QemuRunFiles } from "./qemu-command.js";
import { QmpClient, withQmp } from "./qmp-client.js";

export interface QemuVmmOptions {
  /** QEMU binary, looked up on PATH unless absolute. Default `qemu-system-x86_64`. */
  binary?: string;
  /** `kvm` requires a KVM that passes the probe; `auto` falls back to TCG when it does not. Default `auto`. */
  accel?: "auto" | "kvm" | "tcg";
  /** `ip` binary used to enter a network namespace. Default `ip`. */
  ipBinary?: string;
  /** Time a QMP command may take, ms. Default 5000. */
  qmpTimeoutMs?: number;
  /** Run QEMU under its seccomp sandbox; turn off only for a QEMU built without seccomp. Default true. */
  seccompSandbox?: boolean;
}

const DEFAULT_BINARY = "qemu-system-x86_64";
const DEFAULT_QMP_TIMEOUT_MS = 5_000;
/** How long the process may take to exit after `quit`, ms. */
/** How long to wait for a guest to power off before pressing the button again. */
const POWER_BUTTON_REPEAT_MS = 3_000;
const QUIT_WAIT_MS = 3_000;
const EXIT_WATCH_POLL_MS = 50;
const VERSION_CACHE_MS = 60_000;
const LOG_TAIL_LINES = 15;
const LOG_TAIL_BYTES = 4_096;
/** The migration stream's name inside a snapshot directory. */
export const QEMU_SNAPSHOT_FILE = "memory.mig";
/**
 * Bytes per second. QEMU caps migrations at 128 MiB/s by default, which made saving 7x slower (VM-NOTES); the
 * stream goes to a local file, so the cap is lifted.
 */
const MIGRATION_MAX_BANDWIDTH = 64 * 1024 ** 3;
const MIGRATION_POLL_MS = 5;
/** Writing guest memory of up to tens of GiB to a local disk. */
const SNAPSHOT_TIMEOUT_MS = 600_000;
/**
 * How long after a wake readied its launcher the next standby one is started: past that wake's own busy part (the
 * restore and the guest's wake hook), so that its fork does not compete with it.
 */
const STANDBY_REFILL_DELAY_MS = 1_000;

export function createQemuVmm(options: QemuVmmOptions = {}): Vmm {
  const binary = options.binary ?? DEFAULT_BINARY;
  const accelChoice = options.accel ?? "auto";
  const qmpTimeoutMs = options.qmpTimeoutMs ?? DEFAULT_QMP_TIMEOUT_MS;
  const probe = (): Promise<KvmProbeResult> => probeKvmCached({ binary });
  const qmp = { connectTimeoutMs: qmpTimeoutMs, commandTimeoutMs: qmpTimeoutMs };

  async function chooseAccel(): Promise<QemuAccel> {
    if (accelChoice === "tcg") return "tcg";
    const kvm = await probe();
    if (kvm.usable) return "kvm";
    if (accelChoice === "kvm") throw new MvmError("unavailable", `accel: kvm was required but is not usable: ${kvm.reason}`);
    return "tcg";
  }

  interface Started {
    vmm: VmmProcess;
    files: QemuRunFiles;
    accel: QemuAccel;
    deadline: number;
    exitWatch: { signal: AbortSignal; stop(): void };
  }

  /** Launchers parked by `prepareRestore`, by run directory, until their restore takes them. */
  const parked = new Map<string, ParkedLauncher>();

  function discardParked(runDir: string): void {
    parked.get(runDir)?.discard();
    parked.delete(runDir);
  }

  // One launcher kept started ahead of any wake (see spawn-vmm.ts): a sleep leaves one behind for the wake that
  // follows it, and each wake has the next one started once it is done.
  let standby: StandbyLauncher | null = null;
  let starting: Promise<void> | null = null;
  let closed = false;

  function keepStandby(): Promise<void> {
    if (closed || standby?.waiting) return Promise.resolve();
    starting ??= startStandbyLauncher()
      .then((fresh) => {
        standby?.discard();
        standby = fresh;
        if (closed) fresh.discard();
      })
      // Nothing depends on it: a wake without a standby starts its launcher itself.
      .catch(() => undefined)
      .finally(() => {
        starting = null;
      });
    return starting;
  }

  function takeStandby(): StandbyLauncher | null {
    const taken = standby;
    standby = null;
    if (taken?.waiting) return taken;
    taken?.discard();
    return null;
  }

  /**
   * Spawns QEMU for `spec` (to boot, or to receive a migration stream) and returns once the process runs. A parked
   * launcher placed in the same groups is used instead of a new one.
   */
  async function spawnQemu(spec: VmLaunchSpec, incoming: boolean, launcher?: ParkedLauncher): Promise<Started> {
    const started = Date.now();
    const accel = await chooseAccel();
    const hostTscKhz = accel === "tcg" ? await readHostTscKhz() : null;
    if (accel === "tcg" && hostTscKhz === null) {
      throw new MvmError("unavailable", "host tsc frequency: no 'cpu MHz' line in /proc/cpuinfo, which tcg guests need");
    }
    // A boot always gets the control port; a restore gets it when the VM whose state it loads had it (its FIFOs are
    // still in the run directory), since the device is part of the saved machine.
    const control = controlPortFiles(spec.runDir);
    const controlPort = incoming ? hasControlPortFifos(control) : true;
    const argv = buildQemuArgv({ binary, spec, accel, hostTscKhz, seccompSandbox: options.seccompSandbox ?? true, incoming, controlPort });
    const files = qemuRunFiles(spec.runDir);

    await mkdir(spec.runDir, { recursive: true, mode: 0o700 });
    await chmod(spec.runDir, 0o700);
    const previous = await readVmmPidFile(files.launcherPidFile);
    if (previous !== null && (await isSameProcess(previous.pid, previous.startTime))) {
      throw failedPrecondition(`instance ${spec.instanceId}: a vmm already runs from ${spec.runDir} (pid ${previous.pid})`);
    }
    // The ready line is looked for from the start of the serial log, so nothing of an earlier boot may remain. A
    // restore appends: the guest's earlier console output stays readable.
    if (!incoming) await unlinkIfPresent(files.serialLog);
    await unlinkIfPresent(files.qmpSocket);
    if (!incoming) await createControlPortFifos(control);
    await writeFile(files.vmmLog, "", { mode: 0o600 });

    const what = incoming ? "restoring" : "booting";
    // A launcher parked too long (its timeout ended it) or placed elsewhere is replaced by a fresh one.
    const useParked =
      launcher !== undefined &&
      launcher.waiting &&
      launcher.cgroupProcsFiles.length === spec.cgroupProcsFiles.length &&
      launcher.cgroupProcsFiles.every((file, i) => file === spec.cgroupProcsFiles[i]);
    if (!useParked) launcher?.discard();
    const ipBinary = options.ipBinary === undefined ? {} : { ipBinary: options.ipBinary };
    const spawned = await (useParked
      ? launcher!.exec({ argv, netns: spec.netns, pidFile: files.launcherPidFile, ...ipBinary })
      : spawnVmm({
          argv,
          netns: spec.netns,
          cgroupProcsFiles: spec.cgroupProcsFiles,
          logFile: files.vmmLog,
          pidFile: files.launcherPidFile,
          cwd: spec.runDir,
          ...ipBinary,
        })
    ).catch((e) => {
      throw wrap(e, `${what} ${spec.instanceId} (${accel})`);
    });
    const vmm: VmmProcess = {
      hypervisor: "qemu",
      pid: spawned.pid,
      pidStartTime: spawned.startTime,
      apiSocket: files.qmpSocket,
      serialLog: files.serialLog,
    };
    return { vmm, files, accel, deadline: started + spec.bootTimeoutMs, exitWatch: watchForExit(vmm.pid, vmm.pidStartTime, EXIT_WATCH_POLL_MS) };
  }

  /** Kills a QEMU that did not make it and explains why, with the tails of its logs. */
  async function failure(s: Started, e: unknown, what: string, exitedReason: string): Promise<MvmError> {
    s.exitWatch.stop();
    await terminateProcess(s.vmm.pid, s.vmm.pidStartTime).catch(() => undefined);
    await cleanUp(s.vmm);
    const reason = s.exitWatch.signal.aborted && !(e instanceof MvmError) ? exitedReason : e instanceof Error ? e.message : String(e);
    return new MvmError("unavailable", `${what} (${s.accel}): ${reason}${await diagnostics(s.files)}`, [], { cause: e });
  }

  async function boot(spec: VmLaunchSpec): Promise<VmmProcess> {
    const s = await spawnQemu(spec, false);
    try {
      const client = await QmpClient.connect(s.files.qmpSocket, {
        connectTimeoutMs: Math.max(1, s.deadline - Date.now()),
        commandTimeoutMs: qmpTimeoutMs,
        signal: s.exitWatch.signal,
      });
      await client.close();
      const outcome = await waitForGuestReady(s.files.serialLog, spec.instanceId, { deadline: s.deadline, signal: s.exitWatch.signal });
      if (outcome.kind === "ready") return s.vmm;
      const why =
        outcome.kind === "failed"
          ? `the guest reported failure: ${outcome.line}`
          : outcome.kind === "aborted"
            ? "qemu exited before the guest reported ready"
            : `the guest did not report ready within ${spec.bootTimeoutMs} ms`;
      throw new MvmError("unavailable", why);
    } catch (e) {
      throw await failure(s, e, `booting ${spec.instanceId}`, "qemu exited before the guest reported ready");
    } finally {
      s.exitWatch.stop();
    }
  }

  /**
   * Same command line as the boot plus `-incoming defer`; the stream is fed with `migrate-incoming`, and the VM
   * continues once it is loaded. The guest is past its boot, so no ready line is waited for: the caller's wake hook
   * tells when the guest answers.
   */
  async function restore(spec: VmLaunchSpec, snapshot: VmSnapshotFiles): Promise<VmmProcess> {
    if (snapshot.type !== "full" || snapshot.stateFile !== null || snapshot.baseMemoryFile !== null) {
      throw failedPrecondition("qemu restores only full snapshots made of one migration stream");
    }
    const launcher = parked.get(spec.runDir);
    parked.delete(spec.runDir);
    const s = await spawnQemu(spec, true, launcher).catch((e: unknown) => {
      launcher?.discard();
      throw e;
    });
    try {
      const client = await QmpClient.connect(s.files.qmpSocket, {
        connectTimeoutMs: Math.max(1, s.deadline - Date.now()),
        commandTimeoutMs: qmpTimeoutMs,
        signal: s.exitWatch.signal,
      });
      try {
        await client.execute("migrate-incoming", { uri: migrationSourceUri(snapshot.memoryFile) });
        // QEMU 7.2 exits when loading fails, which the exit watch turns into an error with qemu's log.
        for (;;) {
          const status = await client.execute<{ status?: string }>("query-status");
          if (status.status !== "inmigrate") {
            if (status.status !== "paused" && status.status !== "running") {
              throw new MvmError("unavailable", `after loading the snapshot qemu reports vm status ${status.status ?? "nothing"}`);
            }
            break;
          }
          if (Date.now() > s.deadline) throw new MvmError("unavailable", `the snapshot did not load within ${spec.bootTimeoutMs} ms`);
          await new Promise((resolve) => setTimeout(resolve, MIGRATION_POLL_MS));
        }
        await client.execute("cont");
        await expectStatus(client, "running");
      } finally {
        await client.close();
      }
      return s.vmm;
    } catch (e) {
      throw await failure(s, e, `restoring ${spec.instanceId} from ${snapshot.memoryFile}`, "qemu exited while loading the snapshot");
    } finally {
      s.exitWatch.stop();
    }
  }

  /** Saves a paused VM as one migration stream, with QEMU's default bandwidth cap (128 MiB/s) lifted. */
  async function snapshot(vmm: VmmProcess, dir: string, type: VmSnapshotType): Promise<VmSnapshotFiles> {
    if (type !== "full") throw failedPrecondition("qemu writes only full snapshots (a migration stream); diff snapshots are firecracker's");
    await requireAlive(vmm, "snapshot");
    const memoryFile = join(dir, QEMU_SNAPSHOT_FILE);
    const deadline = Date.now() + SNAPSHOT_TIMEOUT_MS;
    await withQmp(
      vmm.apiSocket,
      async (client) => {
        await expectStatus(client, "paused");
        await client.execute("migrate-set-parameters", { "max-bandwidth": MIGRATION_MAX_BANDWIDTH });
        await client.execute("migrate", { uri: migrationTargetUri(memoryFile) });
        for (;;) {
          const info = await client.execute<{ status?: string; "error-desc"?: string }>("query-migrate");
          if (info.status === "completed") return;
          if (info.status === "failed" || info.status === "cancelled") {
            throw new MvmError("unavailable", `migration ${info.status}: ${info["error-desc"] ?? "qemu gave no reason"}`);
          }
          if (Date.now() > deadline) {
            await client.execute("migrate_cancel").catch(() => undefined);
            throw new MvmError("unavailable", `the snapshot was not written within ${SNAPSHOT_TIMEOUT_MS} ms`);
          }
          await new Promise((resolve) => setTimeout(resolve, MIGRATION_POLL_MS));
        }
      },
      qmp,
    ).catch((e) => {
      throw wrap(e, `snapshot of vmm pid ${vmm.pid} to ${memoryFile}`);
    });
    await chmod(memoryFile, 0o600);
    void keepStandby();
    return { type: "full", memoryFile, stateFile: null, baseMemoryFile: null };
  }

  async function requireAlive(vmm: VmmProcess, action: string): Promise<void> {
    if (!(await isSameProcess(vmm.pid, vmm.pidStartTime))) {
      throw failedPrecondition(`${action}: the vmm (pid ${vmm.pid}) is not running`);
    }
  }

  async function expectStatus(client: QmpClient, wanted: string): Promise<void> {
    const status = await client.execute<{ status?: string }>("query-status");
    if (status.status !== wanted) {
      throw new MvmError("unavailable", `expected vm status ${wanted}, qemu reports ${status.status ?? "nothing"}`);
    }
  }

  async function pause(vmm: VmmProcess): Promise<void> {
    await requireAlive(vmm, "pause");
    await withQmp(
      vmm.apiSocket,
      async (client) => {
        await client.execute("stop");
        await expectStatus(client, "paused");
      },
      qmp,
    ).catch((e) => {
      throw wrap(e, `pausing vmm pid ${vmm.pid}`);
    });
  }

  async function resume(vmm: VmmProcess): Promise<void> {
    await requireAlive(vmm, "resume");
    await withQmp(
      vmm.apiSocket,
      async (client) => {
        await client.execute("cont");
        await expectStatus(client, "running");
      },
      qmp,
    ).catch((e) => {
      throw wrap(e, `resuming vmm pid ${vmm.pid}`);
    });
  }

  async function shutdown(vmm: VmmProcess, timeoutMs: number): Promise<void> {
    const { pid, pidStartTime } = vmm;
    if (!(await isSameProcess(pid, pidStartTime))) return;
    const deadline = Date.now() + Math.max(0, timeoutMs);
    if (timeoutMs > 0) {
      // ACPI power button: a guest that handles it syncs and powers off by itself. The press is repeated, because
      // one that arrives before the guest's handler is listening (just after boot, on a loaded host) is lost.
      let asked = false;
      while (Date.now() < deadline) {
        const remaining = deadline - Date.now();
        const pressed = await withQmp(vmm.apiSocket, (client) => client.execute("system_powerdown"), {
          connectTimeoutMs: Math.min(qmpTimeoutMs, remaining),
          commandTimeoutMs: Math.min(qmpTimeoutMs, remaining),
        }).then(
          () => true,
          () => false,
        );
        asked ||= pressed;
        if (!asked) break;
        if (await waitForProcessExit(pid, pidStartTime, Math.min(POWER_BUTTON_REPEAT_MS, deadline - Date.now()))) {
          return cleanUp(vmm);
        }
      }
    }
    if (await isSameProcess(pid, pidStartTime)) {
      // `quit` makes QEMU flush its disks and exit; the answer may be lost when it closes the socket first.
      await withQmp(vmm.apiSocket, (client) => client.execute("quit"), qmp).catch(() => undefined);
      if (await waitForProcessExit(pid, pidStartTime, QUIT_WAIT_MS)) return cleanUp(vmm);
    }
    await terminateProcess(pid, pidStartTime);
    await cleanUp(vmm);
  }

  // `qemu --version` is a process start on the wake path; the answer is kept for a while (an upgrade shows within it).
  let knownVersion: { version: Promise<string | null>; atMs: number } | null = null;
  const cachedVersion = (): Promise<string | null> => {
    if (knownVersion === null || Date.now() - knownVersion.atMs > VERSION_CACHE_MS) knownVersion = { version: qemuVersion(binary), atMs: Date.now() };
    return knownVersion.version;
  };

  async function capabilities(): Promise<VmmCapabilities> {
    const notes: string[] = [];
    const version = await cachedVersion();
    if (version === null) notes.push(`${binary}: not found or did not answer --version`);
    const kvm = await probe();
    if (!kvm.usable) notes.push(`kvm not usable (${kvm.reason}); guests run under tcg, software emulation`);
    if (accelChoice === "tcg") notes.push("accel: tcg chosen by configuration");
    return { kind: "qemu", available: version !== null, version, kvmUsable: kvm.usable, diffSnapshots: false, notes };
  }

  /** Parks a launcher in the instance's groups for the restore that follows: the standby one when there is one. */
  async function prepareRestore(launch: { runDir: string; cgroupProcsFiles: readonly string[] }): Promise<void> {
    await mkdir(launch.runDir, { recursive: true, mode: 0o700 });
    const placement = { cgroupProcsFiles: launch.cgroupProcsFiles, logFile: qemuRunFiles(launch.runDir).vmmLog, cwd: launch.runDir };
    const standing = takeStandby();
    setTimeout(() => void keepStandby(), STANDBY_REFILL_DELAY_MS).unref();
    const launcher = standing !== null ? await standing.place(placement) : await parkVmmLauncher(placement);
    discardParked(launch.runDir);
    parked.set(launch.runDir, launcher);
  }

  async function close(): Promise<void> {
    closed = true;
    await starting;
    standby?.discard();
    standby = null;
    for (const runDir of [...parked.keys()]) discardParked(runDir);
  }

  return {
    kind: "qemu",
    capabilities,
    boot,
    pause,
    resume,
    snapshot,
    prepareRestore,
    discardPrepared: async (runDir) => discardParked(runDir),
    close,
    restore,
    shutdown,
    isAlive: (vmm) => isSameProcess(vmm.pid, vmm.pidStartTime),
  };
}

/** Removes what a QEMU killed by a signal leaves behind; QEMU removes its socket itself on a clean exit. */
async function cleanUp(vmm: VmmProcess): Promise<void> {
  await unlinkIfPresent(vmm.apiSocket).catch(() => undefined);
}

async function qemuVersion(binary: string): Promise<string | null> {
  try {
    const result = await execa(binary, ["--version"], { timeout: 5_000, reject: false, stdin: "ignore" });
    if (result.exitCode !== 0) return null;
    return /version ([0-9]+\.[0-9]+(?:\.[0-9]+)?)/.exec(result.stdout)?.[1] ?? null;
  } catch {
    return null;
  }
}

async function diagnostics(files: { serialLog: string; vmmLog: string }): Promise<string> {
  return `\nserial console (last lines):\n${await tail(files.serialLog)}\nqemu log (last lines):\n${await tail(files.vmmLog)}`;
}

async function tail(path: string): Promise<string> {
  try {
    const handle = await open(path, "r");
    let text: string;
    try {
      const { size } = await handle.stat();
      const start = Math.max(0, size - LOG_TAIL_BYTES);
      const buffer = Buffer.alloc(size - start);
      await handle.read(buffer, 0, buffer.length, start);
      text = buffer.toString("utf8");
    } finally {
      await handle.close();
    }
    const lines = text.split("\n").map((l) => l.replace(/\r$/, "")).filter((l) => l.trim() !== "");
    return lines.length === 0 ? "  (empty)" : lines.slice(-LOG_TAIL_LINES).map((l) => `  ${l}`).join("\n");
  } catch {
    return "  (missing)";
  }
}

function wrap(e: unknown, context: string): MvmError {
  if (e instanceof MvmError) return new MvmError(e.kind, `${context}: ${e.message}`, e.violations, { cause: e });
  return new MvmError("unavailable", `${context}: ${e instanceof Error ? e.message : String(e)}`, [], { cause: e });
}
