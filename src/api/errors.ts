// The one place domain errors become RPC statuses (SPEC §8.1 "Errors use gRPC codes consistently"). Invalid input
// carries a mvm.v1.BadRequestDetail with every violation; a refused state transition can carry an
// InstanceStateDetail. Anything that is not a domain error is a bug: it becomes Internal with a fixed message, and
// its text and stack stay in the agent's log.

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { MvmError, isMvmError, type FieldViolation, type MvmErrorKind } from "../core/errors.js";
import type { InstanceStatus } from "../core/model.js";
import { allowedOperations, type Operation } from "../core/state-machine.js";
import { isPkiError } from "../platform/pki/pki-error.js";
import { BadRequestDetailSchema, InstanceStateDetailSchema } from "../../gen/mvm/v1/errors_pb.js";
import { instanceOperationToProto, instanceStatusToProto } from "./convert/enums.js";
import { instanceRefOf } from "./convert/instance.js";

export const CODE_OF_KIND: Readonly<Record<MvmErrorKind, Code>> = {
  invalid: Code.InvalidArgument,
  not_found: Code.NotFound,
  already_exists: Code.AlreadyExists,
  failed_precondition: Code.FailedPrecondition,
  exhausted: Code.ResourceExhausted,
  permission_denied: Code.PermissionDenied,
  unavailable: Code.Unavailable,
  terminal: Code.Internal,
  internal: Code.Internal,
};

/**
 * The other way, for clients of an agent: the domain kind a status code stands for, so that a remote refusal exits
 * and reads as the local one would. Codes the agent never sends map to the nearest kind; unknown ones to none.
 */
const KIND_OF_CODE: Partial<Record<Code, MvmErrorKind>> = {
  [Code.InvalidArgument]: "invalid",
  [Code.OutOfRange]: "invalid",
  [Code.NotFound]: "not_found",
  [Code.AlreadyExists]: "already_exists",
  [Code.FailedPrecondition]: "failed_precondition",
  [Code.Aborted]: "failed_precondition",
  [Code.ResourceExhausted]: "exhausted",
  [Code.PermissionDenied]: "permission_denied",
  [Code.Unauthenticated]: "permission_denied",
  [Code.Unavailable]: "unavailable",
  [Code.DeadlineExceeded]: "unavailable",
};

export function kindOfCode(code: Code): MvmErrorKind | undefined {
  return KIND_OF_CODE[code];
}

/** What an unexpected error says to the caller; the details go to the log only. */
export const INTERNAL_ERROR_MESSAGE = "internal error in the mvm agent (details are in the agent log)";

function domainError(e: unknown): MvmError | null {
  if (isMvmError(e)) return e;
  if (isPkiError(e)) return new MvmError(e.kind, e.message, e.violations, { cause: e });
  return null;
}

export function badRequest(violations: readonly FieldViolation[]): ConnectError {
  const text = violations.map((v) => `${v.field}: ${v.rule}`).join("; ");
  return new ConnectError(`invalid input: ${text}`, Code.InvalidArgument, undefined, [
    { desc: BadRequestDetailSchema, value: create(BadRequestDetailSchema, { fieldViolations: violations.map((v) => ({ ...v })) }) },
  ]);
}

/** The RPC status for any thrown value. A ConnectError passes through unchanged. */
export function toConnectError(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  const mvm = domainError(e);
  if (mvm === null) return new ConnectError(INTERNAL_ERROR_MESSAGE, Code.Internal, undefined, undefined, e);
  if (mvm.kind === "invalid" && mvm.violations.length > 0) {
    const error = badRequest(mvm.violations);
    error.cause = mvm;
    return error;
  }
  return new ConnectError(mvm.message, CODE_OF_KIND[mvm.kind], undefined, undefined, mvm);
}

/** True when `e` is a bug rather than a refusal: worth a stack trace in the log. */
export function isUnexpected(e: unknown): boolean {
  if (e instanceof ConnectError) return e.code === Code.Internal || e.code === Code.Unknown;
  const mvm = domainError(e);
  return mvm === null || mvm.kind === "internal" || mvm.kind === "terminal";
}

/**
 * A FailedPrecondition for `op` refused on an instance in `status`, with the InstanceStateDetail the contract
 * promises: the current state and the operations it allows.
 */
export function instanceStateError(
  message: string,
  instance: { tenantId: string; poolId: string; instanceId: string },
  status: InstanceStatus,
  op: Operation,
): ConnectError {
  return new ConnectError(message, Code.FailedPrecondition, undefined, [
    {
      desc: InstanceStateDetailSchema,
      value: create(InstanceStateDetailSchema, {
        instance: instanceRefOf(instance),
        currentStatus: instanceStatusToProto(status),
        refusedOperation: instanceOperationToProto(op),
        allowedOperations: allowedOperations(status)
          .filter((o) => o !== "bind")
          .map(instanceOperationToProto),
      }),
    },
  ]);
}

/** Rewrites the field paths of an invalid-input error (e.g. `tenant_id` → `instance.tenant_id`); others unchanged. */
export function remapViolations(e: unknown, rename: (field: string) => string): unknown {
  if (!isMvmError(e) || e.kind !== "invalid") return e;
  const violations = e.violations.map((v) => ({ field: rename(v.field), rule: v.rule }));
  const text = violations.map((v) => `${v.field}: ${v.rule}`).join("; ");
  return new MvmError("invalid", `invalid input: ${text}`, violations, { cause: e });
}
