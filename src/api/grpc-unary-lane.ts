// A direct path for unary gRPC calls, beside Connect's adapter. Connect's universal handler runs every call, unary
// included, through a pipeline of async iterators, which costs several times what the HTTP/2 exchange itself does
// (bench/rpc-latency.mjs); unary gRPC is what most clients send. This lane serves exactly that case — POST,
// `application/grpc` or `application/grpc+proto`, no message compression, a unary method of a registered service —
// with the same service implementations and the same interceptors, and answers as Connect's gRPC protocol does
// (status, message and details in trailers, errors as trailers-only responses). Everything else (gRPC-Web, the
// Connect protocol, compressed messages, streams, reflection, health) is left to Connect's adapter.
//
// It works on the raw HTTP/2 stream: building the compatibility request and response objects for every call is
// itself a sizeable part of the cost, so the server dispatches streams (`dispatchStream`) and builds them only for
// the calls that go to Connect.

import http2 from "node:http2";
import { create, fromBinary, isMessage, type DescMessage, type DescMethod, type DescService, type Message } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextValues,
  type HandlerContext,
  type Interceptor,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { encodeMessage } from "./proto-binary-encoder.js";

/** A service and its implementation, as given to a Connect router. */
export interface RegisteredService {
  service: DescService;
  // Each method's implementation is called with (request message, HandlerContext), as Connect calls it.
  impl: Record<string, unknown>;
}

export interface GrpcUnaryLaneOptions {
  services: readonly RegisteredService[];
  /** Outermost first, as given to Connect. */
  interceptors: readonly Interceptor[];
  contextValues: (stream: http2.ServerHttp2Stream) => ContextValues;
  /** Ends every call in flight (agent shutdown). */
  shutdownSignal?: AbortSignal;
  /** Largest request message accepted, bytes. Default 4 MiB. */
  readMaxBytes?: number;
  /** Largest grpc-timeout honoured, ms; 0: any. */
  maxTimeoutMs?: number;
}

export interface GrpcUnaryLane {
  /** Serves the call and returns true when it is one this lane takes; returns false, touching nothing, otherwise. */
  handle(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): boolean;
  /** Calls served so far (for tests and metrics). */
  readonly served: number;
}

const DEFAULT_READ_MAX_BYTES = 4 * 1024 * 1024;
const CONTENT_TYPES = new Set(["application/grpc", "application/grpc+proto"]);
const ENVELOPE_HEADER_BYTES = 5;
const COMPRESSED_FLAG = 0x01;
/** The abort reason of a call that completed: a plain error, since building a DOMException per call is not free. */
const CALL_COMPLETED = new ConnectError("call completed", Code.Canceled);

/**
 * The abort signal of one call, created only when something asks for it: most unary handlers never look at their
 * signal, and an AbortController with its signal costs more to build and settle than the rest of the call's setup.
 */
class LazyCallSignal {
  private controller: AbortController | undefined;
  private reason: unknown;
  private ended = false;

  get signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController();
      if (this.ended) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  abort(reason: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.reason = reason;
    this.controller?.abort(reason);
  }
}

interface UnaryMethod {
  service: DescService;
  method: DescMethod & { methodKind: "unary" };
  call: (message: unknown, context: HandlerContext) => unknown;
}

function unaryMethods(services: readonly RegisteredService[]): Map<string, UnaryMethod> {
  const byPath = new Map<string, UnaryMethod>();
  for (const { service, impl } of services) {
    for (const method of service.methods) {
      if (method.methodKind !== "unary") continue;
      const fn = impl[method.localName];
      const call =
        typeof fn === "function"
          ? (fn as (m: unknown, c: HandlerContext) => unknown).bind(impl)
          : () => {
              throw new ConnectError(`${service.typeName}.${method.name} is not implemented`, Code.Unimplemented);
            };
      byPath.set(`/${service.typeName}/${method.name}`, { service, method: method as UnaryMethod["method"], call });
    }
  }
  return byPath;
}

function requestHeaders(raw: http2.IncomingHttpHeaders): Headers {
  const header = new Headers();
  for (const key in raw) {
    if (key.charCodeAt(0) === 58 /* ":" */) continue;
    const value = raw[key];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) header.append(key, v);
    else header.set(key, value);
  }
  return header;
}

function outgoing(target: http2.OutgoingHttpHeaders, headers: Headers): void {
  headers.forEach((value, key) => {
    target[key] = value;
  });
}

/** The reply message in a gRPC envelope: flag 0 (uncompressed), its length, its bytes, in one buffer. */
function envelope(schema: DescMessage, message: Message): Buffer {
  const frame = encodeMessage(schema, message as never, ENVELOPE_HEADER_BYTES);
  frame[0] = 0;
  frame.writeUInt32BE(frame.length - ENVELOPE_HEADER_BYTES, 1);
  return frame;
}

/** The single message of a unary request body, or the reason the body is not one. */
function openEnvelope(body: Buffer): Uint8Array | ConnectError {
  if (body.length < ENVELOPE_HEADER_BYTES) return new ConnectError("protocol error: missing envelope", Code.Unimplemented);
  if ((body[0]! & COMPRESSED_FLAG) !== 0) {
    return new ConnectError("protocol error: received compressed message without grpc-encoding", Code.Internal);
  }
  const length = body.readUInt32BE(1);
  if (body.length !== ENVELOPE_HEADER_BYTES + length) {
    return new ConnectError("protocol error: a unary request must carry exactly one message", Code.Unimplemented);
  }
  return body.subarray(ENVELOPE_HEADER_BYTES);
}

export function createGrpcUnaryLane(options: GrpcUnaryLaneOptions): GrpcUnaryLane {
  const methods = unaryMethods(options.services);
  const readMaxBytes = options.readMaxBytes ?? DEFAULT_READ_MAX_BYTES;
  let served = 0;
  // Calls in flight, so that shutdown can end them with one listener instead of one per call.
  const calls = new Set<LazyCallSignal>();
  options.shutdownSignal?.addEventListener(
    "abort",
    () => {
      for (const call of calls) call.abort(new ConnectError("the agent is shutting down", Code.Unavailable));
    },
    { once: true },
  );

  function takes(headers: http2.IncomingHttpHeaders): UnaryMethod | undefined {
    if (headers[":method"] !== "POST") return undefined;
    const contentType = headers["content-type"];
    if (contentType === undefined || !CONTENT_TYPES.has(contentType.toLowerCase())) return undefined;
    const encoding = headers["grpc-encoding"];
    if (encoding !== undefined && encoding !== "identity") return undefined;
    const path = headers[":path"];
    return path === undefined ? undefined : methods.get(path);
  }

  async function invoke(
    target: UnaryMethod,
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    body: Buffer,
    signal: LazyCallSignal,
  ) {
    const { service, method } = target;
    const contextValues = options.contextValues(stream);
    const header = requestHeaders(headers);
    const url = `${(stream.session?.socket as { encrypted?: boolean } | undefined)?.encrypted ? "https" : "http"}://${headers[":authority"] ?? "localhost"}${headers[":path"] ?? ""}`;
    const responseHeader = new Headers();
    const responseTrailer = new Headers();
    const timeout = parseTimeout((headers["grpc-timeout"] as string | undefined) ?? null, options.maxTimeoutMs ?? Number.MAX_SAFE_INTEGER);
    if (timeout.error) throw timeout.error;
    const deadline = timeout.timeoutMs === undefined ? undefined : Date.now() + timeout.timeoutMs;
    let deadlineTimer: NodeJS.Timeout | undefined;
    const deadlinePassed =
      timeout.timeoutMs === undefined
        ? null
        : new Promise<never>((_, reject) => {
            deadlineTimer = setTimeout(() => {
              const error = new ConnectError("the operation timed out", Code.DeadlineExceeded);
              signal.abort(error);
              reject(error);
            }, timeout.timeoutMs);
          });
    const payload = openEnvelope(body);
    if (payload instanceof ConnectError) throw payload;
    let message;
    try {
      message = fromBinary(method.input, payload);
    } catch (e) {
      throw new ConnectError(`parse binary: ${(e as Error).message}`, Code.Internal);
    }
    const innermost = async (request: UnaryRequest): Promise<UnaryResponse> => {
      const context: HandlerContext = {
        service,
        method,
        get signal() {
          return request.signal;
        },
        timeoutMs: () => (deadline === undefined ? undefined : deadline - Date.now()),
        requestMethod: "POST",
        requestHeader: request.header,
        responseHeader,
        responseTrailer,
        protocolName: "grpc",
        values: request.contextValues,
        url: request.url,
      };
      const output = await target.call(request.message, context);
      return {
        stream: false,
        service,
        method,
        header: responseHeader,
        trailer: responseTrailer,
        message: isMessage(output, method.output as DescMessage) ? output : create(method.output as DescMessage, output as never),
      };
    };
    let next = innermost;
    for (let i = options.interceptors.length - 1; i >= 0; i--) next = options.interceptors[i]!(next as never) as typeof innermost;
    const request = {
      stream: false,
      service,
      method,
      requestMethod: "POST",
      url,
      get signal() {
        return signal.signal;
      },
      header,
      contextValues,
      message,
    } as unknown as UnaryRequest;
    if (deadlinePassed === null) return next(request);
    try {
      return await Promise.race([next(request), deadlinePassed]);
    } finally {
      clearTimeout(deadlineTimer);
    }
  }

  /** Response headers, a message when there is one, then the status in trailers, as Connect's gRPC handler does. */
  function reply(stream: http2.ServerHttp2Stream, header: Headers, trailer: Headers, body: Buffer | null): void {
    if (stream.destroyed || stream.closed) return;
    const out: http2.OutgoingHttpHeaders = { ":status": 200, "content-type": "application/grpc+proto" };
    outgoing(out, header);
    const trailers: http2.OutgoingHttpHeaders = {};
    outgoing(trailers, trailer);
    stream.respond(out, { waitForTrailers: true });
    stream.once("wantTrailers", () => stream.sendTrailers(trailers));
    if (body === null) stream.end();
    else stream.end(body);
  }

  function replyError(stream: http2.ServerHttp2Stream, error: unknown): void {
    if (stream.headersSent) {
      if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      return;
    }
    const connectError =
      error instanceof ConnectError ? error : new ConnectError("internal error", Code.Internal, undefined, undefined, error);
    reply(stream, new Headers(), setTrailerStatus(new Headers(), connectError), null);
  }

  function handle(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): boolean {
    const target = takes(headers);
    if (target === undefined) return false;
    served++;
    const controller = new LazyCallSignal();
    calls.add(controller);
    const done = () => {
      calls.delete(controller);
      controller.abort(CALL_COMPLETED);
    };
    stream.once("aborted", () => controller.abort(new ConnectError("the client canceled the call", Code.Canceled)));

    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    stream.on("data", (chunk: Buffer) => {
      if (refused) return;
      size += chunk.length;
      if (size > readMaxBytes) {
        refused = true;
        replyError(stream, new ConnectError(`message size is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted));
        done();
        return;
      }
      chunks.push(chunk);
    });
    stream.once("end", () => {
      if (refused) return;
      const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
      invoke(target, stream, headers, body, controller).then(
        (response) => {
          const trailer = response.trailer;
          trailer.set("grpc-status", "0");
          reply(stream, response.header, trailer, envelope(target.method.output as DescMessage, response.message));
          done();
        },
        (error: unknown) => {
          replyError(stream, error);
          done();
        },
      );
    });
    stream.once("error", () => done());
    // However the stream ends, the call leaves the set of calls in flight.
    stream.once("close", () => done());
    return true;
  }

  return {
    handle,
    get served() {
      return served;
    },
  };
}

/**
 * A `stream` listener for an HTTP/2 server created without a request handler: unary gRPC calls go to `lane`, every
 * other stream to `handler` with the compatibility request and response objects that node:http2 would have built.
 */
export function dispatchStream(
  lane: GrpcUnaryLane,
  handler: (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void,
): (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, flags: number, rawHeaders: string[]) => void {
  return (stream, headers, _flags, rawHeaders) => {
    if (lane.handle(stream, headers)) return;
    const Request = http2.Http2ServerRequest as unknown as new (
      stream: http2.ServerHttp2Stream,
      headers: http2.IncomingHttpHeaders,
      options: undefined,
      rawHeaders: string[],
    ) => http2.Http2ServerRequest;
    const Response = http2.Http2ServerResponse as unknown as new (stream: http2.ServerHttp2Stream) => http2.Http2ServerResponse;
    handler(new Request(stream, headers, undefined, rawHeaders), new Response(stream));
  };
}
