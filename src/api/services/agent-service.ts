// AgentService: version, the node's TLS certificates, and the audit log read back.

import { X509Certificate } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { invalid } from "../../core/errors.js";
import { idViolations } from "../../core/ids.js";
import type { AuditAction, AuditEntry } from "../../core/observability-ports.js";
import { RENEW_WHEN_REMAINING_FRACTION, describeCertificate } from "../../platform/pki/certificate-info.js";
import type { CertStore } from "../../platform/pki/cert-store.js";
import {
  AgentService,
  CertificateInfoSchema,
  RotateCertificateRequestSchema,
  type CertificateInfo,
} from "../../../gen/mvm/v1/agent_service_pb.js";
import type { AuditAction as ProtoAuditAction } from "../../../gen/mvm/v1/audit_pb.js";
import { auditEntryToProto } from "../convert/audit.js";
import { auditActionFromProto } from "../convert/enums.js";
import { callInfo, isOperator, type CallInfo } from "../policy.js";
import { untilShutdown } from "../streams.js";
import type { ServiceKit } from "./service-kit.js";

export const API_VERSION = "mvm.v1";
const DEFAULT_ROTATE_DAYS = 30;
const MAX_ROTATE_DAYS = 397;
const DEFAULT_TAIL = 50;
const MAX_TAIL = 1000;
const MAX_BACKLOG = 1000;

/** The facts of one PEM certificate as the contract describes them. */
export function certificateInfo(certPem: string, caPem: string, trustDomain: string): CertificateInfo {
  const status = describeCertificate({ role: "", path: "", certPem, caCertPem: caPem, trustDomain });
  const cert = new X509Certificate(certPem);
  const details = cert.publicKey.asymmetricKeyDetails;
  const curve = details?.namedCurve === "prime256v1" ? "P-256" : details?.namedCurve;
  const keyAlgorithm = cert.publicKey.asymmetricKeyType === "ec" ? `ECDSA ${curve ?? ""}`.trim() : (cert.publicKey.asymmetricKeyType ?? "unknown").toUpperCase();
  return create(CertificateInfoSchema, {
    subject: status.subject,
    issuer: status.issuer,
    serialNumber: status.serialNumber.toLowerCase(),
    uriSans: status.uris,
    dnsSans: status.dnsNames,
    ipSans: status.ipAddresses,
    notBefore: timestampFromMs(Date.parse(status.notBefore)),
    notAfter: timestampFromMs(Date.parse(status.notAfter)),
    fingerprintSha256: cert.fingerprint256.replace(/:/g, "").toLowerCase(),
    keyAlgorithm,
  });
}

/** When the agent renews a certificate on its own: once only RENEW_WHEN_REMAINING_FRACTION of its life is left. */
export function renewAtMs(notBeforeMs: number, notAfterMs: number): number {
  return notAfterMs - (notAfterMs - notBeforeMs) * RENEW_WHEN_REMAINING_FRACTION;
}

async function nodeCertificateInfo(store: CertStore): Promise<{ node: CertificateInfo; ca: CertificateInfo }> {
  const trustDomain = await store.trustDomain();
  const material = await store.serverMaterial();
  return {
    node: certificateInfo(material.certPem, material.caPem, trustDomain),
    ca: certificateInfo(material.caPem, material.caPem, trustDomain),
  };
}

function actionsOf(actions: readonly ProtoAuditAction[]): Set<AuditAction> | null {
  if (actions.length === 0) return null;
  return new Set(actions.map(auditActionFromProto).filter((a): a is AuditAction => a !== undefined));
}

export function agentService(kit: ServiceKit): ServiceImpl<typeof AgentService> {
  const { deps } = kit;

  function certificates() {
    if (deps.certificates === undefined) {
      throw new ConnectError("this agent serves no TLS certificates (it listens on its local socket only)", Code.FailedPrecondition);
    }
    return deps.certificates;
  }

  /** Which audit log a TailAudit or VerifyAudit may read: "" (node log) is for operators. */
  async function requireLog(call: CallInfo, tenantId: string): Promise<void> {
    if (tenantId === "") await kit.policy.requireOperator(call, "", "read the node-level audit log");
    else {
      const violations = idViolations(tenantId, "tenant_id");
      if (violations.length > 0) throw invalid(violations);
      await kit.policy.requireTenant(call, tenantId);
    }
  }

  return {
    async getVersion() {
      const node = await deps.runtime.store.node();
      return {
        version: deps.version.version,
        gitCommit: deps.version.gitCommit,
        apiVersion: API_VERSION,
        nodeId: node.nodeId,
        runtimeVersion: process.version,
      };
    },

    async getCertificateStatus() {
      const { store } = certificates();
      const { node, ca } = await nodeCertificateInfo(store);
      const renewAt = renewAtMs(Number(node.notBefore?.seconds ?? 0n) * 1000, Number(node.notAfter?.seconds ?? 0n) * 1000);
      return { nodeCertificate: node, caCertificate: ca, renewAt: timestampFromMs(renewAt) };
    },

    async rotateCertificate(req, context) {
      const call = callInfo(context);
      const access = certificates();
      if (req.validityDays !== 0 && (req.validityDays < 1 || req.validityDays > MAX_ROTATE_DAYS)) {
        throw invalid([{ field: "validity_days", rule: `must be 1-${MAX_ROTATE_DAYS} (0 means ${DEFAULT_ROTATE_DAYS})` }]);
      }
      return kit.once(call, RotateCertificateRequestSchema, req, req.requestId, async () => {
        const runtime = kit.runtimeFor(call);
        const nodeId = (await runtime.store.node()).nodeId;
        const previous = (await nodeCertificateInfo(access.store)).node;
        const record = { tenantId: "", actor: runtime.actor ?? { kind: "system" as const, id: "agent" }, action: "certificate_rotate" as const, target: `node/${nodeId}` };
        try {
          const rotated = await access.store.rotate({ lifetimeHours: (req.validityDays === 0 ? DEFAULT_ROTATE_DAYS : req.validityDays) * 24 });
          await access.reload();
          await runtime.audit.append({
            ...record,
            outcome: "success",
            reason: "",
            details: { previous_serial: rotated.previousSerialNumber.toLowerCase(), serial: rotated.serialNumber.toLowerCase(), not_after: rotated.notAfter.toISOString() },
          });
          return { previous, current: (await nodeCertificateInfo(access.store)).node };
        } catch (e) {
          await runtime.audit.append({ ...record, outcome: "failure", reason: e instanceof Error ? e.message : String(e), details: {} });
          throw e;
        }
      });
    },

    async *watchAudit(req, context) {
      const call = callInfo(context);
      if (req.backlog > MAX_BACKLOG) throw invalid([{ field: "backlog", rule: `must be at most ${MAX_BACKLOG}` }]);
      if (req.tenantId !== "") {
        const violations = idViolations(req.tenantId, "tenant_id");
        if (violations.length > 0) throw invalid(violations);
      }
      const scope = await kit.policy.scopeTenant(call, req.tenantId, "tenant_id");
      const actions = actionsOf(req.actions);
      // The log's watcher stops reading when either the client goes or the agent stops.
      const stop = new AbortController();
      const abort = () => stop.abort();
      context.signal.addEventListener("abort", abort, { once: true });
      deps.shutdownSignal.addEventListener("abort", abort, { once: true });
      const entries = deps.auditReader.watch(scope ?? null, { signal: stop.signal, backlog: req.backlog });
      deps.metrics.watchers.inc({ stream: "audit" });
      try {
        for await (const entry of untilShutdown(entries, deps.shutdownSignal, context.signal)) {
          if (actions === null || actions.has(entry.action)) yield { entry: auditEntryToProto(entry) };
        }
      } finally {
        stop.abort();
        context.signal.removeEventListener("abort", abort);
        deps.shutdownSignal.removeEventListener("abort", abort);
        deps.metrics.watchers.dec({ stream: "audit" });
      }
    },

    async tailAudit(req, context) {
      const call = callInfo(context);
      if (req.limit > MAX_TAIL) throw invalid([{ field: "limit", rule: `must be at most ${MAX_TAIL} (0 means ${DEFAULT_TAIL})` }]);
      await requireLog(call, req.tenantId);
      const limit = req.limit === 0 ? DEFAULT_TAIL : req.limit;
      const actions = actionsOf(req.actions);
      let before = req.beforeSeq === 0n ? undefined : Number(req.beforeSeq);
      const found: AuditEntry[] = [];
      // With an action filter, read further back a window at a time until enough entries match or the log starts.
      for (;;) {
        const window = await deps.auditReader.tail(req.tenantId, actions === null ? limit : MAX_TAIL, before === undefined ? {} : { beforeSeq: before });
        const matching = actions === null ? window : window.filter((e) => actions.has(e.action));
        found.unshift(...matching);
        const first = window[0];
        if (found.length >= limit || first === undefined || first.seq <= 1 || actions === null) break;
        before = first.seq;
      }
      return { entries: found.slice(Math.max(0, found.length - limit)).map(auditEntryToProto) };
    },

    async verifyAudit(req, context) {
      const call = callInfo(context);
      let logs: string[];
      if (req.tenantId !== "") {
        await requireLog(call, req.tenantId);
        logs = [req.tenantId];
      } else if (isOperator(call.caller)) logs = await deps.auditReader.logs();
      else if (call.caller.kind === "tenant") logs = [call.caller.tenantId];
      else logs = [];
      const results = [];
      for (const tenantId of logs) {
        const verified = await deps.auditReader.verify(tenantId);
        const head = (await deps.auditReader.tail(tenantId, 1))[0];
        results.push({
          tenantId,
          ok: verified.ok,
          entriesChecked: BigInt(verified.entries),
          firstBadSeq: BigInt(verified.firstBadSeq ?? 0),
          reason: verified.reason ?? "",
          headHash: head?.hash ?? "",
        });
      }
      return { logs: results, ok: results.every((r) => r.ok) };
    },
  };
}
