// The Store port on the local filesystem (SPEC §5). Layout under the data root:
//   node.json
//   desired-state.json                                  (the last applied desired state, SPEC §9)
//   locks/{node.lock, tenant-<t>.lock}
//   tenants/<t>/{tenant.json, secrets.json, ssh/{id_ed25519, id_ed25519.pub}}
//   tenants/<t>/pools/<p>/{pool.json, builds.json}
//   tenants/<t>/pools/<p>/instances/<i>/instance.json   (plus run/, volumes/, snapshot/ owned by the instance)
// Directories are 0700, record files 0600. Every record is written with writeFileAtomic, carries schemaVersion, and a
// record that cannot be trusted is moved aside as `*.broken` with a `.reason` sidecar instead of being returned.
// IDs are checked against the ID rules before they are joined into a path, and no tenant/pool/instance directory
// is followed if it is a symlink. Deletions rename the directory to `.deleting-*` first; listing skips dot names and
// `sweep` (run by `open`) finishes deletions and removes temp files that a killed writer left behind.

import { randomBytes } from "node:crypto";
import { link, lstat, mkdir, readFile, readdir, rename, rm, stat } from "node:fs/promises";
import { lstatSync } from "node:fs";
import { join, resolve } from "node:path";
import { MvmError, invalidField, notFound } from "../../core/errors.js";
import { assertId, assertInstanceId, isValidId, isValidInstanceId } from "../../core/ids.js";
import { SCHEMA_VERSION } from "../../core/model.js";
import type { BuildRevision, Instance, NodeRecord, Tenant, WorkerPool } from "../../core/model.js";
import type { AppliedDesiredState, BrokenRecord, Clock, Ids, SshKeyPair, Store } from "../../core/ports.js";
import type { SecretFiles } from "../../core/tenant-secrets.js";
import {
  createFileExclusive,
  readJsonRecord,
  removeAbandonedTempFiles,
  syncDirectory,
  unlinkIfPresent,
  writeFileAtomic,
} from "./atomic-file.js";
import { DEFAULT_LOCK_TIMEOUT_MS, heldFileLocks, withFileLock } from "./file-lock.js";
import { lockOrderViolation } from "./lock-order.js";
import type { StoreLockKey } from "./lock-order.js";
import { errnoCode } from "./process-identity.js";
import { RecordCache } from "./record-cache.js";
import { secretSetHash } from "./secret-set-hash.js";

export interface FsStoreOptions {
  /** Called once for each record moved aside as `*.broken`. Default: nothing (they stay listed by brokenRecords). */
  onBroken?: (broken: BrokenRecord) => void;
  /** How long withTenantLock/withNodeLock wait before failing with `unavailable`, ms. Default 30000. */
  lockTimeoutMs?: number;
  /** Source of createdAt and `.broken` timestamps. Default: the system clock. */
  clock?: Clock;
  /** Source of the node ID. Default: crypto.randomBytes. */
  ids?: Ids;
}

export interface SweepResult {
  /** `.deleting-*` directories whose removal a crash had interrupted, now removed. */
  finishedDeletions: string[];
  /** Temp files of writers that no longer run, now removed. */
  removedTempFiles: string[];
}

const DIR_MODE = 0o700;
const RECORD_MODE = 0o600;
const PUBLIC_KEY_MODE = 0o644;
const DELETING_PREFIX = ".deleting-";
const BROKEN_SUFFIX = ".broken";
const REASON_SUFFIX = ".reason";
const NODE_ID_PATTERN = /^n-[0-9a-f]{12}$/;
const NODE_ID_RANDOM_BYTES = 6;

const FILES = {
  node: "node.json",
  desiredState: "desired-state.json",
  tenant: "tenant.json",
  pool: "pool.json",
  builds: "builds.json",
  instance: "instance.json",
  sshPrivate: "id_ed25519",
  sshPublic: "id_ed25519.pub",
  secrets: "secrets.json",
} as const;

/** secrets.json: a tenant's secret set, contents base64. 0600 like every record; never logged, never returned. */
interface SecretsRecord {
  schemaVersion: number;
  tenantId: string;
  files: Record<string, string>;
}

/** builds.json: the build history of a pool, oldest first, wrapped so that it carries schemaVersion and its IDs. */
interface BuildHistoryRecord {
  schemaVersion: number;
  tenantId: string;
  poolId: string;
  builds: BuildRevision[];
}

/** Says why a parsed record cannot be used, or null when it passes the light shape check. */
type ShapeCheck = (value: Record<string, unknown>) => string | null;

export class FsStore implements Store {
  readonly dataRoot: string;
  private readonly onBroken: (broken: BrokenRecord) => void;
  private readonly lockTimeoutMs: number;
  private readonly clock: Clock;
  private readonly ids: Ids;
  private readonly records = new RecordCache();

  private constructor(dataRoot: string, options: FsStoreOptions) {
    this.dataRoot = dataRoot;
    this.onBroken = options.onBroken ?? (() => undefined);
    this.lockTimeoutMs = options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS;
    this.clock = options.clock ?? { nowMs: () => Date.now() };
    this.ids = options.ids ?? { randomHex: (bytes) => randomBytes(bytes).toString("hex") };
  }

  /** Opens (creating if needed, 0700) the store at `dataRoot`, then sweeps what crashed writers left behind. */
  static async open(dataRoot: string, options: FsStoreOptions = {}): Promise<FsStore> {
    const root = resolve(dataRoot);
    await mkdir(root, { recursive: true, mode: DIR_MODE });
    const rootStat = await stat(root);
    if (!rootStat.isDirectory()) throw new MvmError("failed_precondition", `data root ${root} is not a directory`);
    const store = new FsStore(root, options);
    await store.ensureDirs(["locks"]);
    await store.ensureDirs(["tenants"]);
    await store.sweep();
    return store;
  }

  // ---- node -------------------------------------------------------------------------------------------------------

  /**
   * Created without a lock: the record is linked into place with link(2), which fails if another process created it
   * first, so concurrent first calls agree on one node ID — and node() stays callable under a tenant lock.
   */
  async node(): Promise<NodeRecord> {
    const path = join(this.dataRoot, FILES.node);
    const check: ShapeCheck = (v) =>
      typeof v.nodeId === "string" && NODE_ID_PATTERN.test(v.nodeId) ? null : "node_id is missing or not n-<12 hex>";
    for (let attempt = 0; attempt < 3; attempt++) {
      const existing = await this.readRecord<NodeRecord>(path, check);
      if (existing !== null) return existing;
      const fresh: NodeRecord = {
        schemaVersion: SCHEMA_VERSION,
        nodeId: `n-${this.ids.randomHex(NODE_ID_RANDOM_BYTES)}`,
        createdAt: new Date(this.clock.nowMs()).toISOString(),
      };
      if (await createFileExclusive(path, serialize(fresh), { mode: RECORD_MODE })) return fresh;
    }
    throw new MvmError("internal", `node record ${path} could not be read or created`);
  }

  // ---- desired state ----------------------------------------------------------------------------------------------

  async getDesiredState(): Promise<AppliedDesiredState | null> {
    const check: ShapeCheck = (v) =>
      typeof v.generation === "number" && typeof v.hash === "string" && typeof v.document === "object" && v.document !== null
        ? null
        : "generation, hash or document is missing";
    return this.readRecord<AppliedDesiredState>(this.path(FILES.desiredState), check);
  }

  async putDesiredState(applied: AppliedDesiredState): Promise<void> {
    await this.writeRecord(this.path(FILES.desiredState), applied);
  }

  // ---- tenants ----------------------------------------------------------------------------------------------------

  async listTenants(): Promise<Tenant[]> {
    const ids = await this.listChildIds(["tenants"], isValidId);
    const records = await Promise.all(ids.map((id) => this.getTenant(id)));
    return records.filter((r): r is Tenant => r !== null);
  }

  async getTenant(tenantId: string): Promise<Tenant | null> {
    assertId(tenantId, "tenant_id");
    return this.readRecordIn<Tenant>(["tenants", tenantId], FILES.tenant, idsMatch({ tenantId }));
  }

  async putTenant(tenant: Tenant): Promise<void> {
    assertId(tenant.tenantId, "tenant_id");
    await this.ensureDirs(["tenants", tenant.tenantId]);
    await this.writeRecord(this.path("tenants", tenant.tenantId, FILES.tenant), tenant);
  }

  /** Idempotent: deleting an absent tenant does nothing. */
  async deleteTenant(tenantId: string): Promise<void> {
    assertId(tenantId, "tenant_id");
    await this.archiveAuditLog(tenantId);
    await this.deleteDir(["tenants"], tenantId);
  }

  /**
   * A deleted tenant's audit trail outlives it (SPEC §10.3: the log is append-only and tamper-evident): it moves to
   * `audit/deleted-tenants/<tenant>-<time>.log` before the tenant directory goes.
   */
  private async archiveAuditLog(tenantId: string): Promise<void> {
    const log = this.path("tenants", tenantId, "audit.log");
    const archiveDir = this.path("audit", "deleted-tenants");
    await mkdir(archiveDir, { recursive: true, mode: DIR_MODE });
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    try {
      await rename(log, join(archiveDir, `${tenantId}-${stamp}.log`));
    } catch (error) {
      if (errnoCode(error) !== "ENOENT") throw error;
    }
  }

  /** The key may be written before tenant.json (tenant creation needs the public key for the record). */
  async putTenantSshKey(tenantId: string, key: SshKeyPair): Promise<void> {
    const paths = this.tenantSshKeyPaths(tenantId);
    await this.ensureDirs(["tenants", tenantId, "ssh"]);
    // OpenSSH refuses a private key file without its final newline.
    await writeFileAtomic(paths.privateKey, withFinalNewline(key.privateKey), { mode: RECORD_MODE });
    await writeFileAtomic(paths.publicKey, withFinalNewline(key.publicKey), { mode: PUBLIC_KEY_MODE });
  }

  async getTenantSecrets(tenantId: string): Promise<SecretFiles> {
    assertId(tenantId, "tenant_id");
    const check: ShapeCheck = (v) => {
      const ids = idsMatch({ tenantId })(v);
      if (ids !== null) return ids;
      const files = v.files;
      if (typeof files !== "object" || files === null || Array.isArray(files)) return "files is not a map";
      const bad = Object.entries(files).find(([, content]) => typeof content !== "string");
      return bad ? `files[${JSON.stringify(bad[0])}] is not base64 text` : null;
    };
    const record = await this.readRecordIn<SecretsRecord>(["tenants", tenantId], FILES.secrets, check);
    return Object.fromEntries(Object.entries(record?.files ?? {}).map(([name, content]) => [name, new Uint8Array(Buffer.from(content, "base64"))]));
  }

  async putTenantSecrets(tenantId: string, files: SecretFiles): Promise<string> {
    assertId(tenantId, "tenant_id");
    await this.requireRecord(["tenants", tenantId], FILES.tenant, `tenant ${tenantId}`);
    const encoded = Object.fromEntries(Object.entries(files).map(([name, content]) => [name, Buffer.from(content).toString("base64")]));
    const record: SecretsRecord = { schemaVersion: SCHEMA_VERSION, tenantId, files: encoded };
    await this.writeRecord(this.path("tenants", tenantId, FILES.secrets), record);
    return secretSetHash(files);
  }

  tenantSshKeyPaths(tenantId: string): { privateKey: string; publicKey: string } {
    assertId(tenantId, "tenant_id");
    return {
      privateKey: this.path("tenants", tenantId, "ssh", FILES.sshPrivate),
      publicKey: this.path("tenants", tenantId, "ssh", FILES.sshPublic),
    };
  }

  // ---- pools ------------------------------------------------------------------------------------------------------

  async listPools(tenantId: string): Promise<WorkerPool[]> {
    assertId(tenantId, "tenant_id");
    const ids = await this.listChildIds(["tenants", tenantId, "pools"], isValidId);
    const records = await Promise.all(ids.map((id) => this.getPool(tenantId, id)));
    return records.filter((r): r is WorkerPool => r !== null);
  }

  async getPool(tenantId: string, poolId: string): Promise<WorkerPool | null> {
    assertPoolIds(tenantId, poolId);
    return this.readRecordIn<WorkerPool>(poolDirs(tenantId, poolId), FILES.pool, idsMatch({ tenantId, poolId }));
  }

  /** The tenant record must exist (not_found otherwise), so a pool never outlives or precedes its tenant. */
  async putPool(pool: WorkerPool): Promise<void> {
    assertPoolIds(pool.tenantId, pool.poolId);
    await this.requireRecord(["tenants", pool.tenantId], FILES.tenant, `tenant ${pool.tenantId}`);
    await this.ensureDirs(poolDirs(pool.tenantId, pool.poolId));
    await this.writeRecord(this.path(...poolDirs(pool.tenantId, pool.poolId), FILES.pool), pool);
  }

  async deletePool(tenantId: string, poolId: string): Promise<void> {
    assertPoolIds(tenantId, poolId);
    await this.deleteDir(["tenants", tenantId, "pools"], poolId);
  }

  // ---- builds -----------------------------------------------------------------------------------------------------

  async listBuilds(tenantId: string, poolId: string): Promise<BuildRevision[]> {
    assertPoolIds(tenantId, poolId);
    return (await this.readBuildHistory(tenantId, poolId))?.builds ?? [];
  }

  async appendBuild(tenantId: string, poolId: string, revision: BuildRevision, keep: number): Promise<void> {
    assertPoolIds(tenantId, poolId);
    if (!Number.isSafeInteger(keep) || keep < 1) throw invalidField("keep", "must be an integer of at least 1");
    await this.requireRecord(poolDirs(tenantId, poolId), FILES.pool, `pool ${tenantId}/${poolId}`);
    const history = await this.readBuildHistory(tenantId, poolId);
    const builds = [...(history?.builds ?? []), revision].slice(-keep);
    const record: BuildHistoryRecord = { schemaVersion: SCHEMA_VERSION, tenantId, poolId, builds };
    await this.writeRecord(this.path(...poolDirs(tenantId, poolId), FILES.builds), record);
  }

  async removeBuilds(tenantId: string, poolId: string, revisions: readonly string[]): Promise<void> {
    assertPoolIds(tenantId, poolId);
    const history = await this.readBuildHistory(tenantId, poolId);
    if (history === null) return;
    const gone = new Set(revisions);
    const builds = history.builds.filter((b) => !gone.has(b.revision));
    if (builds.length === history.builds.length) return;
    await this.writeRecord(this.path(...poolDirs(tenantId, poolId), FILES.builds), { ...history, builds });
  }

  private async readBuildHistory(tenantId: string, poolId: string): Promise<BuildHistoryRecord | null> {
    const check: ShapeCheck = (v) => {
      const ids = idsMatch({ tenantId, poolId })(v);
      if (ids !== null) return ids;
      if (!Array.isArray(v.builds)) return "builds is not a list";
      const bad = v.builds.findIndex((b) => typeof b !== "object" || b === null || typeof b.revision !== "string");
      return bad >= 0 ? `builds[${bad}] has no revision` : null;
    };
    return this.readRecordIn<BuildHistoryRecord>(poolDirs(tenantId, poolId), FILES.builds, check);
  }

  // ---- instances --------------------------------------------------------------------------------------------------

  async listInstances(tenantId: string, poolId: string): Promise<Instance[]> {
    assertPoolIds(tenantId, poolId);
    const ids = await this.listChildIds([...poolDirs(tenantId, poolId), "instances"], isValidInstanceId);
    const records = await Promise.all(ids.map((id) => this.getInstance(tenantId, poolId, id)));
    return records.filter((r): r is Instance => r !== null);
  }

  async getInstance(tenantId: string, poolId: string, instanceId: string): Promise<Instance | null> {
    assertInstanceIds(tenantId, poolId, instanceId);
    const check = idsMatch({ tenantId, poolId, instanceId });
    return this.readRecordIn<Instance>(instanceDirs(tenantId, poolId, instanceId), FILES.instance, check);
  }

  /** The pool record must exist (not_found otherwise). */
  async putInstance(instance: Instance): Promise<void> {
    assertInstanceIds(instance.tenantId, instance.poolId, instance.instanceId);
    const { tenantId, poolId } = instance;
    await this.requireRecord(poolDirs(tenantId, poolId), FILES.pool, `pool ${tenantId}/${poolId}`);
    const dirs = instanceDirs(instance.tenantId, instance.poolId, instance.instanceId);
    await this.ensureDirs(dirs);
    await this.writeRecord(this.path(...dirs, FILES.instance), instance);
  }

  async deleteInstance(tenantId: string, poolId: string, instanceId: string): Promise<void> {
    assertInstanceIds(tenantId, poolId, instanceId);
    await this.deleteDir([...poolDirs(tenantId, poolId), "instances"], instanceId);
  }

  instanceDir(tenantId: string, poolId: string, instanceId: string): string {
    assertInstanceIds(tenantId, poolId, instanceId);
    return this.path(...instanceDirs(tenantId, poolId, instanceId));
  }

  // ---- locks ------------------------------------------------------------------------------------------------------

  /** Re-entrant. May be taken inside withNodeLock; taking a second tenant lock inside it is refused (lock-order.ts). */
  async withTenantLock<T>(tenantId: string, fn: () => Promise<T>): Promise<T> {
    assertId(tenantId, "tenant_id");
    return this.withStoreLock({ kind: "tenant", tenantId }, fn);
  }

  /** Re-entrant. Must not be taken while holding a tenant lock (lock-order.ts). */
  async withNodeLock<T>(fn: () => Promise<T>): Promise<T> {
    return this.withStoreLock({ kind: "node" }, fn);
  }

  private async withStoreLock<T>(key: StoreLockKey, fn: () => Promise<T>): Promise<T> {
    const violation = lockOrderViolation(this.heldStoreLocks(), key);
    if (violation !== null) throw new MvmError("internal", violation);
    const label = key.kind === "node" ? "node" : `tenant ${key.tenantId}`;
    return withFileLock(this.lockPath(key), fn, { timeoutMs: this.lockTimeoutMs, label });
  }

  private lockPath(key: StoreLockKey): string {
    return this.path("locks", key.kind === "node" ? "node.lock" : `tenant-${key.tenantId}.lock`);
  }

  /** The store locks of this data root held by the current async chain. */
  private heldStoreLocks(): StoreLockKey[] {
    const locksDir = this.path("locks") + "/";
    const keys: StoreLockKey[] = [];
    for (const held of heldFileLocks()) {
      if (!held.startsWith(locksDir)) continue;
      const name = held.slice(locksDir.length);
      if (name === "node.lock") keys.push({ kind: "node" });
      const tenant = /^tenant-(.+)\.lock$/.exec(name);
      if (tenant !== null) keys.push({ kind: "tenant", tenantId: tenant[1] as string });
    }
    return keys;
  }

  // ---- broken records and sweeping ----------------------------------------------------------------------------------

  async brokenRecords(): Promise<BrokenRecord[]> {
    const found: BrokenRecord[] = [];
    for (const dir of await this.recordDirs()) {
      for (const name of await readdirOrEmpty(dir)) {
        if (!name.endsWith(BROKEN_SUFFIX)) continue;
        const path = join(dir, name);
        const reason = await readFile(path + REASON_SUFFIX, "utf8").then(
          (text) => text.trim(),
          () => "no reason was recorded",
        );
        found.push({ path, reason });
      }
    }
    return found.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }

  /**
   * Finishes deletions a crash interrupted and removes temp files of writers that no longer run. Safe to run while
   * other processes use the store: live writers' temp files are kept.
   */
  async sweep(): Promise<SweepResult> {
    const finishedDeletions: string[] = [];
    const removedTempFiles: string[] = [];
    const containers = [this.path("tenants")];
    for (const tenant of await this.childDirNames(["tenants"])) {
      containers.push(this.path("tenants", tenant, "pools"));
      for (const pool of await this.childDirNames(["tenants", tenant, "pools"])) {
        containers.push(this.path("tenants", tenant, "pools", pool, "instances"));
      }
    }
    for (const dir of containers) {
      for (const name of await readdirOrEmpty(dir)) {
        if (!name.startsWith(DELETING_PREFIX)) continue;
        await rm(join(dir, name), { recursive: true, force: true });
        finishedDeletions.push(join(dir, name));
      }
    }
    for (const dir of [...(await this.recordDirs()), this.path("locks")]) {
      removedTempFiles.push(...(await removeAbandonedTempFiles(dir)));
    }
    return { finishedDeletions, removedTempFiles };
  }

  /** Every directory that holds record files: the root, tenant, ssh, pool and instance directories. */
  private async recordDirs(): Promise<string[]> {
    const dirs = [this.dataRoot];
    for (const tenant of await this.childDirNames(["tenants"])) {
      dirs.push(this.path("tenants", tenant), this.path("tenants", tenant, "ssh"));
      for (const pool of await this.childDirNames(["tenants", tenant, "pools"])) {
        dirs.push(this.path(...poolDirs(tenant, pool)));
        for (const instance of await this.childDirNames([...poolDirs(tenant, pool), "instances"])) {
          dirs.push(this.path(...instanceDirs(tenant, pool, instance)));
        }
      }
    }
    return dirs;
  }

  /** Real (non-symlink) subdirectories of `segments` whose names are not dot names. */
  private async childDirNames(segments: string[]): Promise<string[]> {
    const entries = await readdir(this.path(...segments), { withFileTypes: true }).catch((e: unknown) => {
      if (errnoCode(e) === "ENOENT" || errnoCode(e) === "ENOTDIR") return [];
      throw e;
    });
    return entries.filter((e) => e.isDirectory() && !e.name.startsWith(".")).map((e) => e.name);
  }

  // ---- paths and directories ----------------------------------------------------------------------------------------

  private path(...segments: string[]): string {
    return join(this.dataRoot, ...segments);
  }

  /**
   * IDs of the child directories of `segments`, sorted. Dot names (deletions in progress, temp files) and names that
   * are not IDs are not records and are skipped; a symlink where a record directory belongs is refused.
   */
  private async listChildIds(segments: string[], isId: (name: string) => boolean): Promise<string[]> {
    if (!(await this.dirsExist(segments))) return [];
    const entries = await readdir(this.path(...segments), { withFileTypes: true });
    const ids: string[] = [];
    for (const entry of entries) {
      if (entry.name.startsWith(".") || !isId(entry.name)) continue;
      if (entry.isSymbolicLink()) throw symlinkRefused(join(...segments, entry.name));
      if (entry.isDirectory()) ids.push(entry.name);
    }
    return ids.sort();
  }

  /** Whether every directory along `segments` exists; throws if one of them is a symlink or not a directory. */
  /** Synchronous for the reason readJsonRecord gives: a few lstats of cached inodes, on every record read. */
  private async dirsExist(segments: string[]): Promise<boolean> {
    for (let i = 1; i <= segments.length; i++) {
      const rel = join(...segments.slice(0, i));
      let stat;
      try {
        stat = lstatSync(this.path(rel));
      } catch (e) {
        if (errnoCode(e) === "ENOENT") return false;
        throw e;
      }
      if (stat.isSymbolicLink()) throw symlinkRefused(rel);
      if (!stat.isDirectory()) throw notADirectory(rel);
    }
    return true;
  }

  /** Creates the directories along `segments` (0700), refusing any that is a symlink. */
  private async ensureDirs(segments: string[]): Promise<void> {
    // Nearly always they exist already (every write of an existing record comes here): checking that takes a few
    // synchronous lstats, where a mkdir and an lstat per level each take a thread-pool round trip.
    if (await this.dirsExist(segments)) return;
    for (let i = 1; i <= segments.length; i++) {
      const rel = join(...segments.slice(0, i));
      try {
        await mkdir(this.path(rel), { mode: DIR_MODE });
      } catch (e) {
        if (errnoCode(e) !== "EEXIST") throw e;
      }
      const stat = await lstat(this.path(rel));
      if (stat.isSymbolicLink()) throw symlinkRefused(rel);
      if (!stat.isDirectory()) throw notADirectory(rel);
    }
  }

  private async requireRecord(dirSegments: string[], file: string, what: string): Promise<void> {
    if (!(await this.dirsExist(dirSegments)) || lstatSync(this.path(...dirSegments, file), { throwIfNoEntry: false }) === undefined) {
      throw notFound(what);
    }
  }

  /** Renames the directory aside first, so a crash part-way through never leaves a half directory that looks live. */
  private async deleteDir(parentSegments: string[], name: string): Promise<void> {
    if (!(await this.dirsExist([...parentSegments, name]))) return;
    const parent = this.path(...parentSegments);
    const aside = join(parent, `${DELETING_PREFIX}${name}-${randomBytes(6).toString("hex")}`);
    try {
      await rename(join(parent, name), aside);
    } catch (e) {
      if (errnoCode(e) === "ENOENT") return;
      throw e;
    }
    await syncDirectory(parent);
    await rm(aside, { recursive: true, force: true });
  }

  // ---- records ------------------------------------------------------------------------------------------------------

  private async writeRecord(path: string, record: object): Promise<void> {
    await writeFileAtomic(path, serialize({ ...record, schemaVersion: SCHEMA_VERSION }), { mode: RECORD_MODE });
  }

  /**
   * The record `file` in the directory `dirs`, or null when it or a directory on the way is absent. The directories
   * are checked (no symlinks) unless the record cache holds the very file, which was read through checked ones.
   */
  private async readRecordIn<T>(dirs: string[], file: string, check: ShapeCheck): Promise<T | null> {
    // Joined by hand: the segments are validated IDs and fixed names, so there is nothing for path.join to normalise.
    const path = `${this.dataRoot}/${dirs.join("/")}/${file}`;
    const cached = this.records.lookup(path);
    if (cached !== undefined) return cached as T;
    if (!(await this.dirsExist(dirs))) return null;
    return this.readRecord<T>(path, check);
  }

  /** The record at `path`, or null when it is absent or was moved aside as broken. */
  private async readRecord<T>(path: string, check: ShapeCheck): Promise<T | null> {
    const cached = this.records.lookup(path);
    if (cached !== undefined) return cached as T;
    const read = await readJsonRecord(path);
    if (read.status === "missing") return null;
    if (read.status === "unparseable") {
      await this.moveAside(path, read.ino, read.reason);
      return null;
    }
    const problem = schemaProblem(read.value) ?? check(read.value as Record<string, unknown>);
    if (problem !== null) {
      await this.moveAside(path, read.ino, problem);
      return null;
    }
    this.records.remember(path, read.stat, read.value);
    return read.value as T;
  }

  /**
   * Moves the record at `path` to `<path>.broken` (or a timestamped name if that exists) and records why. Only inode
   * `ino` is moved aside: if a writer replaced the record since it was read, the newer record is put back.
   */
  private async moveAside(path: string, ino: number, reason: string): Promise<void> {
    let target = path + BROKEN_SUFFIX;
    if (await exists(target)) {
      const stamp = new Date(this.clock.nowMs()).toISOString().replace(/[:.]/g, "-");
      target = `${path}.${stamp}${BROKEN_SUFFIX}`;
      if (await exists(target)) target = `${path}.${stamp}-${randomBytes(4).toString("hex")}${BROKEN_SUFFIX}`;
    }
    try {
      await rename(path, target);
    } catch (e) {
      if (errnoCode(e) === "ENOENT") return; // another reader moved it first
      throw e;
    }
    const moved = await lstat(target);
    if (moved.ino !== ino) {
      // A writer replaced the record after it was read: put the newer one back (link cannot overwrite a yet newer one).
      await link(target, path).catch((e: unknown) => {
        if (errnoCode(e) !== "EEXIST") throw e;
      });
      await unlinkIfPresent(target);
      return;
    }
    const fullReason = `${relativeTo(this.dataRoot, path)}: ${reason}`;
    await writeFileAtomic(target + REASON_SUFFIX, `${fullReason}\n`, { mode: RECORD_MODE });
    this.onBroken({ path: target, reason: fullReason });
  }
}

// ---- helpers --------------------------------------------------------------------------------------------------------

function serialize(record: object): string {
  return `${JSON.stringify(record, null, 2)}\n`;
}

function withFinalNewline(text: string): string {
  return text.endsWith("\n") ? text : `${text}\n`;
}

function relativeTo(root: string, path: string): string {
  return path.startsWith(root + "/") ? path.slice(root.length + 1) : path;
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (e) {
    if (errnoCode(e) === "ENOENT" || errnoCode(e) === "ENOTDIR") return [];
    throw e;
  }
}

function schemaProblem(value: unknown): string | null {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return "is not a JSON object";
  const version = (value as Record<string, unknown>).schemaVersion;
  if (typeof version !== "number" || !Number.isSafeInteger(version) || version < 1) {
    return "schema_version is missing or not a positive integer";
  }
  if (version > SCHEMA_VERSION) {
    return `schema_version ${version} is newer than this build supports (${SCHEMA_VERSION})`;
  }
  return null;
}

/** A shape check: each given ID field must equal the directory the record sits in. */
function idsMatch(expected: { tenantId?: string; poolId?: string; instanceId?: string }): ShapeCheck {
  return (value) => {
    for (const [key, want] of Object.entries(expected)) {
      const got = value[key];
      if (got !== want) {
        const field = key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
        return `${field} is ${JSON.stringify(got) ?? "missing"} but the record sits in the directory of ${want}`;
      }
    }
    return null;
  };
}

function notADirectory(rel: string): MvmError {
  return new MvmError("failed_precondition", `${rel} in the data root is not a directory`);
}

function symlinkRefused(rel: string): MvmError {
  return new MvmError("failed_precondition", `${rel} in the data root is a symbolic link; refusing to follow it`);
}

function poolDirs(tenantId: string, poolId: string): string[] {
  return ["tenants", tenantId, "pools", poolId];
}

function instanceDirs(tenantId: string, poolId: string, instanceId: string): string[] {
  return [...poolDirs(tenantId, poolId), "instances", instanceId];
}

function assertPoolIds(tenantId: string, poolId: string): void {
  assertId(tenantId, "tenant_id");
  assertId(poolId, "pool_id");
}

function assertInstanceIds(tenantId: string, poolId: string, instanceId: string): void {
  assertPoolIds(tenantId, poolId);
  assertInstanceId(instanceId, "instance_id");
}
