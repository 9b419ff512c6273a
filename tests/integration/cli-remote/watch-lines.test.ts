// The pure parts of `mvm instance watch` and the agent connection: event lines, flag parsing, RPC errors.

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { WatchInstancesResponseSchema } from "../../../gen/mvm/v1/instance_service_pb.js";
import { parseStatuses, renderWatchLine, watchLineOf, WATCH_TABLE_HEADER } from "../../../src/cli/commands/watch.js";
import { connectToAgent, parseNodeAddress } from "../../../src/cli/remote/agent-connection.js";
import { mvmErrorFromRpc } from "../../../src/cli/remote/rpc-error.js";
import { MvmError, type FieldViolation } from "../../../src/core/errors.js";

const at = new Date("2025-01-02T03:04:05.000Z");

describe("watch lines", () => {
  it("renders the marker and a deletion as JSON and as table rows under the header", () => {
    const marker = watchLineOf(create(WatchInstancesResponseSchema, { revision: 7n, resumeToken: "tok", event: { case: "initialStateComplete", value: { instanceCount: 3 } } }), at)!;
    expect(JSON.parse(renderWatchLine(marker, "json"))).toEqual({ time: at.toISOString(), revision: 7, resumeToken: "tok", event: "initial_state_complete", instanceCount: 3 });
    expect(renderWatchLine(marker, "table")).toMatch(/^2025-01-02T03:04:05\.000Z\s+7\s+initial_state_complete\s+-\s+\(3 instances\)\n$/);
    const gone = watchLineOf(
      create(WatchInstancesResponseSchema, { revision: 9n, event: { case: "deleted", value: { instance: { tenantId: "a", poolId: "p", instanceId: "i-0000000a" } } } }),
      at,
    )!;
    expect(renderWatchLine(gone, "table")).toContain("a/p/i-0000000a");
    expect(WATCH_TABLE_HEADER.startsWith("TIME")).toBe(true);
    const beat = watchLineOf(create(WatchInstancesResponseSchema, { revision: 9n, event: { case: "heartbeat", value: {} } }), at)!;
    expect(renderWatchLine(beat, "table")).toBe("");
    expect(JSON.parse(renderWatchLine(beat, "json")).event).toBe("heartbeat");
  });

  it("parses --status lists and names the bad value", () => {
    const v: FieldViolation[] = [];
    expect(parseStatuses("running,warm", v)).toEqual(["running", "warm"]);
    expect(parseStatuses("runing", v)).toEqual([]);
    expect(v).toHaveLength(1);
    expect(v[0]).toMatchObject({ field: "--status" });
    expect(v[0]!.rule).toContain('"runing"');
  });
});

describe("agent connection", () => {
  it("reads --node as HOST:PORT or [IPV6]:PORT and refuses anything else", () => {
    expect(parseNodeAddress("node-1.example:7443")).toEqual({ host: "node-1.example", port: 7443 });
    expect(parseNodeAddress("[::1]:7443")).toEqual({ host: "::1", port: 7443 });
    for (const bad of ["7443", ":7443", "host:0", "host:70000", "[zz]:1"]) expect(() => parseNodeAddress(bad), bad).toThrow(/--node: must be HOST:PORT/);
  });

  it("refuses certificate flags without --node", async () => {
    await expect(connectToAgent({ ca: "/x" }, {})).rejects.toThrow(/--node: is required when --ca/);
  });

  it("maps RPC statuses to error kinds and keeps field violations", () => {
    const denied = mvmErrorFromRpc(new ConnectError("may not act on tenant", Code.PermissionDenied), "h:1") as MvmError;
    expect(denied.kind).toBe("permission_denied");
    const gone = mvmErrorFromRpc(new ConnectError("shutting down", Code.Unavailable), "h:1") as MvmError;
    expect(gone).toMatchObject({ kind: "unavailable", message: "agent at h:1: shutting down" });
    const failed = new ConnectError("x", Code.Internal, undefined, undefined, Object.assign(new Error("self-signed certificate"), { code: "SELF_SIGNED_CERT_IN_CHAIN" }));
    expect((mvmErrorFromRpc(failed, "h:1") as MvmError).message).toBe("agent at h:1: connection failed: self-signed certificate (SELF_SIGNED_CERT_IN_CHAIN)");
    const plain = new Error("not an rpc");
    expect(mvmErrorFromRpc(plain, "h:1")).toBe(plain);
  });
});
