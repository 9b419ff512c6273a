// The coordinator service's side of the merged watch (FleetService.WatchFleetInstances): every merged event gets a
// fleet-wide revision and stays in a bounded history, so a dashboard that loses its one stream resumes from its
// last token without missing or repeating anything; a token the coordinator cannot honour (too old, or from an
// earlier coordinator process) starts a fresh snapshot after a `snapshot_reset`, as on the agents.
//
// Tokens are `f1.<epoch>.<revision>`; the epoch is random per log.

import type { Instance } from "../core/model.js";
import type { FleetWatchBody, NodeWatchStatus } from "./watch-merge.js";

export type FleetStreamBody =
  | FleetWatchBody
  | { kind: "heartbeat" }
  | { kind: "snapshot_reset"; reason: string };

export interface FleetStreamEvent {
  /** Fleet revision: strictly increasing for changes; snapshot events and markers carry the revision they reflect. */
  revision: number;
  resumeToken: string;
  body: FleetStreamBody;
}

export interface FleetSubscribeOptions {
  resumeToken?: string;
  /** Which merged events this subscriber sees (its tenant); node status and markers always pass. */
  instanceFilter?: (instance: Instance) => boolean;
  signal?: AbortSignal;
}

export interface FleetEventLogOptions {
  /** Default: random. [a-z0-9] only. */
  epoch?: string;
  /** Changes kept for resuming subscribers. Default 8192. */
  historyLimit?: number;
  /** Live events one subscriber may have waiting before it is cut off. Default 8192. */
  bufferLimit?: number;
  /** The merged view now, for snapshots. */
  view: () => Array<{ node: string; instance: Instance }>;
  nodes: () => NodeWatchStatus[];
}

export const FLEET_OVERFLOW_MESSAGE = "fleet watch buffer overflow: consumer too slow, resume with the last token";
const TOKEN_PATTERN = /^f1\.([a-z0-9]{1,64})\.(0|[1-9][0-9]{0,15})$/;

export class SubscriberOverflow extends Error {
  constructor() {
    super(FLEET_OVERFLOW_MESSAGE);
  }
}

class Subscription implements AsyncIterableIterator<FleetStreamEvent> {
  private queue: FleetStreamEvent[] = [];
  private waiter: ((r: IteratorResult<FleetStreamEvent, undefined>) => void) | null = null;
  private failWaiter: ((e: unknown) => void) | null = null;
  private ended = false;
  private failure: Error | null = null;
  /** Snapshot or replay events still queued; they do not count against the live limit. */
  private initialPending = 0;

  constructor(
    private readonly limit: number,
    readonly accepts: (body: FleetStreamBody) => boolean,
    private readonly onEnd: (s: Subscription) => void,
  ) {}

  [Symbol.asyncIterator](): this {
    return this;
  }

  pushInitial(events: FleetStreamEvent[]): void {
    this.queue.push(...events);
    this.initialPending = events.length;
  }

  pushLive(event: FleetStreamEvent): void {
    if (this.ended) return;
    if (this.queue.length - this.initialPending >= this.limit) {
      this.fail(new SubscriberOverflow());
      return;
    }
    this.deliver(event);
  }

  private deliver(event: FleetStreamEvent): void {
    if (this.ended) return;
    if (this.waiter !== null) {
      const w = this.waiter;
      this.waiter = this.failWaiter = null;
      w({ value: event, done: false });
    } else this.queue.push(event);
  }

  fail(error: Error): void {
    if (this.ended) return;
    this.failure = error;
    this.queue = [];
    this.finish();
  }

  close(): void {
    if (this.ended) return;
    this.finish();
  }

  private finish(): void {
    this.ended = true;
    this.onEnd(this);
    if (this.waiter !== null) {
      const w = this.waiter;
      const f = this.failWaiter;
      this.waiter = this.failWaiter = null;
      if (this.failure !== null && f !== null) f(this.failure);
      else w({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<FleetStreamEvent, undefined>> {
    const event = this.queue.shift();
    if (event !== undefined) {
      if (this.initialPending > 0) this.initialPending--;
      return Promise.resolve({ value: event, done: false });
    }
    if (this.ended) return this.failure !== null ? Promise.reject(this.failure) : Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.waiter = resolve;
      this.failWaiter = reject;
    });
  }

  return(): Promise<IteratorResult<FleetStreamEvent, undefined>> {
    this.close();
    return Promise.resolve({ value: undefined, done: true });
  }
}

function randomEpoch(): string {
  return Date.now().toString(36) + Math.floor(Math.random() * 2 ** 32).toString(36);
}

export class FleetEventLog {
  readonly epoch: string;
  private revision = 0;
  private readonly history: FleetStreamEvent[] = [];
  private readonly historyLimit: number;
  private readonly bufferLimit: number;
  private readonly subscriptions = new Set<Subscription>();

  constructor(private readonly options: FleetEventLogOptions) {
    this.epoch = options.epoch ?? randomEpoch();
    this.historyLimit = options.historyLimit ?? 8192;
    this.bufferLimit = options.bufferLimit ?? 8192;
  }

  get subscriberCount(): number {
    return this.subscriptions.size;
  }

  private token(revision: number): string {
    return `f1.${this.epoch}.${revision}`;
  }

  /** Records a merged event and hands it to every subscriber that may see it. The merger's own marker is not kept. */
  publish(body: FleetWatchBody): void {
    if (body.kind === "initial_state_complete") return;
    this.revision++;
    const event: FleetStreamEvent = { revision: this.revision, resumeToken: this.token(this.revision), body };
    this.history.push(event);
    if (this.history.length > this.historyLimit) this.history.splice(0, this.history.length - this.historyLimit);
    for (const s of this.subscriptions) if (s.accepts(body)) s.pushLive(event);
  }

  /** Ends every subscription, with `error` when given. */
  close(error?: Error): void {
    for (const s of [...this.subscriptions]) (error ? s.fail(error) : s.close());
  }

  subscribe(options: FleetSubscribeOptions = {}): AsyncIterableIterator<FleetStreamEvent> {
    const instanceFilter = options.instanceFilter ?? (() => true);
    const accepts = (body: FleetStreamBody) => (body.kind === "upsert" || body.kind === "deleted" ? instanceFilter(body.instance) : true);
    const subscription = new Subscription(this.bufferLimit, accepts, (s) => this.subscriptions.delete(s));
    subscription.pushInitial(this.initialEvents(options.resumeToken ?? "", accepts, instanceFilter));
    this.subscriptions.add(subscription);
    if (options.signal) {
      if (options.signal.aborted) subscription.close();
      else options.signal.addEventListener("abort", () => subscription.close(), { once: true });
    }
    return subscription;
  }

  private initialEvents(token: string, accepts: (b: FleetStreamBody) => boolean, instanceFilter: (i: Instance) => boolean): FleetStreamEvent[] {
    if (token === "") return this.snapshot(instanceFilter, null);
    const m = TOKEN_PATTERN.exec(token);
    if (m === null) return this.snapshot(instanceFilter, "resume token not recognised");
    if (m[1] !== this.epoch) return this.snapshot(instanceFilter, "coordinator restarted: token from another incarnation");
    const from = Number(m[2]);
    if (from > this.revision) return this.snapshot(instanceFilter, "token is ahead of this coordinator's history");
    const oldest = this.history.length === 0 ? this.revision + 1 : (this.history[0] as FleetStreamEvent).revision;
    if (from < oldest - 1) return this.snapshot(instanceFilter, "token older than history");
    const events = this.history.filter((e) => e.revision > from && accepts(e.body));
    events.push(this.marker(instanceFilter));
    return events;
  }

  private marker(instanceFilter: (i: Instance) => boolean): FleetStreamEvent {
    const count = this.options.view().filter((v) => instanceFilter(v.instance)).length;
    return { revision: this.revision, resumeToken: this.token(this.revision), body: { kind: "initial_state_complete", instanceCount: count } };
  }

  private snapshot(instanceFilter: (i: Instance) => boolean, resetReason: string | null): FleetStreamEvent[] {
    const revision = this.revision;
    // A token from inside a snapshot would resume without the rest of it: only the marker carries a usable one.
    const partial = "";
    const events: FleetStreamEvent[] = [];
    if (resetReason !== null) events.push({ revision, resumeToken: partial, body: { kind: "snapshot_reset", reason: resetReason } });
    for (const n of this.options.nodes()) events.push({ revision, resumeToken: partial, body: { kind: "node_status", node: n.node, health: n.health, reason: n.reason } });
    for (const { node, instance } of this.options.view()) {
      if (instanceFilter(instance)) events.push({ revision, resumeToken: partial, body: { kind: "upsert", node, instance, nodeRevision: 0 } });
    }
    events.push(this.marker(instanceFilter));
    return events;
  }
}
