// The agent's pino logger (SPEC §8.4): JSON lines on stdout, secrets redacted wherever they appear one or two levels
// deep (key material, tokens, authorization headers, secret file contents).

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

function redactPaths(): string[] {
  const paths: string[] = [];
  for (const key of REDACTED_KEYS) paths.push(key, `*.${key}`, `*.*.${key}`);
  paths.push('headers["authorization"]', '*.headers["authorization"]');
  return paths;
}

export interface AgentLoggerOptions {
  /** pino level. Default `info`, or $MVM_LOG_LEVEL. */
  level?: string;
  /** Where lines go. Default stdout. */
  destination?: DestinationStream;
}

export function createAgentLogger(options: AgentLoggerOptions = {}): Logger {
  return pino(
    {
      name: "mvm-agent",
      level: options.level ?? process.env.MVM_LOG_LEVEL ?? "info",
      redact: { paths: redactPaths(), censor: "[redacted]" },
      timestamp: pino.stdTimeFunctions.isoTime,
      base: { pid: process.pid },
    },
    options.destination ?? pino.destination(1),
  );
}
