// `mvm instance watch` (SPEC §8.1 WatchInstances): the agent's live instance stream, one line per event, until
// Ctrl-C. It needs a running agent (local socket or --node): only the agent sees every change as it happens.

import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import type { Argv } from "yargs";
import { invalid, MvmError, type FieldViolation } from "../../core/errors.js";
import { INSTANCE_STATUSES, type Instance, type InstanceStatus } from "../../core/model.js";
import { instanceStatusToProto } from "../../api/convert/enums.js";
import { instanceFromProto } from "../../api/convert/instance.js";
import { timestampToIso } from "../../api/convert/timestamps.js";
import { InstanceService, WatchInstancesRequestSchema, type WatchInstancesResponse } from "../../../gen/mvm/v1/instance_service_pb.js";
import type { CliContext, GlobalOptions } from "../context.js";
import type { OutputFormat } from "../output.js";
import { connectToAgent, withAgentConnectionOptions } from "../remote/agent-connection.js";
import { mvmErrorFromRpc } from "../remote/rpc-error.js";
import { stringify as toYaml } from "yaml";

export type WatchEventKind = "upsert" | "deleted" | "initial_state_complete" | "heartbeat" | "snapshot_reset";

/** One event as printed with `-o json` (one object per line) or `-o yaml` (one document each). */
export interface WatchLine {
  /** When the CLI received it (the agent's clock for heartbeats). */
  time: string;
  revision: number;
  resumeToken: string;
  event: WatchEventKind;
  /** The full record for upserts, the last known one for deletions. */
  instance?: Instance;
  /** `tenant/pool/instance`, for deletions whose last record is unknown. */
  instancePath?: string;
  /** initial_state_complete: how many instances the snapshot held. */
  instanceCount?: number;
  /** snapshot_reset: why the resume token was not honoured. */
  reason?: string;
}

export function watchLineOf(message: WatchInstancesResponse, receivedAt: Date): WatchLine | null {
  const base = { time: receivedAt.toISOString(), revision: Number(message.revision), resumeToken: message.resumeToken };
  const e = message.event;
  switch (e.case) {
    case "upsert":
      return { ...base, event: "upsert", instance: instanceFromProto(e.value) };
    case "deleted": {
      const ref = e.value.instance;
      return {
        ...base,
        event: "deleted",
        ...(e.value.lastKnown ? { instance: instanceFromProto(e.value.lastKnown) } : {}),
        ...(ref ? { instancePath: `${ref.tenantId}/${ref.poolId}/${ref.instanceId}` } : {}),
      };
    }
    case "initialStateComplete":
      return { ...base, event: "initial_state_complete", instanceCount: e.value.instanceCount };
    case "heartbeat":
      return { ...base, event: "heartbeat", ...(e.value.at ? { time: timestampToIso(e.value.at) } : {}) };
    case "snapshotReset":
      return { ...base, event: "snapshot_reset", reason: e.value.reason };
    default:
      return null;
  }
}

const TABLE_WIDTHS = [24, 8, 22, 34, 10] as const;
export const WATCH_TABLE_HEADER = row(["TIME", "REVISION", "EVENT", "INSTANCE", "STATUS", "IP"]);

function row(cells: readonly string[]): string {
  return `${cells.map((c, i) => (i < TABLE_WIDTHS.length ? c.padEnd(TABLE_WIDTHS[i] as number) : c)).join(" ").trimEnd()}\n`;
}

/** The text for one event; heartbeats print nothing in a table (they only prove the stream is alive). */
export function renderWatchLine(line: WatchLine, format: OutputFormat): string {
  if (format === "json") return `${JSON.stringify(line)}\n`;
  if (format === "yaml") return `---\n${toYaml(line, { lineWidth: 0 })}`;
  if (line.event === "heartbeat") return "";
  const i = line.instance;
  const path = i ? `${i.tenantId}/${i.poolId}/${i.instanceId}` : (line.instancePath ?? "-");
  const detail =
    line.event === "initial_state_complete" ? [`(${line.instanceCount} instances)`, ""] : line.event === "snapshot_reset" ? [line.reason ?? "", ""] : [i?.status ?? "-", i ? `${i.net.guestIp}/${i.net.prefixLen}` : "-"];
  const instanceCell = line.event === "initial_state_complete" || line.event === "snapshot_reset" ? "-" : path;
  return row([line.time, String(line.revision), line.event, instanceCell, ...detail]);
}

export function parseStatuses(value: string | undefined, violations: FieldViolation[]): InstanceStatus[] {
  if (value === undefined || value === "") return [];
  const out: InstanceStatus[] = [];
  for (const s of value.split(",").map((x) => x.trim())) {
    if ((INSTANCE_STATUSES as readonly string[]).includes(s)) out.push(s as InstanceStatus);
    else violations.push({ field: "--status", rule: `must be a comma-separated list of ${INSTANCE_STATUSES.join(", ")} (got ${JSON.stringify(s)})` });
  }
  return out;
}

/** Adds `watch` to the `instance` command. `env` supplies $MVM_CA, $MVM_CERT, $MVM_KEY and the data root's inputs. */
export function registerInstanceWatchCommand<T extends GlobalOptions>(y: Argv<T>, ctx: CliContext, env: NodeJS.ProcessEnv): Argv<T> {
  return y.command(
    "watch",
    "follow instance changes live from the agent (local socket, or --node) until Ctrl-C",
    (c) =>
      withAgentConnectionOptions(c)
        .option("tenant", { type: "string", describe: "only this tenant" })
        .option("pool", { type: "string", describe: "only this pool (needs --tenant)" })
        .option("status", { type: "string", describe: `only these statuses, comma-separated (${INSTANCE_STATUSES.join(", ")})` })
        .option("resume-token", { type: "string", describe: "resume after the event that carried this token" }),
    async (args) => {
      const violations: FieldViolation[] = [];
      const statuses = parseStatuses(args.status, violations);
      if (args.pool !== undefined && args.tenant === undefined) violations.push({ field: "--pool", rule: "requires --tenant" });
      if (violations.length > 0) throw invalid(violations);

      const connection = await connectToAgent(args, env);
      const stop = new AbortController();
      const onSignal = () => stop.abort();
      let started = false;
      process.once("SIGINT", onSignal);
      try {
        const request = create(WatchInstancesRequestSchema, {
          filter: { tenantId: args.tenant ?? "", poolId: args.pool ?? "", statuses: statuses.map(instanceStatusToProto) },
          resumeToken: args["resume-token"] ?? "",
        });
        const stream = createClient(InstanceService, connection.transport).watchInstances(request, { signal: stop.signal });
        if (args.output === "table") ctx.write(WATCH_TABLE_HEADER);
        for await (const message of stream) {
          started = true;
          const line = watchLineOf(message, new Date());
          if (line !== null) ctx.write(renderWatchLine(line, args.output));
        }
        if (stop.signal.aborted) return;
        throw new MvmError("unavailable", `the agent at ${connection.target} closed the stream`);
      } catch (e) {
        if (stop.signal.aborted) return;
        const error = mvmErrorFromRpc(e, connection.target);
        if (started && error instanceof MvmError) throw new MvmError(error.kind, `watch ended: ${error.message}`, error.violations, { cause: e });
        throw error;
      } finally {
        process.off("SIGINT", onSignal);
        connection.close();
      }
    },
  );
}
