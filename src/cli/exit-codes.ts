// One exit code per error kind, so scripts can tell "bad input" from "not found" from "over quota" without parsing
// the message. 1 is left for unexpected failures (bugs).

import type { MvmErrorKind } from "../core/errors.js";

export const EXIT_CODES: Record<MvmErrorKind | "usage", number> = {
  internal: 1,
  usage: 2,
  invalid: 2,
  not_found: 3,
  already_exists: 4,
  failed_precondition: 5,
  exhausted: 6,
  permission_denied: 7,
  unavailable: 8,
  terminal: 9,
};
