// An RPC status from an agent as the MvmError of the same kind, so a remote refusal exits with the same code and
// reads like the local one (the inverse of src/api/errors.ts); transport failures name the agent.

import { Code, ConnectError } from "@connectrpc/connect";
import { MvmError } from "../../core/errors.js";
import { kindOfCode } from "../../api/errors.js";
import { BadRequestDetailSchema } from "../../../gen/mvm/v1/errors_pb.js";

/** `target` names the agent (HOST:PORT or socket path) in messages about reaching it. */
export function mvmErrorFromRpc(error: unknown, target: string): unknown {
  if (!(error instanceof ConnectError)) return error;
  // connect-node reports a failed connection or handshake (refused, reset, certificate not trusted, name mismatch)
  // with the Node error as the cause; an RPC status from the agent never has one.
  const cause: unknown = error.cause;
  const nodeCode = cause instanceof Error ? (cause as NodeJS.ErrnoException).code : undefined;
  if (typeof nodeCode === "string") {
    return new MvmError("unavailable", `agent at ${target}: connection failed: ${(cause as Error).message} (${nodeCode})`, [], { cause: error });
  }
  const kind = kindOfCode(error.code) ?? "internal";
  if (kind === "invalid") {
    const violations = error.findDetails(BadRequestDetailSchema).flatMap((d) => d.fieldViolations.map((v) => ({ field: v.field, rule: v.rule })));
    return new MvmError("invalid", error.rawMessage, violations, { cause: error });
  }
  const message = kind === "unavailable" ? `agent at ${target}: ${error.rawMessage}` : error.rawMessage;
  return new MvmError(kind, message, [], { cause: error });
}
