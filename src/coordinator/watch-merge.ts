// Merges the WatchInstances streams of many nodes into one fleet view (SPEC §10.1), tolerating nodes that drop out
// and come back.
//
// Per node it keeps the confirmed view (the instances as of the last complete snapshot plus live changes), the
// resume token of the last event applied, and the last revision applied. A reconnect resumes from that token: the
// agent replays what was missed, or, when it cannot (it restarted, or the token fell out of its history), sends a
// fresh snapshot. Snapshots are collected aside and compared with the confirmed view when their marker arrives, so
// the merged stream carries only real differences: a node that restarts with the same instances adds no event, an
// instance created while the coordinator was cut off appears once, one destroyed meanwhile is reported deleted.
// Live events at or below the last applied revision (a replay overlapping what was seen) are dropped.

import type { Instance } from "../core/model.js";
import type { WatchEvent } from "../core/watch-hub.js";

export type NodeHealth = "connecting" | "up" | "down";

export type FleetWatchBody =
  | { kind: "upsert"; node: string; instance: Instance; nodeRevision: number }
  | { kind: "deleted"; node: string; instance: Instance; nodeRevision: number }
  | { kind: "node_status"; node: string; health: NodeHealth; reason: string }
  /** Every node has sent its first snapshot or been found down; `instanceCount` is the merged view's size then. */
  | { kind: "initial_state_complete"; instanceCount: number };

export interface NodeWatchStatus {
  node: string;
  health: NodeHealth;
  reason: string;
  /** Resume token of the last event applied ("" before the first complete snapshot). */
  resumeToken: string;
  instanceCount: number;
  /** Times the node's stream was lost. */
  disconnects: number;
}

interface NodeState {
  view: Map<string, Instance>;
  /** A snapshot being received; null while live. */
  snapshot: Map<string, Instance> | null;
  token: string;
  lastRevision: number;
  health: NodeHealth;
  reason: string;
  /** Whether the node has counted towards the fleet's initial_state_complete. */
  settled: boolean;
  disconnects: number;
}

function keyOf(i: Instance): string {
  return `${i.tenantId}/${i.poolId}/${i.instanceId}`;
}

/** Records compared as data; the key order of records built by one converter is stable. */
function sameRecord(a: Instance, b: Instance): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export class FleetWatchMerger {
  private readonly nodes = new Map<string, NodeState>();
  private initialSent = false;

  /** `emit` receives every merged event, synchronously, in order. */
  constructor(nodeNames: readonly string[], private readonly emit: (event: FleetWatchBody) => void) {
    for (const name of nodeNames) {
      this.nodes.set(name, { view: new Map(), snapshot: null, token: "", lastRevision: 0, health: "connecting", reason: "", settled: false, disconnects: 0 });
    }
  }

  private state(node: string): NodeState {
    const s = this.nodes.get(node);
    if (!s) throw new RangeError(`unknown node ${JSON.stringify(node)}`);
    return s;
  }

  /** A stream to `node` is being opened; returns the resume token to open it with ("" asks for a snapshot). */
  connecting(node: string): string {
    const s = this.state(node);
    s.snapshot = s.token === "" ? new Map() : null;
    return s.token;
  }

  /** Applies one event of `node`'s stream. */
  receive(node: string, event: WatchEvent): void {
    const s = this.state(node);
    const body = event.event;
    switch (body.kind) {
      case "snapshot_reset":
        s.snapshot = new Map();
        return;
      case "upsert":
        if (s.snapshot !== null) {
          s.snapshot.set(keyOf(body.instance), body.instance);
          return;
        }
        if (event.revision <= s.lastRevision) return;
        this.advance(s, event);
        this.applyUpsert(node, s, body.instance, event.revision);
        return;
      case "deleted":
        if (s.snapshot !== null) {
          s.snapshot.delete(keyOf(body.instance));
          return;
        }
        if (event.revision <= s.lastRevision) return;
        this.advance(s, event);
        this.applyDelete(node, s, body.instance, event.revision);
        return;
      case "initial_state_complete":
        if (s.snapshot !== null) this.adoptSnapshot(node, s, s.snapshot, event.revision);
        s.snapshot = null;
        this.advance(s, event);
        this.markUp(node, s);
        return;
      case "heartbeat":
        // A heartbeat inside a snapshot proves nothing about the view; outside one it proves the stream is live.
        if (s.snapshot !== null) return;
        if (event.revision >= s.lastRevision) this.advance(s, event);
        this.markUp(node, s);
        return;
    }
  }

  /** `node`'s stream ended or could not be opened. A half-received snapshot is dropped: the next one starts over. */
  disconnected(node: string, reason: string): void {
    const s = this.state(node);
    s.disconnects++;
    s.snapshot = null;
    if (s.health !== "down") {
      s.health = "down";
      s.reason = reason;
      this.emit({ kind: "node_status", node, health: "down", reason });
    } else s.reason = reason;
    if (!s.settled) {
      s.settled = true;
      this.maybeInitialComplete();
    }
  }

  status(): NodeWatchStatus[] {
    return [...this.nodes].map(([node, s]) => ({ node, health: s.health, reason: s.reason, resumeToken: s.token, instanceCount: s.view.size, disconnects: s.disconnects }));
  }

  /** The merged view now: every node's confirmed instances. */
  instances(): Array<{ node: string; instance: Instance }> {
    const out: Array<{ node: string; instance: Instance }> = [];
    for (const [node, s] of this.nodes) for (const instance of s.view.values()) out.push({ node, instance });
    return out;
  }

  /** True once initial_state_complete was emitted. */
  get initialStateComplete(): boolean {
    return this.initialSent;
  }

  private advance(s: NodeState, event: WatchEvent): void {
    s.lastRevision = event.revision;
    if (event.resumeToken !== "") s.token = event.resumeToken;
  }

  private applyUpsert(node: string, s: NodeState, instance: Instance, revision: number): void {
    const key = keyOf(instance);
    const known = s.view.get(key);
    if (known && sameRecord(known, instance)) return;
    s.view.set(key, instance);
    this.emit({ kind: "upsert", node, instance, nodeRevision: revision });
  }

  private applyDelete(node: string, s: NodeState, instance: Instance, revision: number): void {
    const key = keyOf(instance);
    if (!s.view.delete(key)) return;
    this.emit({ kind: "deleted", node, instance, nodeRevision: revision });
  }

  private adoptSnapshot(node: string, s: NodeState, snapshot: Map<string, Instance>, revision: number): void {
    for (const [key, known] of s.view) if (!snapshot.has(key)) this.applyDelete(node, s, known, revision);
    for (const instance of snapshot.values()) this.applyUpsert(node, s, instance, revision);
  }

  private markUp(node: string, s: NodeState): void {
    if (s.health !== "up") {
      s.health = "up";
      s.reason = "";
      this.emit({ kind: "node_status", node, health: "up", reason: "" });
    }
    if (!s.settled) {
      s.settled = true;
      this.maybeInitialComplete();
    }
  }

  private maybeInitialComplete(): void {
    if (this.initialSent) return;
    for (const s of this.nodes.values()) if (!s.settled) return;
    this.initialSent = true;
    let count = 0;
    for (const s of this.nodes.values()) count += s.view.size;
    this.emit({ kind: "initial_state_complete", instanceCount: count });
  }
}
