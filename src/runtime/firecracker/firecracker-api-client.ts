// HTTP/1.1 client of Firecracker's API over its Unix socket (SPEC §6.1). Calls to one socket never overlap (one
// connection at a time, closed after each call, so a request never waits behind a half-read response), every call has
// a deadline, and 503 (Firecracker busy, e.g. still starting its API thread) is retried with exponential backoff until
// that deadline. Answers are the ones the specification lists: 204 or 200 with a JSON body on success, 400 and the
// default case with an `Error` body ({ fault_message }).

import { request } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { MvmError } from "../../core/errors.js";
import type { FirecrackerRequest } from "./firecracker-requests.js";

export interface FirecrackerApiClientOptions {
  /** How long one call may take in all, retries included, ms. Default 5000. */
  timeoutMs?: number;
  /** First delay before retrying a 503, ms; doubled on each retry. Default 20. */
  retryBaseMs?: number;
  /** Upper bound of one retry delay, ms. Default 500. */
  retryMaxMs?: number;
}

/** A call Firecracker answered with an error status. `faultMessage` is its own explanation. */
export class FirecrackerApiError extends MvmError {
  readonly status: number;
  readonly faultMessage: string;

  constructor(call: string, status: number, faultMessage: string) {
    super(
      status === 400 ? "failed_precondition" : "unavailable",
      `firecracker api ${call}: status ${status}${faultMessage === "" ? "" : `: ${faultMessage}`}`,
    );
    this.name = "FirecrackerApiError";
    this.status = status;
    this.faultMessage = faultMessage;
  }
}

export interface FirecrackerResponse {
  status: number;
  /** Parsed JSON body of a 200; null for a 204. */
  body: unknown;
}

const DEFAULT_TIMEOUT_MS = 5_000;
const DEFAULT_RETRY_BASE_MS = 20;
const DEFAULT_RETRY_MAX_MS = 500;
/** Responses larger than this are not Firecracker's (its largest, GET /vm/config, is a few KiB). */
const MAX_RESPONSE_BYTES = 1024 * 1024;

/** Per-socket tail of the call chain: a call starts only once the previous one on the same socket has ended. */
const socketQueues = new Map<string, Promise<unknown>>();

function serialized<T>(socketPath: string, call: () => Promise<T>): Promise<T> {
  const previous = socketQueues.get(socketPath) ?? Promise.resolve();
  const next = previous.then(call, call);
  const tail = next.catch(() => undefined);
  socketQueues.set(socketPath, tail);
  void tail.then(() => {
    if (socketQueues.get(socketPath) === tail) socketQueues.delete(socketPath);
  });
  return next;
}

export class FirecrackerApiClient {
  readonly socketPath: string;
  private readonly timeoutMs: number;
  private readonly retryBaseMs: number;
  private readonly retryMaxMs: number;

  constructor(socketPath: string, options: FirecrackerApiClientOptions = {}) {
    this.socketPath = socketPath;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.retryBaseMs = options.retryBaseMs ?? DEFAULT_RETRY_BASE_MS;
    this.retryMaxMs = options.retryMaxMs ?? DEFAULT_RETRY_MAX_MS;
  }

  /** Sends one request; resolves on 200/204, throws FirecrackerApiError on an error answer, MvmError otherwise. */
  send(req: FirecrackerRequest, options: { timeoutMs?: number } = {}): Promise<FirecrackerResponse> {
    const call = `${req.method} ${req.path}`;
    const deadline = Date.now() + (options.timeoutMs ?? this.timeoutMs);
    return serialized(this.socketPath, async () => {
      let delay = this.retryBaseMs;
      for (;;) {
        const remaining = deadline - Date.now();
        if (remaining <= 0) throw new MvmError("unavailable", `firecracker api ${call}: no answer within the call timeout`);
        const response = await this.once(req, remaining);
        if (response.status === 200 || response.status === 204) {
          return { status: response.status, body: response.status === 200 ? parseJson(call, response.text) : null };
        }
        const fault = faultMessageOf(response.text);
        if (response.status === 503 && Date.now() + delay < deadline) {
          await sleep(delay);
          delay = Math.min(delay * 2, this.retryMaxMs);
          continue;
        }
        throw new FirecrackerApiError(call, response.status, fault);
      }
    });
  }

  /** Sends the requests in order, stopping at the first failure (which names the request). */
  async sendAll(requests: readonly FirecrackerRequest[], options: { timeoutMs?: number } = {}): Promise<void> {
    for (const req of requests) await this.send(req, options);
  }

  private once(req: FirecrackerRequest, timeoutMs: number): Promise<{ status: number; text: string }> {
    const call = `${req.method} ${req.path}`;
    const payload = req.body === null ? null : Buffer.from(JSON.stringify(req.body), "utf8");
    const headers: Record<string, string | number> = { Accept: "application/json", Connection: "close" };
    if (payload !== null) {
      headers["Content-Type"] = "application/json";
      headers["Content-Length"] = payload.length;
    }
    return new Promise((resolve, reject) => {
      let settled = false;
      const finish = (error: Error | null, value?: { status: number; text: string }) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (error !== null) reject(error);
        else resolve(value as { status: number; text: string });
      };
      const clientRequest = request(
        { socketPath: this.socketPath, path: req.path, method: req.method, headers, agent: false, host: "localhost" },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on("data", (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_RESPONSE_BYTES) {
              clientRequest.destroy();
              finish(new MvmError("unavailable", `firecracker api ${call}: response larger than ${MAX_RESPONSE_BYTES} bytes`));
              return;
            }
            chunks.push(chunk);
          });
          // Settled once the connection is closed too, so the next call on this socket never overlaps with it.
          res.on("end", () => {
            const value = { status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") };
            const socket = clientRequest.socket;
            if (socket === null || socket.destroyed) finish(null, value);
            else {
              socket.once("close", () => finish(null, value));
              socket.end();
            }
          });
          res.on("error", (e) => finish(new MvmError("unavailable", `firecracker api ${call}: ${e.message}`, [], { cause: e })));
        },
      );
      const timer = setTimeout(() => {
        clientRequest.destroy();
        finish(new MvmError("unavailable", `firecracker api ${call}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      clientRequest.on("error", (e) => finish(new MvmError("unavailable", `firecracker api ${call}: ${e.message}`, [], { cause: e })));
      clientRequest.end(payload ?? undefined);
    });
  }
}

function parseJson(call: string, text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new MvmError("unavailable", `firecracker api ${call}: status 200 with a body that is not json`);
  }
}

/** The `fault_message` of an `Error` body; the raw text (shortened) when the body is not one. */
export function faultMessageOf(text: string): string {
  try {
    const parsed = JSON.parse(text) as unknown;
    if (parsed !== null && typeof parsed === "object" && typeof (parsed as { fault_message?: unknown }).fault_message === "string") {
      return (parsed as { fault_message: string }).fault_message;
    }
  } catch {
    // not json: fall through to the raw text
  }
  return text.trim().slice(0, 200);
}
