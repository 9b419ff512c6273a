// Helpers for server streams: end a stream with Unavailable when the agent shuts down, and fan one producer's
// events out to several subscribers that may join late.

import { Code, ConnectError } from "@connectrpc/connect";

export const SHUTDOWN_MESSAGE = "the mvm agent is shutting down; reconnect and resume";

/** Resolves when `signal` aborts (never, when it is absent). The listener is removed by `dispose`. */
function aborted(signal: AbortSignal | undefined): { promise: Promise<"aborted">; dispose(): void } {
  if (signal === undefined) return { promise: new Promise(() => undefined), dispose: () => undefined };
  let onAbort: () => void = () => undefined;
  const promise = new Promise<"aborted">((resolve) => {
    onAbort = () => resolve("aborted");
    if (signal.aborted) resolve("aborted");
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  return { promise, dispose: () => signal.removeEventListener("abort", onAbort) };
}

/**
 * Yields what `source` yields until it ends, the client goes away (`requestSignal`: the stream just ends), or the
 * agent shuts down (`shutdownSignal`: the stream fails with Unavailable). The source is closed in every case.
 */
export async function* untilShutdown<T>(
  source: AsyncIterable<T>,
  shutdownSignal: AbortSignal,
  requestSignal?: AbortSignal,
): AsyncGenerator<T, void, undefined> {
  const iterator = source[Symbol.asyncIterator]();
  const shutdown = aborted(shutdownSignal);
  const gone = aborted(requestSignal);
  try {
    for (;;) {
      if (shutdownSignal.aborted) throw new ConnectError(SHUTDOWN_MESSAGE, Code.Unavailable);
      const next = await Promise.race([iterator.next(), shutdown.promise, gone.promise]);
      if (next === "aborted") {
        if (shutdownSignal.aborted) throw new ConnectError(SHUTDOWN_MESSAGE, Code.Unavailable);
        // The client went away or its deadline passed: end with that reason, never as a clean finish.
        throw ConnectError.from(requestSignal?.reason ?? new ConnectError("request aborted", Code.Canceled));
      }
      if (next.done) return;
      yield next.value;
    }
  } finally {
    shutdown.dispose();
    gone.dispose();
    // Not awaited: a source blocked in next() (a watcher waiting for a change) settles when it is closed.
    void iterator.return?.()?.catch(() => undefined);
  }
}

/**
 * One producer's events, kept in order, for any number of subscribers; a late subscriber first gets every event
 * so far. Finished with `end()` or `fail(error)`, after which subscribers end (or throw) once they have read all.
 */
export class EventLog<T> {
  private readonly events: T[] = [];
  private finished = false;
  private failure: unknown = undefined;
  private waiters: Array<() => void> = [];

  push(event: T): void {
    if (this.finished) return;
    this.events.push(event);
    this.wake();
  }

  end(): void {
    this.finished = true;
    this.wake();
  }

  fail(error: unknown): void {
    if (this.finished) return;
    this.failure = error;
    this.finished = true;
    this.wake();
  }

  async *subscribe(): AsyncGenerator<T, void, undefined> {
    let index = 0;
    for (;;) {
      while (index < this.events.length) yield this.events[index++] as T;
      if (this.finished) {
        if (this.failure !== undefined) throw this.failure;
        return;
      }
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}
