// The agent's pino logger (SPEC §8.4): JSON lines on stdout, secrets redacted wherever they appear one or two levels
// deep (key material, tokens, authorization headers, secret file contents); one readable line per entry instead when
// stdout is a terminal.

import { pino, type DestinationStream, type Logger } from "pino";

/** Keys whose values never reach a log line, at any of the first levels of an object. */
export const REDACTED_KEYS = [
  "privateKey",
  "keyPem",
  "caKey",
  "key",
  "token",
  "accessToken",
  "password",
  "secret",
  "secrets",
  "authorization",
  "cookie",
  "stdin",
] as const;

const REDACTED = new Set<string>(REDACTED_KEYS);
const CENSOR = "[redacted]";
/** Levels below the top one that are searched: `token`, `tls.token` and `req.headers.token` are all redacted. */
const REDACT_DEPTH = 2;

/** Objects whose keys are searched: plain objects, arrays and errors, not buffers, dates, maps or class instances. */
function searchable(value: object): boolean {
  if (Array.isArray(value) || value instanceof Error) return true;
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function shallowCopy<T extends object>(value: T): T {
  if (Array.isArray(value)) return value.slice() as T;
  // An error keeps its prototype and its non-enumerable message and stack, so pino's serializer still knows it.
  if (value instanceof Error) return Object.create(Object.getPrototypeOf(value) as object, Object.getOwnPropertyDescriptors(value)) as T;
  return { ...value };
}

/**
 * `value` with the value of every key named in REDACTED_KEYS replaced by "[redacted]", at the top level and up to
 * REDACT_DEPTH levels below. The objects on the way to a redacted key are copied; nothing the caller passed is changed.
 *
 * Done in pino's log formatter rather than with its `redact` paths: wildcard paths make pino run the redaction on
 * every key of every line, which cost more than the rest of an RPC (bench/rpc-latency.mjs); this walk costs a Set
 * lookup per key.
 */
export function redactSecrets<T>(value: T, depth = 0): T {
  if (value === null || typeof value !== "object" || !searchable(value)) return value;
  let copy: Record<string, unknown> | undefined;
  const source = value as Record<string, unknown>;
  for (const key in source) {
    if (!Object.prototype.hasOwnProperty.call(source, key)) continue;
    const held = source[key];
    let replaced = held;
    if (REDACTED.has(key)) {
      if (held !== undefined) replaced = CENSOR;
    } else if (depth < REDACT_DEPTH && held !== null && typeof held === "object") {
      replaced = redactSecrets(held, depth + 1);
    }
    if (replaced !== held) {
      copy ??= shallowCopy(source);
      copy[key] = replaced;
    }
  }
  return (copy ?? value) as T;
}

export interface AgentLoggerOptions {
  /** pino level. Default `info`, or $MVM_LOG_LEVEL. */
  level?: string;
  /** Where lines go. Default stdout. */
  destination?: DestinationStream;
  /** Human-readable lines (`readableLogLine`) instead of JSON. Default: when lines go to stdout and it is a terminal. */
  readable?: boolean;
}

/** Fields every line has, shown in the line's head or not at all. */
const HEAD_FIELDS = new Set(["level", "time", "msg", "pid", "hostname", "name"]);

function fieldValue(value: unknown): string {
  if (typeof value === "string") return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  return JSON.stringify(value);
}

/**
 * One JSON log line as a person reads it: `12:04:05.123 INFO rpc refused key=value …`, and an error's stack on the
 * lines below. A line that is not JSON is passed on as it is.
 */
export function readableLogLine(json: string): string {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json.endsWith("\n") ? json : `${json}\n`;
  }
  const time = typeof entry.time === "string" ? entry.time.slice(11, 23) : "";
  const level = (pino.levels.labels[entry.level as number] ?? String(entry.level)).toUpperCase();
  const fields: string[] = [];
  let stack = "";
  for (const [key, value] of Object.entries(entry)) {
    if (HEAD_FIELDS.has(key) || value === undefined) continue;
    if (key === "err" && value !== null && typeof value === "object" && typeof (value as { stack?: unknown }).stack === "string") {
      stack = `\n    ${(value as { stack: string }).stack.split("\n").join("\n    ")}`;
      continue;
    }
    fields.push(`${key}=${fieldValue(value)}`);
  }
  return `${[time, level.padEnd(5), String(entry.msg ?? ""), ...fields].filter((p) => p !== "").join(" ")}${stack}\n`;
}

export function createAgentLogger(options: AgentLoggerOptions = {}): Logger {
  const sink = options.destination ?? pino.destination(1);
  const readable = options.readable ?? (options.destination === undefined && process.stdout.isTTY === true);
  const logger = pino(
    {
      name: "mvm-agent",
      level: options.level ?? process.env.MVM_LOG_LEVEL ?? "info",
      formatters: { log: (object) => redactSecrets(object) },
      timestamp: pino.stdTimeFunctions.isoTime,
      base: { pid: process.pid },
    },
    readable ? { write: (line: string) => void sink.write(readableLogLine(line)) } : sink,
  );
  // pino applies no formatter to a child's bindings, so they are redacted on the way in. A child is made with
  // Object.create from its parent, so every descendant inherits this method.
  const pinoChild = logger.child as unknown as (this: Logger, bindings: object, childOptions?: object) => Logger;
  function redactingChild(this: Logger, bindings: object, childOptions?: object): Logger {
    return pinoChild.call(this, redactSecrets(bindings), childOptions);
  }
  Object.defineProperty(logger, "child", { value: redactingChild, writable: true, configurable: true });
  return logger;
}
