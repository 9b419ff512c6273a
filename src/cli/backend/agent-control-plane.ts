// The control plane behind a node agent: each operation is the RPC of the same meaning, its answer converted back to
// the core record and its refusal back to the MvmError of the same kind (so the exit code is the one an in-process
// run gives). Inputs the wire cannot carry (a negative count for a uint32, an unknown enum name) are refused here
// with the use cases' own rules, before anything is sent.

import { createClient, type Client } from "@connectrpc/connect";
import type { BuildProgressEvent, TenantNetworkReport } from "../../core/data-plane-ports.js";
import { invalid, isMvmError, MvmError, type FieldViolation } from "../../core/errors.js";
import {
  COMPRESSIONS,
  HYPERVISORS,
  INSTANCE_STATUSES,
  SECCOMP_POLICIES,
  type DesiredCounts,
  type Instance,
  type TenantQuota,
} from "../../core/model.js";
import type { AuditEntry } from "../../core/observability-ports.js";
import type { InstanceKey } from "../../core/use-cases/instances.js";
import { DEFAULT_IMAGE, DEFAULT_RESOURCES, type PoolKey, type PoolSpecInput } from "../../core/use-cases/pools.js";
import type { TenantNetworkInput } from "../../core/use-cases/tenants.js";
import {
  desiredCountsViolations,
  enumViolations,
  integerViolations,
  quotaViolations,
  resourcesViolations,
  sleepPolicyViolations,
  toSnakeCase,
} from "../../core/validation.js";
import { auditEntryFromProto } from "../../api/convert/audit.js";
import { buildRevisionFromProto } from "../../api/convert/build.js";
import { compressionToProto, instanceStatusToProto } from "../../api/convert/enums.js";
import { garbageItemFromProto } from "../../api/convert/garbage.js";
import { instanceFromProto } from "../../api/convert/instance.js";
import { poolFromProto, poolSpecInputToProto } from "../../api/convert/pool.js";
import { tenantFromProto } from "../../api/convert/tenant.js";
import { FsAuditLog } from "../../runtime/audit/fs-audit-log.js";
import { AgentService } from "../../../gen/mvm/v1/agent_service_pb.js";
import { InstanceService, LogSource } from "../../../gen/mvm/v1/instance_service_pb.js";
import { NetworkCheckKind, type NetworkCheck as ProtoNetworkCheck } from "../../../gen/mvm/v1/node_pb.js";
import { NodeService } from "../../../gen/mvm/v1/node_service_pb.js";
import { Hypervisor } from "../../../gen/mvm/v1/common_pb.js";
import { BuildPhase, PoolService } from "../../../gen/mvm/v1/pool_service_pb.js";
import { TenantService } from "../../../gen/mvm/v1/tenant_service_pb.js";
import type { AgentConnection } from "../remote/agent-connection.js";
import { mvmErrorFromRpc } from "../remote/rpc-error.js";
import type { ControlPlaneClient } from "./control-plane-client.js";

const UINT32_MAX = 0xffff_ffff;
const PAGE_SIZE = 1000;
/** The largest TailAudit limit, WatchAudit backlog and StreamInstanceLogs tail the contract allows. */
const MAX_AUDIT_PAGE = 1000;
const MAX_LOG_TAIL_LINES = 10_000;

/** The request messages nest the use cases' fields (`spec.resources.vcpus`, `pool.tenant_id`); the CLI names them bare. */
function bareField(field: string): string {
  return field.replace(/^(spec|pool|instance)\./, "");
}

/** The RPC's refusal as the MvmError an in-process run raises: same kind, and for bad input the same field names. */
function domainError(error: unknown, target: string): unknown {
  const mapped = mvmErrorFromRpc(error, target);
  if (isMvmError(mapped) && mapped.kind === "invalid" && mapped.violations.length > 0) {
    const renamed = invalid(mapped.violations.map((v) => ({ field: bareField(v.field), rule: v.rule })));
    return new MvmError("invalid", renamed.message, renamed.violations, { cause: error });
  }
  return mapped;
}

function refuse(violations: FieldViolation[]): void {
  if (violations.length > 0) throw invalid(violations);
}

function specViolations(spec: PoolSpecInput): FieldViolation[] {
  return [
    ...(spec.resources === undefined ? [] : resourcesViolations(spec.resources, "resources")),
    ...(spec.desiredCounts === undefined ? [] : desiredCountsViolations(spec.desiredCounts, "desired_counts")),
    ...(spec.hypervisor === undefined ? [] : enumViolations(spec.hypervisor, HYPERVISORS, "hypervisor")),
    ...(spec.seccompPolicy === undefined ? [] : enumViolations(spec.seccompPolicy, SECCOMP_POLICIES, "seccomp_policy")),
    ...(spec.snapshotCompression === undefined ? [] : enumViolations(spec.snapshotCompression, COMPRESSIONS, "snapshot_compression")),
    ...(spec.sleepPolicy === undefined ? [] : sleepPolicyViolations(spec.sleepPolicy, "sleep_policy")),
  ];
}

function networkViolations(network: TenantNetworkInput | undefined): FieldViolation[] {
  return network?.netId === undefined ? [] : integerViolations(network.netId, 0, UINT32_MAX, "network.net_id");
}

/** A check as the Network port names it; a kind the contract has no name for carries its name in the detail. */
function networkCheckOf(c: ProtoNetworkCheck): { check: string; ok: boolean; detail: string } {
  if (c.kind === NetworkCheckKind.UNSPECIFIED) {
    const at = c.detail.indexOf(": ");
    if (at > 0) return { check: c.detail.slice(0, at), ok: c.ok, detail: c.detail.slice(at + 2) };
  }
  return { check: (NetworkCheckKind[c.kind] ?? "unspecified").toLowerCase(), ok: c.ok, detail: c.detail };
}

function instanceRef(key: InstanceKey) {
  return { tenantId: key.tenantId, poolId: key.poolId, instanceId: key.instanceId };
}

export function agentControlPlane(connection: AgentConnection): ControlPlaneClient {
  const { transport, target } = connection;
  const tenants: Client<typeof TenantService> = createClient(TenantService, transport);
  const pools: Client<typeof PoolService> = createClient(PoolService, transport);
  const instances: Client<typeof InstanceService> = createClient(InstanceService, transport);
  const node: Client<typeof NodeService> = createClient(NodeService, transport);
  const agent: Client<typeof AgentService> = createClient(AgentService, transport);

  async function rpc<T>(call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (e) {
      throw domainError(e, target);
    }
  }

  async function* rpcStream<T>(open: () => AsyncIterable<T>): AsyncGenerator<T> {
    try {
      yield* open();
    } catch (e) {
      throw domainError(e, target);
    }
  }

  async function getTenantRecord(tenantId: string) {
    const res = await rpc(() => tenants.getTenant({ tenantId }));
    if (!res.tenant) throw new MvmError("internal", `agent at ${target}: GetTenant answered without a tenant`);
    return tenantFromProto(res.tenant);
  }

  async function getPoolRecord(key: PoolKey) {
    const res = await rpc(() => pools.getPool({ pool: key }));
    if (!res.pool) throw new MvmError("internal", `agent at ${target}: GetPool answered without a pool`);
    return poolFromProto(res.pool);
  }

  function instanceOf(res: { instance?: Parameters<typeof instanceFromProto>[0] }, rpcName: string): Instance {
    if (!res.instance) throw new MvmError("internal", `agent at ${target}: ${rpcName} answered without an instance`);
    return instanceFromProto(res.instance);
  }

  function poolOf(res: { pool?: Parameters<typeof poolFromProto>[0] }, rpcName: string) {
    if (!res.pool) throw new MvmError("internal", `agent at ${target}: ${rpcName} answered without a pool`);
    return poolFromProto(res.pool);
  }

  async function getInstanceRecord(key: InstanceKey): Promise<Instance> {
    return instanceOf(await rpc(() => instances.getInstance({ instance: instanceRef(key) })), "GetInstance");
  }

  async function dataRoot(): Promise<string> {
    const res = await rpc(() => node.getNodeInfo({}));
    return res.node?.dataRoot ?? "";
  }

  return {
    kind: "agent",
    target,

    async createTenant(input) {
      refuse([...quotaViolations(input.quotas ?? {}, "quotas"), ...networkViolations(input.network)]);
      const given = input.network !== undefined && (input.network.netId !== undefined || input.network.ipv4Subnet !== undefined);
      const res = await rpc(() =>
        tenants.createTenant({
          tenantId: input.tenantId,
          quotas: { ...input.quotas },
          // The contract's net_id is always set; only a given network is sent, so an absent one is allocated.
          network: given ? { netId: input.network?.netId ?? 0, ipv4Subnet: input.network?.ipv4Subnet ?? "" } : undefined,
          labels: { ...input.labels },
        }),
      );
      if (!res.tenant) throw new MvmError("internal", `agent at ${target}: CreateTenant answered without a tenant`);
      return tenantFromProto(res.tenant);
    },

    getTenant: (tenantId) => getTenantRecord(tenantId),

    async listTenants() {
      const out = [];
      let pageToken = "";
      do {
        const res = await rpc(() => tenants.listTenants({ pageSize: PAGE_SIZE, pageToken }));
        out.push(...res.tenants.map(tenantFromProto));
        pageToken = res.nextPageToken;
      } while (pageToken !== "");
      return out;
    },

    async updateTenant(input) {
      refuse([...quotaViolations(input.quotas ?? {}, "quotas"), ...networkViolations(input.network)]);
      const paths: string[] = [];
      const quotas: Partial<TenantQuota> = {};
      for (const [key, value] of Object.entries(input.quotas ?? {}) as Array<[keyof TenantQuota, number | undefined]>) {
        if (value === undefined) continue;
        quotas[key] = value;
        paths.push(`quotas.${toSnakeCase(key)}`);
      }
      const networkGiven = input.network !== undefined && (input.network.netId !== undefined || input.network.ipv4Subnet !== undefined);
      const labelsGiven = Object.keys(input.labels ?? {}).length > 0;
      // UpdateTenant replaces the whole label set and needs a mask; what the CLI did not name is taken from the tenant
      // as it is, so an update that names nothing still touches it once, as in-process.
      const current = networkGiven || labelsGiven || paths.length === 0 ? await getTenantRecord(input.tenantId) : undefined;
      let labels: Record<string, string> = {};
      if (current !== undefined && (labelsGiven || paths.length === 0)) {
        labels = { ...current.labels };
        for (const [k, v] of Object.entries(input.labels ?? {})) {
          if (v === null) delete labels[k];
          else labels[k] = v;
        }
        paths.push("labels");
      }
      let network: { netId: number; ipv4Subnet: string } | undefined;
      if (networkGiven && current !== undefined) {
        network = { netId: input.network?.netId ?? current.network.netId, ipv4Subnet: input.network?.ipv4Subnet ?? current.network.ipv4Subnet };
        paths.push("network");
      }
      const res = await rpc(() =>
        tenants.updateTenant({ tenantId: input.tenantId, quotas, labels, network, updateMask: { paths } }),
      );
      if (!res.tenant) throw new MvmError("internal", `agent at ${target}: UpdateTenant answered without a tenant`);
      return tenantFromProto(res.tenant);
    },

    async rotateSecrets(tenantId, files) {
      const res = await rpc(() => tenants.rotateSecrets({ tenantId, ...(files === undefined ? {} : { secrets: { files } }) }));
      if (!res.tenant) throw new MvmError("internal", `agent at ${target}: RotateSecrets answered without a tenant`);
      return tenantFromProto(res.tenant);
    },

    async destroyTenant(tenantId, force) {
      await rpc(() => tenants.deleteTenant({ tenantId, force }));
    },

    async createPool(key, spec) {
      refuse(specViolations(spec));
      // CreatePool wants image and resources whole; the use case's defaults fill what the CLI left out.
      const full: PoolSpecInput = {
        ...spec,
        image: spec.image ?? DEFAULT_IMAGE,
        resources: { ...DEFAULT_RESOURCES, ...spec.resources },
        desiredCounts: { running: 0, warm: 0, sleeping: 0, ...spec.desiredCounts },
      };
      const res = await rpc(() => pools.createPool({ pool: key, spec: poolSpecInputToProto(full).spec }));
      return poolOf(res, "CreatePool");
    },

    getPool: (key) => getPoolRecord(key),

    async listPools(tenantId) {
      const out = [];
      let pageToken = "";
      do {
        const res = await rpc(() => pools.listPools({ tenantId: tenantId ?? "", pageSize: PAGE_SIZE, pageToken }));
        out.push(...res.pools.map(poolFromProto));
        pageToken = res.nextPageToken;
      } while (pageToken !== "");
      if (tenantId !== undefined && out.length === 0) await getTenantRecord(tenantId);
      return out;
    },

    async updatePool(key, spec) {
      refuse(specViolations(spec));
      let { spec: message, paths } = poolSpecInputToProto(spec);
      if (paths.length === 0) {
        // UpdatePool needs a mask: an update that names nothing rewrites one field with its own value.
        ({ spec: message, paths } = poolSpecInputToProto({ pinned: (await getPoolRecord(key)).pinned }));
      }
      const res = await rpc(() => pools.updatePool({ pool: key, spec: message, updateMask: { paths } }));
      return poolOf(res, "UpdatePool");
    },

    async scalePool(key, counts) {
      refuse(desiredCountsViolations(counts, "desired_counts"));
      const current = await getPoolRecord(key);
      const desiredCounts: DesiredCounts = { ...current.desiredCounts, ...counts };
      const res = await rpc(() => pools.scalePool({ pool: key, desiredCounts }));
      return poolOf(res, "ScalePool");
    },

    async destroyPool(key, force) {
      await rpc(() => pools.deletePool({ pool: key, force }));
    },

    async buildPool(key, onProgress: (e: BuildProgressEvent) => void) {
      for await (const message of rpcStream(() => pools.buildPool({ pool: key }))) {
        const e = message.event;
        if (e.case === "progress") {
          onProgress({ phase: (BuildPhase[e.value.phase] ?? "build").toLowerCase(), percent: e.value.percent, message: e.value.message });
        } else if (e.case === "completed" && e.value.revision) {
          return buildRevisionFromProto(e.value.revision);
        }
      }
      throw new MvmError("unavailable", `agent at ${target}: the build stream ended without a result`);
    },

    async listBuilds(key) {
      const out = [];
      let pageToken = "";
      do {
        const res = await rpc(() => pools.listBuilds({ pool: key, pageSize: 100, pageToken }));
        out.push(...res.builds.map(buildRevisionFromProto));
        pageToken = res.nextPageToken;
      } while (pageToken !== "");
      return out.reverse();
    },

    async rollbackPool(key, revision) {
      const res = await rpc(() => pools.rollbackPool({ pool: key, revision }));
      return poolOf(res, "RollbackPool");
    },

    async createInstance(pool) {
      return instanceOf(await rpc(() => instances.createInstance({ pool })), "CreateInstance");
    },

    getInstance: (key) => getInstanceRecord(key),

    async listInstances(filter) {
      refuse(filter.status === undefined ? [] : enumViolations(filter.status, INSTANCE_STATUSES, "status"));
      // In-process listing names an absent tenant or pool as not found, and includes destroyed tombstones.
      if (filter.tenantId !== undefined) await getTenantRecord(filter.tenantId);
      if (filter.tenantId !== undefined && filter.poolId !== undefined) await getPoolRecord({ tenantId: filter.tenantId, poolId: filter.poolId });
      const statuses = (filter.status === undefined ? INSTANCE_STATUSES : [filter.status]).map(instanceStatusToProto);
      const out: Instance[] = [];
      let pageToken = "";
      do {
        const res = await rpc(() =>
          instances.listInstances({
            filter: { tenantId: filter.tenantId ?? "", poolId: filter.tenantId === undefined ? "" : (filter.poolId ?? ""), statuses },
            pageSize: PAGE_SIZE,
            pageToken,
          }),
        );
        out.push(...res.instances.map(instanceFromProto));
        pageToken = res.nextPageToken;
      } while (pageToken !== "");
      return filter.poolId === undefined ? out : out.filter((i) => i.poolId === filter.poolId);
    },

    async startInstance(key) {
      return instanceOf(await rpc(() => instances.startInstance({ instance: instanceRef(key) })), "StartInstance");
    },
    async stopInstance(key) {
      return instanceOf(await rpc(() => instances.stopInstance({ instance: instanceRef(key) })), "StopInstance");
    },
    async warmInstance(key) {
      return instanceOf(await rpc(() => instances.warmInstance({ instance: instanceRef(key) })), "WarmInstance");
    },
    async resumeInstance(key) {
      return instanceOf(await rpc(() => instances.resumeInstance({ instance: instanceRef(key) })), "ResumeInstance");
    },
    async sleepInstance(key, options) {
      if (options?.compression !== undefined) {
        const violations = enumViolations(options.compression, COMPRESSIONS, "compression");
        if (violations.length > 0) refuse(violations);
      }
      const compression = options?.compression === undefined ? undefined : compressionToProto(options.compression);
      return instanceOf(
        await rpc(() => instances.sleepInstance({ instance: instanceRef(key), ...(compression === undefined ? {} : { compression }) })),
        "SleepInstance",
      );
    },
    async wakeInstance(key) {
      return instanceOf(await rpc(() => instances.wakeInstance({ instance: instanceRef(key) })), "WakeInstance");
    },

    async destroyInstance(key, options) {
      await rpc(() => instances.destroyInstance({ instance: instanceRef(key), keepVolumes: options.keepVolumes }));
    },

    async execInstance(key, argv, options) {
      refuse(integerViolations(options.timeoutMs, 1, UINT32_MAX, "--timeout-ms"));
      const res = await rpc(() => instances.execInstance({ instance: instanceRef(key), argv: [...argv], timeoutMs: options.timeoutMs }));
      const text = (bytes: Uint8Array) => Buffer.from(bytes).toString("utf8");
      return { stdout: text(res.stdout), stderr: text(res.stderr), exitCode: res.exitCode };
    },

    async instanceStats(key) {
      const res = await rpc(() => instances.getInstanceStats({ instance: instanceRef(key) }));
      if (res.instance === undefined) throw new MvmError("internal", "agent answered GetInstanceStats without an instance");
      const instance = instanceFromProto(res.instance);
      const counter = (value: bigint | undefined) => (value === undefined ? null : Number(value));
      return {
        instance: `${key.tenantId}/${key.poolId}/${key.instanceId}`,
        status: instance.status,
        pid: instance.vmm?.pid ?? null,
        cpuUsageUs: counter(res.cpuUsageUs),
        memoryBytes: counter(res.memoryBytes),
        memoryLimitBytes: counter(res.memoryLimitBytes),
        tapRxBytes: counter(res.tapRxBytes),
        tapTxBytes: counter(res.tapTxBytes),
        idle: instance.idle,
      };
    },

    async instanceLogs(key, options, write) {
      const stream = instances.streamInstanceLogs(
        { instance: instanceRef(key), source: LogSource.CONSOLE, tailLines: MAX_LOG_TAIL_LINES, follow: options.follow },
        { signal: options.signal },
      );
      try {
        for await (const message of rpcStream(() => stream)) {
          for (const line of message.lines) write(`${line.text}\n`);
        }
      } catch (e) {
        if (options.signal?.aborted) return;
        throw e;
      }
    },

    async nodeInfo() {
      const [info, caps] = await Promise.all([rpc(() => node.getNodeInfo({})), rpc(() => node.getCapabilities({}))]);
      const n = info.node;
      if (!n) throw new MvmError("internal", `agent at ${target}: GetNodeInfo answered without a node`);
      const capabilities = caps.capabilities ?? n.capabilities;
      return {
        nodeId: n.nodeId,
        dataRoot: n.dataRoot,
        hostname: n.hostname,
        arch: n.arch,
        kernel: n.kernel,
        vcpus: n.vcpus,
        memMib: n.memMib,
        cgroupVersion: capabilities?.cgroupVersion ?? null,
        dataRootFreeBytes: Number(n.dataRootFreeBytes),
        // The contract names the hypervisors' binaries only; broken records are not carried (see `mvm node info --local`).
        binaries: Object.fromEntries(
          (capabilities?.hypervisors ?? []).map((h) => [
            (Hypervisor[h.kind] ?? "unspecified").toLowerCase(),
            h.binaryPath ? { path: h.binaryPath, version: h.version } : null,
          ]),
        ),
        agentVersion: n.agentVersion,
      };
    },

    async verifyNetwork(tenantId, fix) {
      const res = await rpc(() => node.verifyNetwork({ tenantId: tenantId ?? "", fix }));
      return res.tenants.map((t): TenantNetworkReport => {
        const checks = t.checks.map(networkCheckOf);
        const missingTaps = t.instancesWithoutTap.map((r) => `${r.tenantId}/${r.poolId}/${r.instanceId}`);
        return {
          tenantId: t.tenantId,
          bridgeName: t.bridgeName,
          ok: checks.every((c) => c.ok) && t.orphanTaps.length === 0 && missingTaps.length === 0,
          checks,
          strayTaps: [...t.orphanTaps],
          missingTaps,
        };
      });
    },

    async collectGarbage(options) {
      const res = await rpc(() => node.collectGarbage({ apply: options.apply, keepRevisions: options.keepRevisions ?? 0 }));
      return {
        items: res.items.map(garbageItemFromProto),
        reclaimedBytes: Number(res.reclaimedBytes),
        applied: res.applied,
      };
    },

    async tailAudit(tenantId, n) {
      let collected: AuditEntry[] = [];
      let beforeSeq = 0n;
      let remaining = n;
      // TailAudit answers at most a page; earlier pages are read backwards from the oldest entry seen.
      while (remaining > 0) {
        const limit = Math.min(MAX_AUDIT_PAGE, remaining);
        const res = await rpc(() => agent.tailAudit({ tenantId, limit, beforeSeq }));
        if (res.entries.length === 0) break;
        collected = [...res.entries.map(auditEntryFromProto), ...collected];
        remaining -= res.entries.length;
        beforeSeq = res.entries[0]?.seq ?? 0n;
        if (res.entries.length < limit || beforeSeq <= 1n) break;
      }
      return collected;
    },

    followAudit(tenantId, n, signal) {
      const stream = () => agent.watchAudit({ tenantId, backlog: Math.min(n, MAX_AUDIT_PAGE) }, { signal });
      return {
        async *[Symbol.asyncIterator]() {
          try {
            for await (const message of rpcStream(stream)) {
              // An empty tenant_id asks for every log; the node-level log is the one whose entries name no tenant.
              if (message.entry && message.entry.tenantId === tenantId) yield auditEntryFromProto(message.entry);
            }
          } catch (e) {
            if (signal.aborted) return;
            throw e;
          }
        },
      };
    },

    async verifyAudit(tenantId) {
      const [res, root] = await Promise.all([rpc(() => agent.verifyAudit({ tenantId })), dataRoot()]);
      const path = new FsAuditLog(root).logPath(tenantId);
      const log = res.logs.find((l) => l.tenantId === tenantId);
      // A log never written verifies as empty, as it does in-process.
      if (log === undefined) return { path, ok: true, entries: 0 };
      return {
        path,
        ok: log.ok,
        entries: Number(log.entriesChecked),
        ...(log.ok ? {} : { firstBadSeq: Number(log.firstBadSeq), reason: log.reason }),
      };
    },

    close: () => connection.close(),
  };
}
