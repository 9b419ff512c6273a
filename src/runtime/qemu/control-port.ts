// The control port: a virtio-serial port named org.mvm.control through which the host runs the guest's hooks
// (docs/guest-contract.md). Over SSH a hook costs a key exchange, a login and two shells in the guest; under software
// emulation that was most of a wake. Here a resident guest script reads one request line and runs the hook in a
// subshell of itself.
//
// QEMU connects the port to two FIFOs in the run directory (chardev `pipe`: `control.in` towards the guest,
// `control.out` from it). QEMU holds both open read-write, so the guest's side of the port always reads as connected
// and never sees end of file; the host opens them per request. The FIFOs exist only for VMs started with the port,
// which is how a restore knows to give the VM the same device again.
//
// Requests are `<id> hook <name> [args...]`, answers `<id> <exit status> [standard error, folded into one line]`.
// Answers to requests nobody waits for any more (a timed-out caller) stay in the FIFO and are skipped by id.

import { randomBytes } from "node:crypto";
import { closeSync, constants, fstatSync, lstatSync, openSync, writeSync } from "node:fs";
import { open } from "node:fs/promises";
import { Socket } from "node:net";
import { type ExecResult, type GuestChannel, type GuestHook, type GuestTarget } from "../../core/data-plane-ports.js";
import { unlinkIfPresent } from "../store/atomic-file.js";
import { createFifos } from "../system/fifo.js";
import { controlPortFiles, qemuRunFiles, type ControlPortFiles } from "./qemu-command.js";
import { errnoCode } from "../store/process-identity.js";

/** Printed on the serial console by the guest's control script once it serves the port. */
export const CONTROL_PORT_ANNOUNCEMENT = "MVM-CONTROL ";
/** The announcement comes early in a boot; a console log is searched this far for it. */
const ANNOUNCEMENT_SEARCH_BYTES = 1024 * 1024;
const HOOK_ARG = /^[A-Za-z0-9._:@+=-]{1,128}$/;
const MAX_REPLY_BUFFER = 64 * 1024;

/** Makes both FIFOs afresh (mode 0600) for a VM about to boot with the port. */
export async function createControlPortFifos(files: ControlPortFiles): Promise<void> {
  for (const path of [files.toGuest, files.fromGuest]) await unlinkIfPresent(path);
  await createFifos(files.toGuest, files.fromGuest);
}

/** True when both FIFOs exist: the VM of this run directory was started with the control port. */
export function hasControlPortFifos(files: ControlPortFiles): boolean {
  return isFifo(files.toGuest) && isFifo(files.fromGuest);
}

/** True when the guest announced on its console (boot or later) that it serves the control port. */
export async function guestAnnouncedControlPort(serialLog: string): Promise<boolean> {
  let handle;
  try {
    handle = await open(serialLog, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    if (errnoCode(e) === "ENOENT") return false;
    throw e;
  }
  try {
    const buffer = Buffer.alloc(ANNOUNCEMENT_SEARCH_BYTES);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    const text = buffer.subarray(0, bytesRead).toString("latin1");
    return text.startsWith(CONTROL_PORT_ANNOUNCEMENT) || text.includes(`\n${CONTROL_PORT_ANNOUNCEMENT}`);
  } finally {
    await handle.close();
  }
}

/** Runs `hook` through the control port and waits up to `timeoutMs` for its answer. */
export async function runHookOverControlPort(
  files: ControlPortFiles,
  hook: GuestHook,
  args: readonly string[],
  timeoutMs: number,
): Promise<ExecResult> {
  const bad = args.find((a) => !HOOK_ARG.test(a));
  if (bad !== undefined) throw new Error(`control port: hook argument ${JSON.stringify(bad)} is not a plain word`);
  const id = randomBytes(8).toString("hex");
  // Opened before the request goes out; what arrives before the listeners are attached stays buffered in the stream.
  const reader = openFifoReader(files.fromGuest);
  try {
    sendRequest(files.toGuest, `${id} hook ${hook}${args.map((a) => ` ${a}`).join("")}\n`);
    const { status, message } = await waitForAnswer(reader, id, timeoutMs);
    return { exitCode: status, stdout: "", stderr: message };
  } finally {
    reader.destroy();
  }
}

/**
 * Hooks go through the control port of a VM that has one and whose guest serves it; everything else (and every hook
 * of a guest without the port: Firecracker, images from before it) goes to `fallback`, which runs them over SSH.
 */
export function withControlPort(fallback: GuestChannel): GuestChannel {
  return {
    exec: (target, argv, options) => fallback.exec(target, argv, options),
    async runHook(target: GuestTarget, hook: GuestHook, args: readonly string[], options: { timeoutMs: number }): Promise<ExecResult> {
      if (target.runDir !== undefined) {
        const files = controlPortFiles(target.runDir);
        if (hasControlPortFifos(files) && (await guestAnnouncedControlPort(qemuRunFiles(target.runDir).serialLog))) {
          return runHookOverControlPort(files, hook, args, options.timeoutMs);
        }
      }
      return fallback.runHook(target, hook, args, options);
    },
  };
}

function openFifoReader(path: string): Socket {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
  try {
    requireFifo(fd, path);
    return new Socket({ fd, readable: true, writable: false });
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

function sendRequest(path: string, line: string): void {
  let fd: number;
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
  } catch (e) {
    // ENXIO: a FIFO nobody reads, i.e. no VMM holds the port.
    if (errnoCode(e) === "ENXIO") throw new Error(`control port ${path}: no VMM has it open`);
    throw e;
  }
  try {
    requireFifo(fd, path);
    // One write of less than PIPE_BUF bytes: atomic, never interleaved with another writer's.
    const written = writeSync(fd, line);
    if (written !== Buffer.byteLength(line)) throw new Error(`control port ${path}: short write`);
  } finally {
    closeSync(fd);
  }
}

function waitForAnswer(reader: Socket, id: string, timeoutMs: number): Promise<{ status: number; message: string }> {
  return new Promise((resolve, reject) => {
    let pending = "";
    const timer = setTimeout(() => finish(new Error(`the guest did not answer on the control port within ${timeoutMs} ms`)), timeoutMs);
    const finish = (outcome: Error | { status: number; message: string }) => {
      clearTimeout(timer);
      reader.removeAllListeners("data");
      reader.removeAllListeners("error");
      reader.removeAllListeners("end");
      reader.on("error", () => undefined);
      if (outcome instanceof Error) reject(outcome);
      else resolve(outcome);
    };
    reader.setEncoding("utf8");
    reader.on("data", (chunk: string) => {
      pending += chunk;
      let newline: number;
      while ((newline = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        const answer = parseAnswer(line, id);
        if (answer !== null) return finish(answer);
      }
      // Only a line without an end could grow this far: not an answer of ours.
      if (pending.length > MAX_REPLY_BUFFER) pending = "";
    });
    reader.on("error", (e) => finish(new Error(`control port: ${e.message}`)));
    reader.on("end", () => finish(new Error("control port: the VMM closed it")));
  });
}

/** `<id> <status> [message]` for our id; null for anything else (another request's answer, a fragment). */
export function parseAnswer(line: string, id: string): { status: number; message: string } | null {
  const m = /^([0-9a-f]+) ([0-9]{1,3})(?: (.*))?$/.exec(line);
  if (m === null || m[1] !== id) return null;
  return { status: Number(m[2]), message: (m[3] ?? "").slice(0, 1000) };
}

/** Checked on the open descriptor: whatever the path names by now, this is what is read or written. */
function requireFifo(fd: number, path: string): void {
  if (!fstatSync(fd).isFIFO()) throw new Error(`control port: ${path} is not a fifo`);
}

function isFifo(path: string): boolean {
  try {
    return lstatSync(path).isFIFO();
  } catch {
    return false;
  }
}
