// `grpc.health.v1.Health` for a Connect router: Check, Watch and List over a HealthSource, which says how each
// service is doing. The empty service name stands for the server as a whole (gRPC's convention).

import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponse_ServingStatus,
  HealthCheckResponseSchema,
  HealthListResponseSchema,
} from "../../../gen/grpc/health/v1/health_pb.js";

/** A service's health as gRPC names it. SERVICE_UNKNOWN: no such service (Check answers NotFound). */
export type ServingStatus = "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";

export interface HealthSource {
  /** The status of `service` now; "" is the whole server. */
  check(service: string): ServingStatus;
  /**
   * The status of `service` now, then each time it changes, until `signal` aborts. Default: `check` polled every
   * `HealthOptions.watchPollMs`.
   */
  watch?(service: string, signal: AbortSignal): AsyncIterable<ServingStatus>;
  /** The names List reports on. Default: List answers Unimplemented. */
  services?(): Iterable<string>;
}

export interface HealthOptions {
  /** How often Watch re-checks a source that has no `watch` of its own, in ms. Default 1000. */
  watchPollMs?: number;
  /**
   * Aborted when the server shuts down: open Watch streams send the last status (NOT_SERVING after
   * HealthStatusBoard.shutdown()) and end with Unavailable, which tells clients to retry elsewhere. Default none.
   */
  shutdownSignal?: AbortSignal;
}

const DEFAULT_WATCH_POLL_MS = 1000;

const WIRE_STATUS: Record<ServingStatus, HealthCheckResponse_ServingStatus> = {
  SERVING: HealthCheckResponse_ServingStatus.SERVING,
  NOT_SERVING: HealthCheckResponse_ServingStatus.NOT_SERVING,
  SERVICE_UNKNOWN: HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN,
};

async function* pollStatus(
  source: HealthSource,
  service: string,
  intervalMs: number,
  signal: AbortSignal,
): AsyncGenerator<ServingStatus> {
  let last: ServingStatus | undefined;
  while (!signal.aborted) {
    const current = source.check(service);
    if (current !== last) {
      last = current;
      yield current;
    }
    try {
      await sleep(intervalMs, undefined, { signal });
    } catch {
      // Aborted: one last look, so a status set just before a shutdown still goes out.
      const final = source.check(service);
      if (final !== last) yield final;
      return;
    }
  }
}

/** Registers `grpc.health.v1.Health` on `router`, answering from `source`. */
export function registerHealth(router: ConnectRouter, source: HealthSource, options: HealthOptions = {}): void {
  const pollMs = options.watchPollMs ?? DEFAULT_WATCH_POLL_MS;
  router.service(Health, {
    check(request) {
      const status = source.check(request.service);
      if (status === "SERVICE_UNKNOWN") {
        throw new ConnectError(`service: no health status for service "${request.service}"`, Code.NotFound);
      }
      return create(HealthCheckResponseSchema, { status: WIRE_STATUS[status] });
    },

    async *watch(request, context) {
      const shutdown = options.shutdownSignal;
      const signal = shutdown ? AbortSignal.any([context.signal, shutdown]) : context.signal;
      const updates = source.watch?.(request.service, signal) ?? pollStatus(source, request.service, pollMs, signal);
      for await (const status of updates) {
        yield create(HealthCheckResponseSchema, { status: WIRE_STATUS[status] });
      }
      if (shutdown?.aborted) throw new ConnectError("server shutting down", Code.Unavailable);
    },

    list() {
      if (source.services === undefined) {
        throw new ConnectError("list: this server does not enumerate its services", Code.Unimplemented);
      }
      const statuses: Record<string, { status: HealthCheckResponse_ServingStatus }> = {};
      for (const name of source.services()) statuses[name] = { status: WIRE_STATUS[source.check(name)] };
      return create(HealthListResponseSchema, { statuses });
    },
  });
}
