// The engine behind InstanceService.WatchInstances (SPEC §8.1): it holds the current record of every instance, numbers
// every change with a node-wide revision, keeps a bounded history of changes for resuming clients, and feeds each
// watcher through a bounded buffer.
//
// Invariants a watcher relies on:
// - Its view (apply `upsert` as put, `deleted` as remove, drop everything on `snapshot_reset`) equals the hub's
//   current state restricted to its filter once it has read up to any `initial_state_complete` or live event.
// - Change events (live or replayed) carry strictly increasing revisions; snapshot upserts, the marker and a reset
//   carry the revision the snapshot was taken at; heartbeats repeat the latest revision. A resumed watcher never gets
//   an event at or below the revision of its token, and gets every matching change above it.
// - An instance that stops matching the filter (e.g. its status left the watched statuses) is sent to that watcher
//   as `deleted` carrying the new record, just as the proto's InstanceDeleted describes; one that starts matching is
//   sent as `upsert`. The filter must therefore be a pure function of the instance record: a filter that reads
//   something else (tenant labels looked up live) could change its answer without an event and break the view.
//
// Resume tokens are `w1.<epoch>.<revision>.<filter hash>.<c|p>`: opaque to clients. The epoch is random per hub, so
// a token from an earlier agent process (or another node) is never taken for one of ours; the filter hash makes a
// token issued for one filter useless with another (the replay would be wrong); `p` marks tokens of snapshot upserts
// and resets, after which the client's view is incomplete, so resuming from them restarts the snapshot. A token that
// cannot be honoured yields `snapshot_reset` and a fresh snapshot, never an error, so old clients recover by
// themselves.

import { MvmError, exhausted } from "./errors.js";
import type { Instance, InstanceStatus } from "./model.js";
import type { InstanceEvent, InstanceEventSink } from "./observability-ports.js";

export type WatchEventBody =
  | { kind: "upsert"; instance: Instance }
  | { kind: "deleted"; instance: Instance }
  /** `instanceCount`: instances in the watcher's view at the marker (the snapshot size after a fresh snapshot). */
  | { kind: "initial_state_complete"; instanceCount: number }
  | { kind: "heartbeat" }
  | { kind: "snapshot_reset"; reason: string };

export interface WatchEvent {
  revision: number;
  /** Pass back as `WatchOptions.resumeToken` to continue after this event. */
  resumeToken: string;
  event: WatchEventBody;
}

export interface WatchOptions {
  /** Which instances the watcher sees; must depend only on the record. Default: every instance. */
  filter?: (instance: Instance) => boolean;
  /**
   * A canonical description of `filter` (e.g. the request's filter serialised with sorted keys). Tokens carry a hash
   * of it, and a token presented with a different key restarts with a snapshot. Default "".
   */
  filterKey?: string;
  /** Token of the last event the client received. Absent or "": start with a snapshot. */
  resumeToken?: string;
  /** Aborting ends the watcher cleanly, like `close()`. */
  signal?: AbortSignal;
}

export interface Watcher extends AsyncIterableIterator<WatchEvent> {
  /** Ends the watcher: the iterator finishes (done) and the hub forgets it. Idempotent. */
  close(): void;
  /** Sends a heartbeat to this watcher only (for a per-stream interval). */
  heartbeat(): void;
  /** True once closed, aborted or cut off. */
  readonly ended: boolean;
  /** Events waiting to be read. */
  readonly buffered: number;
}

/** What the hub reports to the metrics layer. */
export interface WatchHubObserver {
  watcherCountChanged?(count: number): void;
  /** A watcher was cut off because its buffer overflowed. */
  watcherCutOff?(): void;
  /** An instance's status changed (a deleted record ends as destroyed); not called for a new record. */
  statusChanged?(from: InstanceStatus, to: InstanceStatus, instance: Instance): void;
}

export interface WatchHubOptions {
  /** Changes kept for resuming watchers. Default 4096. */
  historyLimit?: number;
  /** Live events one watcher may have waiting before it is cut off. Default 1024. */
  watcherBufferLimit?: number;
  /** Identifies this hub in tokens; [a-z0-9] only. Default: random. Give it a crypto-random value in production. */
  epoch?: string;
  observer?: WatchHubObserver;
}

export const DEFAULT_WATCH_HISTORY_LIMIT = 4096;
export const DEFAULT_WATCHER_BUFFER_LIMIT = 1024;
export const WATCH_OVERFLOW_MESSAGE = "watch buffer overflow: consumer too slow, resume with the last token";

const TOKEN_PATTERN = /^w1\.([a-z0-9]{1,64})\.(0|[1-9][0-9]{0,15})\.([0-9a-f]{8})\.([cp])$/;
const EPOCH_PATTERN = /^[a-z0-9]{1,64}$/;

interface Change {
  revision: number;
  kind: InstanceEvent["kind"];
  instance: Instance;
  /** The hub's record before this change; undefined when it had none. */
  previous: Instance | undefined;
}

function instanceKey(i: Instance): string {
  return `${i.tenantId}/${i.poolId}/${i.instanceId}`;
}

/** FNV-1a 32-bit: tells filters apart in tokens; not a security boundary (a forged token only changes the replay). */
function filterHash(key: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, "0");
}

function randomEpoch(): string {
  let out = Date.now().toString(36);
  for (let i = 0; i < 3; i++) out += Math.floor(Math.random() * 2 ** 32).toString(36);
  return out;
}

/** What a change means to one watcher: an event for its view, or nothing. */
function changeFor(change: Change, filter: (i: Instance) => boolean): WatchEventBody | null {
  const wasVisible = change.previous !== undefined && filter(change.previous);
  if (change.kind === "upsert") {
    if (filter(change.instance)) return { kind: "upsert", instance: change.instance };
    return wasVisible ? { kind: "deleted", instance: change.instance } : null;
  }
  const visible = change.previous === undefined ? filter(change.instance) : wasVisible;
  return visible ? { kind: "deleted", instance: change.instance } : null;
}

/** Fixed-capacity FIFO of changes; the oldest falls out when full. */
class ChangeRing {
  private readonly slots: (Change | undefined)[];
  private start = 0;
  length = 0;

  constructor(readonly capacity: number) {
    this.slots = new Array<Change | undefined>(capacity);
  }

  push(change: Change): void {
    if (this.capacity === 0) return;
    if (this.length < this.capacity) {
      this.slots[(this.start + this.length) % this.capacity] = change;
      this.length++;
    } else {
      this.slots[this.start] = change;
      this.start = (this.start + 1) % this.capacity;
    }
  }

  /** Changes with revision > `revision`, oldest first. */
  *after(revision: number): Generator<Change> {
    for (let i = 0; i < this.length; i++) {
      const change = this.slots[(this.start + i) % this.capacity] as Change;
      if (change.revision > revision) yield change;
    }
  }
}

interface Waiter {
  resolve(result: IteratorResult<WatchEvent, undefined>): void;
  reject(error: unknown): void;
}

class HubWatcher implements Watcher {
  private queue: WatchEvent[] = [];
  private head = 0;
  /** Events from the subscription's snapshot or replay still in the queue; they do not count against the limit. */
  private initialPending = 0;
  private waiters: Waiter[] = [];
  private failure: MvmError | null = null;
  private failureReported = false;
  private done = false;
  private readonly onAbort = () => this.close();

  constructor(
    private readonly hub: WatchHub,
    readonly filter: (i: Instance) => boolean,
    readonly filterHash: string,
    private readonly bufferLimit: number,
    private readonly signal: AbortSignal | undefined,
  ) {
    signal?.addEventListener("abort", this.onAbort, { once: true });
  }

  get ended(): boolean {
    return this.done;
  }

  get buffered(): number {
    return this.queue.length - this.head;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  /** Queues events of the snapshot or replay, exempt from the live limit (they are bounded by state and history). */
  pushInitial(events: WatchEvent[]): void {
    for (const e of events) this.queue.push(e);
    this.initialPending += events.length;
    this.wake();
  }

  /** Queues a live event, cutting the watcher off when its consumer lags by more than the limit. */
  pushLive(event: WatchEvent): void {
    if (this.done) return;
    if (this.buffered - this.initialPending >= this.bufferLimit) {
      this.fail(exhausted(WATCH_OVERFLOW_MESSAGE));
      this.hub.reportCutOff();
      return;
    }
    this.queue.push(event);
    this.wake();
  }

  offerChange(change: Change): void {
    if (this.done) return;
    let body: WatchEventBody | null;
    try {
      body = changeFor(change, this.filter);
    } catch (e) {
      this.fail(new MvmError("internal", `watch filter failed: ${e instanceof Error ? e.message : String(e)}`));
      return;
    }
    if (body !== null) {
      this.pushLive({ revision: change.revision, resumeToken: this.hub.tokenFor(change.revision, this.filterHash, true), event: body });
    }
  }

  heartbeat(): void {
    const revision = this.hub.revision;
    this.pushLive({ revision, resumeToken: this.hub.tokenFor(revision, this.filterHash, true), event: { kind: "heartbeat" } });
  }

  next(): Promise<IteratorResult<WatchEvent, undefined>> {
    if (this.buffered > 0) {
      const event = this.queue[this.head] as WatchEvent;
      this.queue[this.head] = undefined as unknown as WatchEvent;
      this.head++;
      if (this.initialPending > 0) this.initialPending--;
      // Compact once the consumed prefix dominates, so a long-lived watcher's array does not keep growing.
      if (this.head >= 64 && this.head * 2 >= this.queue.length) {
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
      return Promise.resolve({ value: event, done: false });
    }
    if (this.failure !== null && !this.failureReported) {
      this.failureReported = true;
      return Promise.reject(this.failure);
    }
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  return(): Promise<IteratorResult<WatchEvent, undefined>> {
    this.close();
    return Promise.resolve({ value: undefined, done: true });
  }

  close(): void {
    if (this.done) return;
    this.end();
    for (const w of this.waiters.splice(0)) w.resolve({ value: undefined, done: true });
  }

  /** Ends with `error`: buffered events are dropped (the client resumes from its last token) and memory released. */
  fail(error: MvmError): void {
    if (this.done) return;
    this.failure = error;
    this.end();
    const waiters = this.waiters.splice(0);
    if (waiters.length > 0) {
      this.failureReported = true;
      waiters[0]?.reject(error);
      for (const w of waiters.slice(1)) w.resolve({ value: undefined, done: true });
    }
  }

  private end(): void {
    this.done = true;
    this.queue = [];
    this.head = 0;
    this.initialPending = 0;
    this.signal?.removeEventListener("abort", this.onAbort);
    this.hub.forget(this);
  }

  private wake(): void {
    while (this.buffered > 0 && this.waiters.length > 0) {
      const waiter = this.waiters.shift() as Waiter;
      void this.next().then(waiter.resolve, waiter.reject);
    }
  }
}

export class WatchHub implements InstanceEventSink {
  readonly epoch: string;
  private currentRevision = 0;
  private readonly state = new Map<string, Instance>();
  private readonly history: ChangeRing;
  private readonly watchers = new Set<HubWatcher>();
  private readonly bufferLimit: number;
  private readonly observer: WatchHubObserver;

  constructor(options: WatchHubOptions = {}) {
    const historyLimit = options.historyLimit ?? DEFAULT_WATCH_HISTORY_LIMIT;
    const bufferLimit = options.watcherBufferLimit ?? DEFAULT_WATCHER_BUFFER_LIMIT;
    if (!Number.isInteger(historyLimit) || historyLimit < 0) throw new RangeError("historyLimit: must be an integer >= 0");
    if (!Number.isInteger(bufferLimit) || bufferLimit < 1) throw new RangeError("watcherBufferLimit: must be an integer >= 1");
    const epoch = options.epoch ?? randomEpoch();
    if (!EPOCH_PATTERN.test(epoch)) throw new RangeError("epoch: must be 1-64 characters of [a-z0-9]");
    this.epoch = epoch;
    this.history = new ChangeRing(historyLimit);
    this.bufferLimit = bufferLimit;
    this.observer = options.observer ?? {};
  }

  /** Revision of the latest change; 0 before the first. */
  get revision(): number {
    return this.currentRevision;
  }

  get watcherCount(): number {
    return this.watchers.size;
  }

  /** Current records matching `filter`, sorted by tenant/pool/instance. */
  snapshot(filter: (i: Instance) => boolean = () => true): Instance[] {
    const keys = [...this.state.keys()].sort();
    const out: Instance[] = [];
    for (const k of keys) {
      const i = this.state.get(k) as Instance;
      if (filter(i)) out.push(i);
    }
    return out;
  }

  /**
   * Makes the hub's state exactly `instances` (e.g. from the store at agent start). A hub that has seen nothing yet
   * loads them silently at revision 0; otherwise the differences are published as changes, so watchers stay right.
   */
  seed(instances: readonly Instance[]): void {
    if (this.currentRevision === 0 && this.state.size === 0) {
      for (const i of instances) this.state.set(instanceKey(i), i);
      return;
    }
    const incoming = new Map(instances.map((i) => [instanceKey(i), i] as const));
    for (const [key, old] of [...this.state]) {
      if (!incoming.has(key)) this.publish({ kind: "deleted", instance: old });
    }
    for (const [key, i] of incoming) {
      const old = this.state.get(key);
      if (old === undefined || JSON.stringify(old) !== JSON.stringify(i)) this.publish({ kind: "upsert", instance: i });
    }
  }

  publish(event: InstanceEvent): void {
    const key = instanceKey(event.instance);
    const previous = this.state.get(key);
    if (event.kind === "upsert") this.state.set(key, event.instance);
    else this.state.delete(key);
    this.currentRevision++;
    const change: Change = { revision: this.currentRevision, kind: event.kind, instance: event.instance, previous };
    this.history.push(change);
    for (const w of [...this.watchers]) w.offerChange(change);
    const to: InstanceStatus = event.kind === "deleted" ? "destroyed" : event.instance.status;
    if (previous !== undefined && previous.status !== to) this.observer.statusChanged?.(previous.status, to, event.instance);
  }

  /** The current record of the instance at `path` (`tenant/pool/instance`), if the hub knows it. */
  find(path: string): Instance | undefined {
    return this.state.get(path);
  }

  /** Sends a heartbeat to every watcher (the server calls this on a timer). */
  heartbeat(): void {
    for (const w of [...this.watchers]) w.heartbeat();
  }

  watch(options: WatchOptions = {}): Watcher {
    const filter = options.filter ?? (() => true);
    const fh = filterHash(options.filterKey ?? "");
    const watcher = new HubWatcher(this, filter, fh, this.bufferLimit, options.signal);
    if (options.signal?.aborted) {
      watcher.close();
      return watcher;
    }
    let initial: WatchEvent[];
    try {
      initial = this.initialEvents(options.resumeToken ?? "", filter, fh);
    } catch (e) {
      watcher.fail(new MvmError("internal", `watch filter failed: ${e instanceof Error ? e.message : String(e)}`));
      return watcher;
    }
    watcher.pushInitial(initial);
    this.watchers.add(watcher);
    this.observer.watcherCountChanged?.(this.watchers.size);
    return watcher;
  }

  /** Ends every watcher: cleanly, or with `error` (e.g. `unavailable` when the agent shuts down). */
  close(error?: MvmError): void {
    for (const w of [...this.watchers]) {
      if (error === undefined) w.close();
      else w.fail(error);
    }
  }

  /** @internal */
  tokenFor(revision: number, fh: string, complete: boolean): string {
    return `w1.${this.epoch}.${revision}.${fh}.${complete ? "c" : "p"}`;
  }

  /** @internal */
  forget(watcher: HubWatcher): void {
    if (this.watchers.delete(watcher)) this.observer.watcherCountChanged?.(this.watchers.size);
  }

  /** @internal */
  reportCutOff(): void {
    this.observer.watcherCutOff?.();
  }

  private initialEvents(token: string, filter: (i: Instance) => boolean, fh: string): WatchEvent[] {
    if (token === "") return this.snapshotEvents(filter, fh, null);
    const m = TOKEN_PATTERN.exec(token);
    if (m === null) return this.snapshotEvents(filter, fh, "resume token not recognised");
    const [, epoch, revisionText, tokenFh, completeness] = m as unknown as [string, string, string, string, string];
    const revision = Number(revisionText);
    if (epoch !== this.epoch) return this.snapshotEvents(filter, fh, "agent restarted: token from another incarnation");
    if (tokenFh !== fh) return this.snapshotEvents(filter, fh, "token was issued for a different filter");
    if (completeness === "p") return this.snapshotEvents(filter, fh, "the previous snapshot was not completed");
    if (revision > this.currentRevision) return this.snapshotEvents(filter, fh, "token is ahead of this agent's history");
    // History holds revisions (current - length, current]; resuming needs every change after `revision`.
    if (revision < this.currentRevision - this.history.length) {
      return this.snapshotEvents(filter, fh, "token older than history");
    }
    const events: WatchEvent[] = [];
    for (const change of this.history.after(revision)) {
      const body = changeFor(change, filter);
      if (body !== null) events.push({ revision: change.revision, resumeToken: this.tokenFor(change.revision, fh, true), event: body });
    }
    const instanceCount = this.snapshot(filter).length;
    events.push(this.marker(instanceCount, fh));
    return events;
  }

  private snapshotEvents(filter: (i: Instance) => boolean, fh: string, resetReason: string | null): WatchEvent[] {
    const revision = this.currentRevision;
    const partial = this.tokenFor(revision, fh, false);
    const events: WatchEvent[] = [];
    if (resetReason !== null) events.push({ revision, resumeToken: partial, event: { kind: "snapshot_reset", reason: resetReason } });
    const instances = this.snapshot(filter);
    for (const instance of instances) events.push({ revision, resumeToken: partial, event: { kind: "upsert", instance } });
    events.push(this.marker(instances.length, fh));
    return events;
  }

  private marker(instanceCount: number, fh: string): WatchEvent {
    const revision = this.currentRevision;
    return { revision, resumeToken: this.tokenFor(revision, fh, true), event: { kind: "initial_state_complete", instanceCount } };
  }
}
