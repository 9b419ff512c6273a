// What went wrong with one node in a fan-out, in words a per-node result table can print and a script can match.

/**
 * `timeout`: the per-node deadline passed; `cancelled`: the whole operation was cancelled (Ctrl-C); `unavailable`: the
 * node could not be reached or said it was busy (the only kind retried); the rest are the node's own answer, named
 * like the CLI's error kinds (`not_found`, `failed_precondition`, `invalid`, `permission_denied`, ...).
 */
export type NodeFailureKind =
  | "timeout"
  | "cancelled"
  | "unavailable"
  | "invalid"
  | "not_found"
  | "already_exists"
  | "failed_precondition"
  | "exhausted"
  | "permission_denied"
  | "unimplemented"
  | "internal";

export interface NodeFailure {
  kind: NodeFailureKind;
  /** One lower-case line. */
  message: string;
}

/** Turns whatever a node call threw into a NodeFailure; the fan-out retries exactly the `unavailable` ones. */
export type FailureClassifier = (error: unknown) => NodeFailure;

export function defaultFailureClassifier(error: unknown): NodeFailure {
  return { kind: "internal", message: error instanceof Error ? error.message : String(error) };
}
