// The agent's health statuses, set by whoever knows (the server on start and shutdown, loops that notice trouble)
// and read by the health service. Watchers hear of every change; a watcher that falls behind gets the latest
// status, not a backlog, which is all a health check cares about.

import type { HealthSource, ServingStatus } from "./health-service.js";

/** The statuses a service can be set to; SERVICE_UNKNOWN is what an unset one reads as. */
export type SettableStatus = Exclude<ServingStatus, "SERVICE_UNKNOWN">;

export class HealthStatusBoard implements HealthSource {
  private readonly statuses = new Map<string, SettableStatus>();
  private readonly waiters = new Set<() => void>();
  private shuttingDown = false;

  /** `initial` maps service names ("" for the whole server) to their first status. */
  constructor(initial: Iterable<readonly [string, SettableStatus]> = []) {
    for (const [service, status] of initial) this.statuses.set(service, status);
  }

  /** Sets one service's status. Ignored after `shutdown()`, so nothing reads SERVING while the server drains. */
  set(service: string, status: SettableStatus): void {
    if (this.shuttingDown) return;
    this.update(service, status);
  }

  /**
   * Every service, and the server as a whole, to NOT_SERVING for good: load balancers and watchers learn of the
   * shutdown before streams end.
   */
  shutdown(): void {
    this.shuttingDown = true;
    this.statuses.set("", "NOT_SERVING");
    for (const service of this.statuses.keys()) this.statuses.set(service, "NOT_SERVING");
    this.notify();
  }

  get isShuttingDown(): boolean {
    return this.shuttingDown;
  }

  check(service: string): ServingStatus {
    return this.statuses.get(service) ?? "SERVICE_UNKNOWN";
  }

  services(): string[] {
    return [...this.statuses.keys()].sort();
  }

  async *watch(service: string, signal: AbortSignal): AsyncGenerator<ServingStatus> {
    let last: ServingStatus | undefined;
    for (;;) {
      // A change is yielded before an abort is noticed, so the NOT_SERVING of shutdown() still goes out when the
      // server aborts its streams right after. No await between reading the status and registering for the next
      // change, so no change slips between.
      const current = this.check(service);
      if (current !== last) {
        last = current;
        yield current;
        continue;
      }
      if (signal.aborted) return;
      await this.nextChange(signal);
    }
  }

  private update(service: string, status: SettableStatus): void {
    if (this.statuses.get(service) === status) return;
    this.statuses.set(service, status);
    this.notify();
  }

  private notify(): void {
    const waiting = [...this.waiters];
    this.waiters.clear();
    for (const wake of waiting) wake();
  }

  private nextChange(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        this.waiters.delete(wake);
        signal.removeEventListener("abort", wake);
        resolve();
      };
      this.waiters.add(wake);
      signal.addEventListener("abort", wake, { once: true });
    });
  }
}
