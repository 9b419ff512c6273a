// Every request the Firecracker driver sends, as data: a launch is a list of {method, path, body} built by pure
// functions from the launch spec, so that the unit tests validate exactly what goes on the wire against Firecracker's
// own API specification (../contracts/firecracker.yaml) and the adapter only replays the list.

import type { VmDisk } from "../../core/data-plane-ports.js";
import { invalidField } from "../../core/errors.js";

export type FirecrackerMethod = "GET" | "PUT" | "PATCH";

export interface FirecrackerRequest {
  method: FirecrackerMethod;
  /** Path of the API, with any path parameter already filled in (`/drives/root`). */
  path: string;
  /** JSON body; null for a request without one (the GETs). */
  body: Record<string, unknown> | null;
}

/** Always in the guest's kernel command line: serial console on ttyS0 (the ready line), reboot on panic (which
 * makes Firecracker exit), no PCI probing (Firecracker has none), no i8042 aux port probing (saves boot time). */
export const FIRECRACKER_CONSOLE_ARGS: readonly string[] = ["console=ttyS0", "reboot=k", "panic=1", "pci=off", "i8042.noaux"];

/** Drive IDs in the fixed device order: root is /dev/vda, data /dev/vdb, secrets /dev/vdc (docs/guest-contract.md). */
export const DRIVE_ORDER: readonly VmDisk["role"][] = ["root", "data", "secrets"];

/** The one network interface of a guest; it is `eth0` inside the guest. */
export const GUEST_IFACE_ID = "eth0";

export interface FirecrackerDrive {
  role: VmDisk["role"];
  /** Path as Firecracker sees it (inside the chroot when jailed). */
  path: string;
  readOnly: boolean;
}

/** What one cold boot configures; every path is as Firecracker sees it (relative to the jail's root when jailed). */
export interface FirecrackerBootConfig {
  vcpus: number;
  memMib: number;
  /** Dirty page tracking, needed for diff snapshots; costs some guest memory performance. */
  trackDirtyPages: boolean;
  kernelPath: string;
  initrdPath: string | null;
  /** Core's kernel arguments; the console arguments are added in front. */
  kernelArgs: readonly string[];
  drives: readonly FirecrackerDrive[];
  tap: { name: string; mac: string };
  logPath: string;
  metricsPath: string;
  /** Where the serial console goes when stdout is not kept (a daemonized jailer); null: Firecracker's stdout. */
  serialOutPath: string | null;
}

export interface FirecrackerRestoreConfig {
  logPath: string;
  metricsPath: string;
  memoryFile: string;
  stateFile: string;
  /** The TAP the restored VM's `eth0` uses (it may differ from the one of the snapshot). */
  tapName: string;
  /** Keep tracking dirty pages after the restore, so that the next snapshot can be a diff. */
  trackDirtyPages: boolean;
}

export function loggerRequest(logPath: string): FirecrackerRequest {
  return { method: "PUT", path: "/logger", body: { log_path: logPath, level: "Warning", show_level: true, show_log_origin: false } };
}

export function metricsRequest(metricsPath: string): FirecrackerRequest {
  return { method: "PUT", path: "/metrics", body: { metrics_path: metricsPath } };
}

export function guestBootArgs(kernelArgs: readonly string[]): string {
  return [...FIRECRACKER_CONSOLE_ARGS, ...kernelArgs].join(" ");
}

/** Drives sorted into the fixed order; exactly one of each role is required, so the guest's devices never move. */
export function orderedDrives(drives: readonly FirecrackerDrive[]): FirecrackerDrive[] {
  return DRIVE_ORDER.map((role) => {
    const matching = drives.filter((d) => d.role === role);
    if (matching.length !== 1) throw invalidField(`disks.${role}`, `exactly one ${role} disk is required, got ${matching.length}`);
    return matching[0] as FirecrackerDrive;
  });
}

/** The requests of a cold boot, in the order they are sent; the last one starts the guest. */
export function bootRequests(config: FirecrackerBootConfig): FirecrackerRequest[] {
  if (!Number.isInteger(config.vcpus) || config.vcpus < 1 || config.vcpus > 32) {
    throw invalidField("vcpus", "must be an integer from 1 to 32 for firecracker");
  }
  if (!Number.isInteger(config.memMib) || config.memMib < 1) throw invalidField("mem_mib", "must be a positive integer");
  const requests: FirecrackerRequest[] = [loggerRequest(config.logPath), metricsRequest(config.metricsPath)];
  if (config.serialOutPath !== null) {
    requests.push({ method: "PUT", path: "/serial", body: { serial_out_path: config.serialOutPath } });
  }
  requests.push({
    method: "PUT",
    path: "/machine-config",
    body: { vcpu_count: config.vcpus, mem_size_mib: config.memMib, smt: false, track_dirty_pages: config.trackDirtyPages },
  });
  const bootSource: Record<string, unknown> = { kernel_image_path: config.kernelPath, boot_args: guestBootArgs(config.kernelArgs) };
  if (config.initrdPath !== null) bootSource.initrd_path = config.initrdPath;
  requests.push({ method: "PUT", path: "/boot-source", body: bootSource });
  for (const drive of orderedDrives(config.drives)) {
    requests.push({
      method: "PUT",
      path: `/drives/${drive.role}`,
      body: {
        drive_id: drive.role,
        path_on_host: drive.path,
        // Firecracker adds `root=/dev/vda` to the command line for the root device and always attaches it first.
        is_root_device: drive.role === "root",
        is_read_only: drive.readOnly,
        cache_type: "Unsafe",
        io_engine: "Sync",
      },
    });
  }
  requests.push({
    method: "PUT",
    path: `/network-interfaces/${GUEST_IFACE_ID}`,
    body: { iface_id: GUEST_IFACE_ID, host_dev_name: config.tap.name, guest_mac: config.tap.mac },
  });
  requests.push(instanceStartRequest());
  return requests;
}

export function instanceStartRequest(): FirecrackerRequest {
  return { method: "PUT", path: "/actions", body: { action_type: "InstanceStart" } };
}

/** Asks the guest to reboot (x86 only); with `reboot=k` the guest's reboot ends the Firecracker process. */
export function ctrlAltDelRequest(): FirecrackerRequest {
  return { method: "PUT", path: "/actions", body: { action_type: "SendCtrlAltDel" } };
}

export function flushMetricsRequest(): FirecrackerRequest {
  return { method: "PUT", path: "/actions", body: { action_type: "FlushMetrics" } };
}

export function pauseRequest(): FirecrackerRequest {
  return { method: "PATCH", path: "/vm", body: { state: "Paused" } };
}

export function resumeRequest(): FirecrackerRequest {
  return { method: "PATCH", path: "/vm", body: { state: "Resumed" } };
}

/** Only valid while the VM is paused; a diff needs `track_dirty_pages` since boot (or since the restore). */
export function snapshotCreateRequest(type: "full" | "diff", memoryFile: string, stateFile: string): FirecrackerRequest {
  return {
    method: "PUT",
    path: "/snapshot/create",
    body: { snapshot_type: type === "full" ? "Full" : "Diff", mem_file_path: memoryFile, snapshot_path: stateFile },
  };
}

/** A restore: only the logger and metrics may be configured before `snapshot/load` on a fresh process. */
export function restoreRequests(config: FirecrackerRestoreConfig): FirecrackerRequest[] {
  return [
    loggerRequest(config.logPath),
    metricsRequest(config.metricsPath),
    {
      method: "PUT",
      path: "/snapshot/load",
      body: {
        snapshot_path: config.stateFile,
        mem_backend: { backend_type: "File", backend_path: config.memoryFile },
        track_dirty_pages: config.trackDirtyPages,
        resume_vm: true,
        network_overrides: [{ iface_id: GUEST_IFACE_ID, host_dev_name: config.tapName }],
      },
    },
  ];
}

export function describeInstanceRequest(): FirecrackerRequest {
  return { method: "GET", path: "/", body: null };
}

export function versionRequest(): FirecrackerRequest {
  return { method: "GET", path: "/version", body: null };
}
