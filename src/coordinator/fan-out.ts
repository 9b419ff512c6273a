// One call per node, Go style: at most `concurrency` calls in flight, a deadline per node (covering its retries),
// retries with backoff for `unavailable` only, cancellation of everything in flight through one AbortSignal, and one
// outcome per node whatever happens to the others. The calls themselves are injected, so this is tested without a
// network.

import { setMaxListeners } from "node:events";
import { backoffDelayMs, DEFAULT_RETRY_POLICY, type RetryPolicy } from "./retry-policy.js";
import { defaultFailureClassifier, type FailureClassifier, type NodeFailure } from "./node-failure.js";

export const DEFAULT_CONCURRENCY = 32;
export const DEFAULT_NODE_DEADLINE_MS = 10_000;

export interface FanOutOptions {
  /** Calls in flight at once. Default 32. */
  concurrency?: number;
  /** Time one node gets for all its attempts and backoff waits, ms. Default 10000. */
  deadlineMs?: number;
  /** Default DEFAULT_RETRY_POLICY (3 attempts). */
  retry?: RetryPolicy;
  /** Aborting cancels every call in flight and every call not yet started. Default: none. */
  signal?: AbortSignal;
  /** Default: every failure is `internal` (nothing retried). */
  classify?: FailureClassifier;
  /** Source of jitter, [0, 1). Default Math.random. */
  random?: () => number;
  /** Told about each node's outcome as it is known (progress output). */
  onOutcome?: (outcome: NodeOutcome<unknown, unknown>) => void;
}

interface OutcomeBase<N> {
  node: N;
  /** Calls made, retries included; 0 when cancelled before the first. */
  attempts: number;
  /** From the node's first call to its outcome, ms. */
  elapsedMs: number;
}

export type NodeOutcome<N, T> = (OutcomeBase<N> & { ok: true; value: T }) | (OutcomeBase<N> & { ok: false; error: NodeFailure });

/** A call to one node; it should stop when `signal` aborts (the fan-out stops waiting for it either way). */
export type NodeCall<N, T> = (node: N, signal: AbortSignal, attempt: number) => Promise<T>;

class DeadlineExceeded extends Error {}
class Cancelled extends Error {}

function abortable<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return abortable(new Promise<void>((resolve) => setTimeout(resolve, ms).unref?.()), signal);
}

async function callOneNode<N, T>(node: N, call: NodeCall<N, T>, options: Required<Omit<FanOutOptions, "signal" | "onOutcome">> & { signal?: AbortSignal }): Promise<NodeOutcome<N, T>> {
  const started = performance.now();
  const elapsed = () => Math.round(performance.now() - started);
  if (options.signal?.aborted) return { node, ok: false, attempts: 0, elapsedMs: 0, error: { kind: "cancelled", message: "cancelled before the call was made" } };
  const scope = new AbortController();
  const timer = setTimeout(() => scope.abort(new DeadlineExceeded()), options.deadlineMs);
  const onCancel = () => scope.abort(new Cancelled());
  options.signal?.addEventListener("abort", onCancel, { once: true });
  let attempts = 0;
  let last: NodeFailure | null = null;
  try {
    for (;;) {
      attempts++;
      try {
        const value = await abortable(call(node, scope.signal, attempts), scope.signal);
        return { node, ok: true, value, attempts, elapsedMs: elapsed() };
      } catch (error) {
        if (scope.signal.aborted) throw scope.signal.reason;
        last = options.classify(error);
        if (last.kind !== "unavailable" || attempts >= options.retry.maxAttempts) return { node, ok: false, error: last, attempts, elapsedMs: elapsed() };
      }
      await sleep(backoffDelayMs(attempts, options.retry, options.random), scope.signal);
    }
  } catch (reason) {
    const after = last === null ? "" : ` (last attempt: ${last.message})`;
    if (reason instanceof Cancelled) return { node, ok: false, attempts, elapsedMs: elapsed(), error: { kind: "cancelled", message: `cancelled after ${elapsed()} ms${after}` } };
    if (reason instanceof DeadlineExceeded) {
      return { node, ok: false, attempts, elapsedMs: elapsed(), error: { kind: "timeout", message: `no answer within the ${options.deadlineMs} ms deadline${after}` } };
    }
    throw reason;
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onCancel);
    // Whatever the call still holds open (an HTTP/2 stream) is told to stop.
    if (!scope.signal.aborted) scope.abort(new Cancelled());
  }
}

/** Calls every node and returns one outcome per node, in the order of `nodes`. Never rejects for a node's failure. */
export async function fanOut<N, T>(nodes: readonly N[], call: NodeCall<N, T>, options: FanOutOptions = {}): Promise<NodeOutcome<N, T>[]> {
  const concurrency = options.concurrency ?? DEFAULT_CONCURRENCY;
  const deadlineMs = options.deadlineMs ?? DEFAULT_NODE_DEADLINE_MS;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`concurrency must be an integer >= 1 (got ${concurrency})`);
  if (!(deadlineMs > 0)) throw new RangeError(`deadlineMs must be > 0 (got ${deadlineMs})`);
  const settings = {
    concurrency,
    deadlineMs,
    retry: options.retry ?? DEFAULT_RETRY_POLICY,
    classify: options.classify ?? defaultFailureClassifier,
    random: options.random ?? Math.random,
    signal: options.signal,
  };
  // Every call in flight listens on the caller's signal: up to `concurrency` listeners, not a leak.
  if (options.signal) setMaxListeners(Math.max(concurrency + 10, 20), options.signal);
  const outcomes = new Array<NodeOutcome<N, T>>(nodes.length);
  let next = 0;
  const worker = async () => {
    while (next < nodes.length) {
      const index = next++;
      const outcome = await callOneNode(nodes[index] as N, call, settings);
      outcomes[index] = outcome;
      options.onOutcome?.(outcome as NodeOutcome<unknown, unknown>);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, nodes.length) }, worker));
  return outcomes;
}
