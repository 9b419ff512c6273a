// Domain errors: a small discriminated union. One module at each edge maps them (api: ConnectError codes; cli: one
// line and an exit code). Messages are lower-case and say what failed and why.

/** One rule broken by one input field. `field` is a path such as `tenants[0].pools[1].resources.vcpus`. */
export interface FieldViolation {
  field: string;
  rule: string;
}

export type MvmErrorKind =
  | "invalid"
  | "not_found"
  | "already_exists"
  | "failed_precondition"
  | "exhausted"
  | "unavailable"
  | "permission_denied"
  | "terminal"
  | "internal";

export class MvmError extends Error {
  readonly kind: MvmErrorKind;
  readonly violations: readonly FieldViolation[];

  constructor(kind: MvmErrorKind, message: string, violations: readonly FieldViolation[] = [], options?: ErrorOptions) {
    super(message, options);
    this.name = "MvmError";
    this.kind = kind;
    this.violations = violations;
  }
}

export function invalid(violations: readonly FieldViolation[]): MvmError {
  const text = violations.map((v) => `${v.field}: ${v.rule}`).join("; ");
  return new MvmError("invalid", `invalid input: ${text}`, violations);
}

export function invalidField(field: string, rule: string): MvmError {
  return invalid([{ field, rule }]);
}

export function notFound(what: string): MvmError {
  return new MvmError("not_found", `${what} not found`);
}

export function alreadyExists(what: string): MvmError {
  return new MvmError("already_exists", `${what} already exists`);
}

export function failedPrecondition(message: string): MvmError {
  return new MvmError("failed_precondition", message);
}

export function exhausted(message: string): MvmError {
  return new MvmError("exhausted", message);
}

export function isMvmError(e: unknown): e is MvmError {
  return e instanceof MvmError;
}
