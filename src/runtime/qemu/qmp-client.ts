// A small client of the QEMU Machine Protocol over a Unix socket: greeting, capability negotiation, commands matched
// to their responses by id, asynchronous events to listeners. Every step has a timeout.
//
// QEMU's QMP socket serves one client at a time (others wait unanswered in the backlog), so callers hold a
// connection only for the duration of one operation: see `withQmp`.

import { closeSync, constants, openSync } from "node:fs";
import { createConnection } from "node:net";
import type { Socket } from "node:net";
import { basename, dirname } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { errnoCode } from "../store/process-identity.js";

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

/** QEMU answered a command with an error. */
export class QmpCommandError extends Error {
  readonly command: string;
  /** QMP's error class, e.g. `GenericError`, `CommandNotFound`, `DeviceNotActive`. */
  readonly errorClass: string;
  /** QMP's human-readable description. */
  readonly desc: string;

  constructor(command: string, errorClass: string, desc: string) {
    super(`qmp ${command}: ${errorClass}: ${desc}`);
    this.name = "QmpCommandError";
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

export type QmpTransportFailure = "connect" | "timeout" | "closed" | "protocol" | "aborted";

/** The conversation itself failed: no socket, no answer in time, connection lost, or something that is not QMP. */
export class QmpTransportError extends Error {
  readonly reason: QmpTransportFailure;

  constructor(reason: QmpTransportFailure, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "QmpTransportError";
    this.reason = reason;
  }
}

export interface QmpConnectOptions {
  /**
   * Time allowed to connect (retrying while the socket is missing or refuses connections, as it does while the VMM
   * starts), read the greeting and negotiate capabilities, ms. Default 5000.
   */
  connectTimeoutMs?: number;
  /** Timeout of `execute` when the call gives none, ms. Default 10000. */
  commandTimeoutMs?: number;
  /** Stops connection attempts early, e.g. when the VMM has exited. */
  signal?: AbortSignal;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;
/**
 * A VMM just started opens its QMP socket within tens of ms, and every ms spent waiting past that is on a boot's or
 * a wake's critical path: attempts come every 2 ms for the first second (an attempt on a missing socket costs a few
 * µs), then back off to 100 ms. Backing off from the start (10, 20, 40 ms...) lost 10 ms on average.
 */
const FAST_RETRY_MS = 2;
const FAST_RETRY_FOR_MS = 1_000;
const MAX_RETRY_MS = 100;
const CLOSE_GRACE_MS = 1_000;
/** sun_path holds 108 bytes including the terminating NUL. */
const MAX_UNIX_PATH_BYTES = 107;
const RETRYABLE_CONNECT_ERRORS = new Set(["ENOENT", "ECONNREFUSED", "EAGAIN"]);

interface PendingCommand {
  command: string;
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

export class QmpClient {
  readonly greeting: QmpGreeting;
  private readonly socket: Socket;
  private readonly commandTimeoutMs: number;
  private readonly pending = new Map<string, PendingCommand>();
  private readonly listeners = new Set<(event: QmpEvent) => void>();
  private nextId = 1;
  private closedWith: QmpTransportError | null = null;
  private readonly closedPromise: Promise<void>;

  private constructor(socket: Socket, lines: LineReader, greeting: QmpGreeting, commandTimeoutMs: number) {
    this.socket = socket;
    this.greeting = greeting;
    this.commandTimeoutMs = commandTimeoutMs;
    lines.attach((message) => this.dispatch(message));
    this.closedPromise = new Promise((resolve) => {
      socket.once("close", () => {
        this.fail(this.closedWith ?? new QmpTransportError("closed", "qmp connection closed"));
        resolve();
      });
    });
  }

  /** Connects, reads the greeting and leaves capability negotiation mode, all within `connectTimeoutMs`. */
  static async connect(socketPath: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const deadline = Date.now() + (options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS);
    const socket = await connectWithRetries(socketPath, deadline, options.signal);
    const lines = new LineReader(socket);
    let client: QmpClient;
    try {
      const first = await lines.next(deadline - Date.now(), options.signal);
      const greeting = parseGreeting(first);
      client = new QmpClient(socket, lines, greeting, options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS);
    } catch (e) {
      socket.destroy();
      throw e;
    }
    try {
      await client.execute("qmp_capabilities", undefined, Math.max(1, deadline - Date.now()));
    } catch (e) {
      await client.close();
      throw e;
    }
    return client;
  }

  /** Runs `command`; resolves with its `return` value, rejects with QmpCommandError or QmpTransportError. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    if (this.closedWith !== null || this.socket.destroyed) {
      return Promise.reject(new QmpTransportError("closed", `qmp ${command}: connection closed`));
    }
    const id = `mvm-${this.nextId++}`;
    const limit = timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpTransportError("timeout", `qmp ${command}: no answer within ${limit} ms`));
      }, limit);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const message = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.socket.write(`${JSON.stringify(message)}\n`);
    });
  }

  /** Calls `listener` with every asynchronous event from now on; returns a function that stops it. */
  onEvent(listener: (event: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Waits for the next event named `name` (e.g. `SHUTDOWN`), up to `timeoutMs`. */
  waitForEvent(name: string, timeoutMs: number): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const stop = this.onEvent((event) => {
        if (event.event !== name) return;
        clearTimeout(timer);
        stop();
        resolve(event);
      });
      const timer = setTimeout(() => {
        stop();
        reject(new QmpTransportError("timeout", `qmp: no ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
    });
  }

  get isClosed(): boolean {
    return this.closedWith !== null || this.socket.destroyed;
  }

  /** Resolves once the connection is gone (closed by either side). */
  get closed(): Promise<void> {
    return this.closedPromise;
  }

  async close(): Promise<void> {
    this.closedWith ??= new QmpTransportError("closed", "qmp connection closed by the client");
    this.socket.end();
    const grace = setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS);
    await this.closedPromise;
    clearTimeout(grace);
  }

  private dispatch(message: Record<string, unknown>): void {
    if (typeof message.event === "string") {
      const event = message as unknown as QmpEvent;
      for (const listener of [...this.listeners]) listener(event);
      return;
    }
    const id = typeof message.id === "string" ? message.id : null;
    const pending = id === null ? undefined : this.pending.get(id);
    // Answers to commands that already timed out (or that carry no id of ours) are dropped.
    if (id === null || pending === undefined) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if ("return" in message) {
      pending.resolve(message.return);
    } else if (isRecord(message.error)) {
      const errorClass = typeof message.error.class === "string" ? message.error.class : "UnknownError";
      const desc = typeof message.error.desc === "string" ? message.error.desc : JSON.stringify(message.error);
      pending.reject(new QmpCommandError(pending.command, errorClass, desc));
    } else {
      pending.reject(new QmpTransportError("protocol", `qmp ${pending.command}: answer has neither return nor error`));
    }
  }

  private fail(error: QmpTransportError): void {
    this.closedWith ??= error;
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      this.pending.delete(id);
      pending.reject(new QmpTransportError(error.reason, `qmp ${pending.command}: ${error.message}`));
    }
    this.listeners.clear();
  }
}

/** Connects, runs `fn` with the client and always closes the connection afterwards. */
export async function withQmp<T>(socketPath: string, fn: (qmp: QmpClient) => Promise<T>, options: QmpConnectOptions = {}): Promise<T> {
  const qmp = await QmpClient.connect(socketPath, options);
  try {
    return await fn(qmp);
  } finally {
    await qmp.close();
  }
}

/** Splits the byte stream into JSON messages, one per line. */
class LineReader {
  private onMessage: ((message: Record<string, unknown>) => void) | null = null;
  private buffer = "";
  private readonly queued: Array<Record<string, unknown>> = [];
  private waiter: ((message: Record<string, unknown> | Error) => void) | null = null;
  private error: Error | null = null;

  constructor(socket: Socket) {
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => this.push(chunk));
    socket.on("error", (e) => this.stop(new QmpTransportError("closed", `qmp connection failed: ${e.message}`, { cause: e })));
    socket.on("close", () => this.stop(new QmpTransportError("closed", "qmp connection closed before the greeting")));
  }

  /** From now on every message goes to `onMessage`, starting with any that arrived with the greeting. */
  attach(onMessage: (message: Record<string, unknown>) => void): void {
    this.onMessage = onMessage;
    for (let m = this.queued.shift(); m !== undefined; m = this.queued.shift()) onMessage(m);
  }

  /** The next message, for use before `attach` (the greeting). */
  next(timeoutMs: number, signal?: AbortSignal): Promise<Record<string, unknown>> {
    const queued = this.queued.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    if (this.error !== null) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      const onAbort = (): void => finish(new QmpTransportError("aborted", "qmp: connection attempt aborted"));
      const timer = setTimeout(
        () => finish(new QmpTransportError("timeout", `qmp: no greeting within ${Math.max(0, timeoutMs)} ms`)),
        Math.max(0, timeoutMs),
      );
      const finish = (result: Record<string, unknown> | Error): void => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.waiter = null;
        if (result instanceof Error) reject(result);
        else resolve(result);
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiter = finish;
    });
  }

  private push(chunk: string): void {
    this.buffer += chunk;
    for (let end = this.buffer.indexOf("\n"); end >= 0; end = this.buffer.indexOf("\n")) {
      const line = this.buffer.slice(0, end).trim();
      this.buffer = this.buffer.slice(end + 1);
      if (line === "") continue;
      let message: unknown;
      try {
        message = JSON.parse(line);
      } catch {
        this.deliver(new QmpTransportError("protocol", `qmp: not json: ${line.slice(0, 200)}`));
        continue;
      }
      if (isRecord(message)) this.deliver(message);
      else this.deliver(new QmpTransportError("protocol", `qmp: not a json object: ${line.slice(0, 200)}`));
    }
  }

  private deliver(message: Record<string, unknown> | Error): void {
    if (this.waiter !== null) {
      this.waiter(message);
    } else if (message instanceof Error) {
      // After the greeting, a malformed line cannot be matched to a command; the command it answered times out.
      if (this.onMessage === null) this.error ??= message;
    } else if (this.onMessage !== null) {
      this.onMessage(message);
    } else {
      this.queued.push(message);
    }
  }

  private stop(error: Error): void {
    this.error ??= error;
    if (this.waiter !== null) this.waiter(error);
  }
}

function parseGreeting(message: Record<string, unknown>): QmpGreeting {
  const qmp = message.QMP;
  if (!isRecord(qmp) || !isRecord(qmp.version)) {
    throw new QmpTransportError("protocol", `qmp: expected a greeting, got ${JSON.stringify(message).slice(0, 200)}`);
  }
  return qmp as unknown as QmpGreeting;
}

async function connectWithRetries(socketPath: string, deadline: number, signal: AbortSignal | undefined): Promise<Socket> {
  const fastUntil = Date.now() + FAST_RETRY_FOR_MS;
  let delay = FAST_RETRY_MS;
  for (;;) {
    if (signal?.aborted) throw new QmpTransportError("aborted", `qmp: connecting to ${socketPath} aborted`);
    try {
      return await connectOnce(socketPath);
    } catch (e) {
      const code = errnoCode(e);
      if (code === undefined || !RETRYABLE_CONNECT_ERRORS.has(code)) {
        throw new QmpTransportError("connect", `qmp: cannot connect to ${socketPath}: ${(e as Error).message}`, { cause: e });
      }
      if (Date.now() + delay > deadline) {
        throw new QmpTransportError("timeout", `qmp: socket ${socketPath} not accepting connections in time (${code})`, { cause: e });
      }
    }
    await sleep(delay, undefined, signal ? { signal } : {}).catch(() => undefined);
    if (Date.now() >= fastUntil) delay = Math.min(delay * 2, MAX_RETRY_MS);
  }
}

/**
 * One connection attempt. A path longer than sun_path allows is reached through the directory's file descriptor
 * (`/proc/self/fd/N/<name>`), which the kernel resolves like any other path.
 */
function connectOnce(socketPath: string): Promise<Socket> {
  let dirFd: number | null = null;
  let path = socketPath;
  if (Buffer.byteLength(socketPath) > MAX_UNIX_PATH_BYTES) {
    dirFd = openSync(dirname(socketPath), constants.O_RDONLY | constants.O_DIRECTORY);
    path = `/proc/self/fd/${dirFd}/${basename(socketPath)}`;
  }
  return new Promise<Socket>((resolve, reject) => {
    const socket = createConnection({ path });
    const done = (): void => {
      if (dirFd !== null) closeSync(dirFd);
      dirFd = null;
    };
    socket.once("connect", () => {
      done();
      socket.removeListener("error", onError);
      resolve(socket);
    });
    const onError = (e: Error): void => {
      done();
      socket.destroy();
      reject(e);
    };
    socket.once("error", onError);
  });
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
