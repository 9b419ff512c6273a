// Errors raised by the PKI module. src/platform may not import src/core (scripts/check-deps.mjs), so this mirrors the
// shape of core's MvmError (a kind from the same vocabulary, and field violations for bad input); the composition
// roots turn one into the other with `new MvmError(e.kind, e.message, e.violations)`.

/** One rule broken by one input field; `field` is named as the user wrote it (`--identity`, `--ca-key`). */
export interface PkiViolation {
  field: string;
  rule: string;
}

/** A subset of core's MvmErrorKind, spelled the same. */
export type PkiErrorKind = "invalid" | "not_found" | "already_exists" | "failed_precondition";

export class PkiError extends Error {
  readonly kind: PkiErrorKind;
  readonly violations: readonly PkiViolation[];

  constructor(kind: PkiErrorKind, message: string, violations: readonly PkiViolation[] = [], options?: ErrorOptions) {
    super(message, options);
    this.name = "PkiError";
    this.kind = kind;
    this.violations = violations;
  }
}

/** Bad input: the message lists every violation, in the same words core's `invalid` uses. */
export function pkiInvalid(violations: readonly PkiViolation[]): PkiError {
  const text = violations.map((v) => `${v.field}: ${v.rule}`).join("; ");
  return new PkiError("invalid", `invalid input: ${text}`, violations);
}

export function isPkiError(e: unknown): e is PkiError {
  return e instanceof PkiError;
}
