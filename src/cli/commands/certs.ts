// `mvm agent certs …` (SPEC §8.2): the node's CA, its server certificate, and client certificates for admins,
// coordinators and tenants. The PKI lives in src/platform/pki, which reports errors as PkiError (platform may not
// import core); this file turns them into MvmError so they print and exit like every other CLI error.

import { readFile } from "node:fs/promises";
import type { Argv } from "yargs";
import { MvmError, invalid, type FieldViolation } from "../../core/errors.js";
import { isPkiError } from "../../platform/pki/pki-error.js";
import { parseIdentityArg, type Identity } from "../../platform/pki/identity.js";
import { CertStore, type CertStoreStatus } from "../../platform/pki/cert-store.js";
import type { CertificateStatus } from "../../platform/pki/certificate-info.js";
import {
  DEFAULT_CA_LIFETIME_DAYS,
  DEFAULT_CLIENT_LIFETIME_HOURS,
  DEFAULT_SERVER_LIFETIME_HOURS,
} from "../../platform/pki/cert-authority.js";
import type { CliContext, GlobalOptions } from "../context.js";
import { renderList, renderRecord, type Column, type OutputFormat } from "../output.js";

/** A PKI error as the MvmError of the same kind; anything else unchanged. */
export function toMvmError(error: unknown): unknown {
  return isPkiError(error) ? new MvmError(error.kind, error.message, error.violations, { cause: error }) : error;
}

async function mappingPkiErrors<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (e) {
    throw toMvmError(e);
  }
}

/** Runs `check`, adding the violations of an invalid-input error to `into` instead of throwing. */
function collect<T>(into: FieldViolation[], check: () => T): T | undefined {
  try {
    return check();
  } catch (e) {
    const mapped = toMvmError(e);
    if (mapped instanceof MvmError && mapped.kind === "invalid") {
      into.push(...mapped.violations);
      return undefined;
    }
    throw mapped;
  }
}

async function readInputFile(path: string, field: string, violations: FieldViolation[]): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "error";
    violations.push({ field, rule: `must name a readable file (${path}: ${code})` });
    return undefined;
  }
}

const STATUS_COLUMNS: Column<CertificateStatus>[] = [
  { header: "ROLE", cell: (c) => c.role },
  { header: "IDENTITY", cell: (c) => c.identity ?? c.uris.join(", ") },
  { header: "SUBJECT", cell: (c) => c.subject },
  { header: "NAMES", cell: (c) => [...c.dnsNames, ...c.ipAddresses].join(", ") },
  { header: "NOT AFTER", cell: (c) => c.notAfter },
  { header: "DAYS LEFT", cell: (c) => c.daysLeft },
  { header: "CHAINS TO CA", cell: (c) => (c.chainsToCa ? "yes" : "NO") },
  { header: "KEY MATCHES", cell: (c) => (c.keyMatches === null ? "unchecked" : c.keyMatches ? "yes" : "NO") },
  { header: "RENEW", cell: (c) => (c.expired ? "EXPIRED" : c.renewalDue ? "due" : "no") },
];

function renderStatus(status: CertStoreStatus, format: OutputFormat, extra: Record<string, unknown> = {}): string {
  if (format !== "table") return renderRecord({ ...extra, ...status }, format);
  return renderList(status.certificates, STATUS_COLUMNS, format);
}

async function certStore(ctx: CliContext, args: GlobalOptions): Promise<CertStore> {
  const { store } = await ctx.deps(args);
  return CertStore.at(store.dataRoot);
}

function withLifetimeHours<T>(y: Argv<T>, what: string) {
  return y.option("lifetime-hours", { type: "number", describe: `certificate lifetime in hours (default ${what})` });
}

/**
 * Adds `certs` (init, issue, rotate, status) under the `agent` command. Mount it from run-cli.ts:
 * `parser.command("agent", "…", (y) => registerCertsCommands(y, ctx).demandCommand(1, "…"))`.
 */
export function registerCertsCommands<T extends GlobalOptions>(agentCommand: Argv<T>, ctx: CliContext): Argv<T> {
  return agentCommand.command("certs", "the node's CA, its server certificate and client certificates", (y) =>
    y
      .command(
        "init",
        "create (or import) the CA and issue this node's server certificate",
        (c) =>
          withLifetimeHours(
            c
              .option("trust-domain", {
                type: "string",
                describe: "SPIFFE trust domain (default: the imported CA's, else mvm.local)",
              })
              .option("ca-cert", { type: "string", describe: "import this CA certificate (PEM) instead of creating one" })
              .option("ca-key", { type: "string", describe: "the imported CA's private key (PEM, ECDSA P-256)" })
              .option("san", {
                type: "string",
                array: true,
                describe: "extra DNS name or IP address for the node certificate (repeatable)",
              })
              .option("node-id", { type: "string", describe: "node ID in the certificate (default: this node's ID)" })
              .option("ca-lifetime-days", {
                type: "number",
                describe: `lifetime of a created CA in days (default ${DEFAULT_CA_LIFETIME_DAYS})`,
              }),
            `${DEFAULT_SERVER_LIFETIME_HOURS}`,
          ),
        async (args) =>
          mappingPkiErrors(async () => {
            const violations: FieldViolation[] = [];
            const caCertPath = args["ca-cert"];
            const caKeyPath = args["ca-key"];
            if ((caCertPath === undefined) !== (caKeyPath === undefined)) {
              const missing = caCertPath === undefined ? "--ca-cert" : "--ca-key";
              violations.push({ field: missing, rule: "is required when importing a CA (--ca-cert and --ca-key go together)" });
            }
            let importCa: { certPem: string; keyPem: string } | undefined;
            if (caCertPath !== undefined && caKeyPath !== undefined) {
              const certPem = await readInputFile(caCertPath, "--ca-cert", violations);
              const keyPem = await readInputFile(caKeyPath, "--ca-key", violations);
              if (certPem !== undefined && keyPem !== undefined) importCa = { certPem, keyPem };
            }
            if (violations.length > 0) throw invalid(violations);
            const store = await certStore(ctx, args);
            const nodeId = args["node-id"] ?? (await (await ctx.deps(args)).store.node()).nodeId;
            const result = await store.init({
              nodeId,
              trustDomain: args["trust-domain"],
              importCa,
              extraSans: args.san ?? [],
              caLifetimeDays: args["ca-lifetime-days"],
              lifetimeHours: args["lifetime-hours"],
            });
            ctx.warn(`certificates written to ${result.status.directory} (CA ${result.ca})\n`);
            ctx.write(renderStatus(result.status, args.output, { ca: result.ca }));
          }),
      )
      .command(
        "issue",
        "issue a client certificate for admin, coordinator, node/<id> or tenant/<id>",
        (c) =>
          withLifetimeHours(
            c
              .option("identity", { type: "string", describe: "admin, coordinator, node/<id> or tenant/<id>" })
              .option("out", { type: "string", describe: "directory for <name>.pem, <name>-key.pem and ca.pem" })
              .option("name", { type: "string", describe: "file name stem (default from the identity, e.g. tenant-acme)" })
              .option("server", {
                type: "boolean",
                default: false,
                describe: "also valid as a server certificate (serverAuth), e.g. for `coordinator serve`",
              })
              .option("san", { type: "string", array: true, describe: "DNS name or IP address (repeatable; with --server)" }),
            `${DEFAULT_CLIENT_LIFETIME_HOURS}, or ${DEFAULT_SERVER_LIFETIME_HOURS} with --server`,
          ),
        async (args) =>
          mappingPkiErrors(async () => {
            const violations: FieldViolation[] = [];
            const identity: Identity | undefined = collect(violations, () => parseIdentityArg(args.identity));
            if (args.out === undefined || args.out === "") {
              violations.push({ field: "--out", rule: "is required (directory to write the certificate, key and ca.pem to)" });
            }
            if (args.san !== undefined && args.san.length > 0 && !args.server) {
              violations.push({ field: "--san", rule: "is only allowed with --server (a client certificate names no hosts)" });
            }
            if (violations.length > 0 || identity === undefined) throw invalid(violations);
            const store = await certStore(ctx, args);
            const issued = await store.issueToDirectory({
              identity,
              outDir: args.out as string,
              name: args.name,
              kind: args.server ? "server" : "client",
              sans: args.san ?? [],
              lifetimeHours: args["lifetime-hours"],
            });
            ctx.write(renderRecord(issued, args.output));
          }),
      )
      .command(
        "rotate",
        "renew this node's server certificate under the same CA (new key, same identity and names)",
        (c) => withLifetimeHours(c, `${DEFAULT_SERVER_LIFETIME_HOURS}`),
        async (args) =>
          mappingPkiErrors(async () => {
            const store = await certStore(ctx, args);
            const rotated = await store.rotate({ lifetimeHours: args["lifetime-hours"] });
            ctx.write(
              renderRecord(
                {
                  spiffeId: rotated.spiffeId,
                  previousSerialNumber: rotated.previousSerialNumber,
                  serialNumber: rotated.serialNumber,
                  notBefore: rotated.notBefore.toISOString(),
                  notAfter: rotated.notAfter.toISOString(),
                  path: store.paths.nodeCert,
                },
                args.output,
              ),
            );
          }),
      )
      .command(
        "status",
        "show the CA and node certificates: identities, names, expiry, chain and key checks",
        (c) => c,
        async (args) =>
          mappingPkiErrors(async () => {
            const store = await certStore(ctx, args);
            ctx.write(renderStatus(await store.status(), args.output));
          }),
      )
      .demandCommand(1, "certs: a subcommand is required (init, issue, rotate, status)"),
  );
}
