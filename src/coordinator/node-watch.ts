// Keeps one WatchInstances stream open per node and feeds the merger (SPEC §10.1): a stream that ends, fails or goes
// silent for longer than three heartbeats is reported down and reopened with backoff, resuming from the last token
// the merger applied; the other nodes' streams carry on untouched.

import { setMaxListeners } from "node:events";
import { createClient } from "@connectrpc/connect";
import type { WatchEvent } from "../core/watch-hub.js";
import { instanceFromProto } from "../api/convert/instance.js";
import { InstanceService, type WatchInstancesResponse } from "../../gen/mvm/v1/instance_service_pb.js";
import type { FleetNode } from "./fleet-file.js";
import { classifyRpcFailure, type NodeConnections } from "./node-connections.js";
import { backoffDelayMs, type RetryPolicy } from "./retry-policy.js";
import type { FleetWatchMerger } from "./watch-merge.js";

export interface FleetWatchOptions {
  nodes: readonly FleetNode[];
  connections: NodeConnections;
  merger: FleetWatchMerger;
  /** Aborting closes every stream and ends watchFleet. */
  signal: AbortSignal;
  /** Only this tenant's instances (the agent filters). Default: every instance the coordinator may see. */
  tenantId?: string;
  /** Heartbeat interval asked of each agent, ms. Default 5000. */
  heartbeatIntervalMs?: number;
  /** Backoff between reconnects; maxAttempts is ignored (a node is retried for as long as the watch runs). */
  reconnect?: Omit<RetryPolicy, "maxAttempts">;
}

export const DEFAULT_RECONNECT: Omit<RetryPolicy, "maxAttempts"> = { initialDelayMs: 200, maxDelayMs: 5_000, multiplier: 2, jitter: 0.2 };

/** One agent stream message in the watch hub's terms; null for an event kind this build does not know. */
export function watchEventFromProto(message: WatchInstancesResponse): WatchEvent | null {
  const base = { revision: Number(message.revision), resumeToken: message.resumeToken };
  const e = message.event;
  switch (e.case) {
    case "upsert":
      return { ...base, event: { kind: "upsert", instance: instanceFromProto(e.value) } };
    case "deleted":
      return e.value.lastKnown ? { ...base, event: { kind: "deleted", instance: instanceFromProto(e.value.lastKnown) } } : null;
    case "initialStateComplete":
      return { ...base, event: { kind: "initial_state_complete", instanceCount: e.value.instanceCount } };
    case "heartbeat":
      return { ...base, event: { kind: "heartbeat" } };
    case "snapshotReset":
      return { ...base, event: { kind: "snapshot_reset", reason: e.value.reason } };
    default:
      return null;
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

async function watchNode(node: FleetNode, options: FleetWatchOptions): Promise<void> {
  const { merger, signal } = options;
  const heartbeatIntervalMs = options.heartbeatIntervalMs ?? 5_000;
  const reconnect = { ...(options.reconnect ?? DEFAULT_RECONNECT), maxAttempts: Number.POSITIVE_INFINITY };
  let failures = 0;
  while (!signal.aborted) {
    const resumeToken = merger.connecting(node.name);
    const stream = new AbortController();
    const onStop = () => stream.abort();
    signal.addEventListener("abort", onStop, { once: true });
    let stalled = false;
    let stallTimer: NodeJS.Timeout | undefined;
    const armStallTimer = () => {
      clearTimeout(stallTimer);
      stallTimer = setTimeout(() => {
        stalled = true;
        stream.abort();
      }, heartbeatIntervalMs * 3);
    };
    let reason = "the agent closed the stream";
    try {
      armStallTimer();
      const client = createClient(InstanceService, options.connections.transport(node));
      const request = { filter: { tenantId: options.tenantId ?? "" }, resumeToken, heartbeatIntervalMs };
      for await (const message of client.watchInstances(request, { signal: stream.signal })) {
        armStallTimer();
        const event = watchEventFromProto(message);
        if (event === null) continue;
        merger.receive(node.name, event);
        if (event.event.kind === "initial_state_complete") failures = 0;
      }
    } catch (e) {
      reason = stalled ? `no message for ${heartbeatIntervalMs * 3} ms (three heartbeats)` : classifyRpcFailure(e).message;
    } finally {
      clearTimeout(stallTimer);
      signal.removeEventListener("abort", onStop);
    }
    if (signal.aborted) return;
    // A silent connection may be half-open: drop the session so the next attempt dials afresh.
    if (stalled) options.connections.reset(node);
    merger.disconnected(node.name, reason);
    failures++;
    await sleep(backoffDelayMs(failures, reconnect), signal);
  }
}

/** Watches every node until `signal` aborts; never rejects for a node's failure. */
export async function watchFleet(options: FleetWatchOptions): Promise<void> {
  // One listener per node's stream and backoff wait: not a leak.
  setMaxListeners(options.nodes.length * 2 + 10, options.signal);
  await Promise.all(options.nodes.map((node) => watchNode(node, options)));
}
