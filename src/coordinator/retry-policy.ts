// When and how long a fan-out waits before it calls a node again (SPEC §11): exponential backoff with jitter, only for
// failures that may pass by themselves (the node unreachable or busy), never for a refusal or bad input.

export interface RetryPolicy {
  /** Calls per node, the first included; 1 disables retries. Default 3. */
  maxAttempts: number;
  /** Wait before the second attempt, ms. Default 100. */
  initialDelayMs: number;
  /** Upper bound of any one wait, ms. Default 2000. */
  maxDelayMs: number;
  /** Growth of the wait per attempt. Default 2. */
  multiplier: number;
  /** Fraction of each wait drawn at random (0: none, 1: anywhere from 0 to the full wait). Default 0.2. */
  jitter: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = { maxAttempts: 3, initialDelayMs: 100, maxDelayMs: 2_000, multiplier: 2, jitter: 0.2 };

/**
 * The wait after failed attempt number `attempt` (1 = the first call), ms. `random` returns [0, 1); jitter only ever
 * shortens the wait, so `maxDelayMs` stays a bound.
 */
export function backoffDelayMs(attempt: number, policy: RetryPolicy, random: () => number = Math.random): number {
  const exponent = Math.max(0, attempt - 1);
  const full = Math.min(policy.maxDelayMs, policy.initialDelayMs * policy.multiplier ** exponent);
  const jitter = Math.min(1, Math.max(0, policy.jitter));
  return Math.max(0, Math.round(full * (1 - jitter * random())));
}
