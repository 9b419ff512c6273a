// Garbage collection (SPEC §11): what a crash, a kill -9 or a failure during cleanup left behind, and build revisions
// beyond those kept. Each tenant is judged under its lock, against records read under that lock, so nothing an
// operation is still working on is taken for garbage.
//
// Found here: processes in the cgroup of an instance that holds no VMM, the cgroups of instances that hold no
// reservation, TAPs on a tenant's bridge without an instance that holds one, snapshots of instances that are not
// sleeping, and revisions that are neither current, in use, nor among the newest kept. Cgroups this data root has no
// record of are not its own to judge (see groupRemovals). Bridges of net IDs no tenant holds are, with their TAPs and
// nftables entries. Firecracker jail leftovers, stray files and the shared image cache are not looked at yet.

import type { CgroupKey, RevisionFiles } from "../data-plane-ports.js";
import { invalidField } from "../errors.js";
import type { Instance, Tenant } from "../model.js";
import { bridgeName } from "../naming.js";
import { holdsReservations, holdsVmm, reservedTaps } from "../reservations.js";
import { instanceFiles, tenantNetworkPlan, type DataPlaneDeps } from "./lifecycle.js";
import { LOCAL_ACTOR } from "./audit-trail.js";

export type GarbageKind = "process" | "tap" | "cgroup" | "bridge" | "snapshot" | "revision";

export interface GarbageOwner {
  tenantId: string;
  poolId?: string;
  instanceId?: string;
}

export interface GarbageItem {
  kind: GarbageKind;
  /** `pid <n>`, a TAP's name, `<tenant>/<pool>/<instance>` for a cgroup, or a directory. */
  name: string;
  owner: GarbageOwner;
  /** Bytes removing it frees; 0 where that means nothing (processes, TAPs, cgroups). */
  sizeBytes: number;
  removed: boolean;
  /** Why removing it failed; empty when it was removed or nothing was attempted. */
  error: string;
}

export interface GarbageReport {
  items: GarbageItem[];
  /** Bytes freed by what was removed. */
  reclaimedBytes: number;
  applied: boolean;
}

export interface GarbageOptions {
  /** Remove what is found; false lists only. */
  apply: boolean;
  /** Built revisions kept per pool beside the current one and those in use; 0 means the whole build history. */
  keepRevisions?: number;
}

export interface GarbageDeps extends DataPlaneDeps {
  revisionFiles: RevisionFiles;
}

/** The build history's length (builds.ts): by default every revision a rollback can still name is kept. */
export const DEFAULT_KEEP_REVISIONS = 20;
/** A revision directory this young may belong to a build that has not recorded it yet: left alone. */
export const FRESH_REVISION_MS = 10 * 60_000;
/** How long the processes of a cgroup have to go after their KILL. */
const KILL_WAIT_MS = 5_000;
const KIND_ORDER: readonly GarbageKind[] = ["process", "tap", "cgroup", "bridge", "snapshot", "revision"];

const keyName = (k: CgroupKey) => `${k.tenantId}/${k.poolId}/${k.instanceId}`;

interface Removal {
  item: GarbageItem;
  remove: () => Promise<void>;
}

export async function collectGarbage(deps: GarbageDeps, options: GarbageOptions): Promise<GarbageReport> {
  const keep = options.keepRevisions ?? 0;
  if (!Number.isSafeInteger(keep) || keep < 0) throw invalidField("keep_revisions", "must be a whole number of at least 0 (0 keeps the whole build history)");
  const keepRevisions = keep === 0 ? DEFAULT_KEEP_REVISIONS : keep;
  const groups = await deps.cgroups.list();
  const items: GarbageItem[] = [];
  const tenants = await deps.store.listTenants();
  for (const tenant of tenants) {
    const mine = groups.filter((g) => g.tenantId === tenant.tenantId);
    items.push(...(await deps.store.withTenantLock(tenant.tenantId, () => collectTenant(deps, tenant, mine, keepRevisions, options.apply))));
  }
  // Bridges (with their TAPs and nftables entries) of net IDs no tenant holds: a tenant's deletion that died half
  // way. Judged under the node lock, which tenant creation and deletion take. The namespace is this data root's.
  items.push(
    ...(await deps.store.withNodeLock(async () => {
      const held = new Set((await deps.store.listTenants()).map((t) => t.network.netId));
      const stray = (await deps.network.netIdsPresent()).filter((id) => !held.has(id));
      return settle(
        deps,
        stray.map((netId) => ({ item: item("bridge", bridgeName(netId), { tenantId: "" }, 0), remove: () => deps.network.removeNetIdLeftovers(netId) })),
        options.apply,
      );
    })),
  );
  items.sort((a, b) => KIND_ORDER.indexOf(a.kind) - KIND_ORDER.indexOf(b.kind) || a.name.localeCompare(b.name));
  return { items, reclaimedBytes: items.reduce((sum, i) => sum + (i.removed ? i.sizeBytes : 0), 0), applied: options.apply };
}

async function collectTenant(deps: GarbageDeps, tenant: Tenant, groups: CgroupKey[], keepRevisions: number, apply: boolean): Promise<GarbageItem[]> {
  const pools = await deps.store.listPools(tenant.tenantId);
  const instances = (await Promise.all(pools.map((p) => deps.store.listInstances(tenant.tenantId, p.poolId)))).flat();
  const byKey = new Map(instances.map((i) => [keyName(i), i] as const));
  const removals: Removal[] = [];

  removals.push(...(await groupRemovals(deps, groups, byKey)));

  const plan = tenantNetworkPlan(tenant, deps.metadataPort);
  const network = await deps.network.verify(plan, reservedTaps(instances), false);
  for (const tap of network.strayTaps) {
    removals.push({
      item: item("tap", tap, { tenantId: tenant.tenantId }, 0),
      remove: () => deps.network.removeTap(plan, tap),
    });
  }

  for (const instance of instances.filter((i) => i.status !== "sleeping")) {
    const dir = instanceFiles(deps.paths, instance).snapshotDir;
    const bytes = await deps.snapshots.diskBytes(dir);
    if (bytes !== null) removals.push({ item: item("snapshot", dir, ownerOf(instance), bytes), remove: () => deps.snapshots.remove(dir) });
  }

  for (const pool of pools) {
    const history = await deps.store.listBuilds(tenant.tenantId, pool.poolId);
    const kept = new Set([
      ...(pool.currentRevision ? [pool.currentRevision] : []),
      ...instances.filter((i) => i.poolId === pool.poolId && i.revision).map((i) => i.revision as string),
      ...history.slice(-keepRevisions).map((b) => b.revision),
    ]);
    for (const onDisk of await deps.revisionFiles.list(tenant.tenantId, pool.poolId)) {
      // A build renames its revision into place before it waits for this lock to record it.
      if (kept.has(onDisk.revision) || deps.clock.nowMs() - onDisk.changedAtMs < FRESH_REVISION_MS) continue;
      removals.push({
        item: item("revision", deps.paths.revisionDir(tenant.tenantId, pool.poolId, onDisk.revision), { tenantId: tenant.tenantId, poolId: pool.poolId }, onDisk.freedBytes),
        remove: async () => {
          await deps.revisionFiles.remove(tenant.tenantId, pool.poolId, onDisk.revision);
          // A rollback must not be able to name a revision whose files are gone.
          await deps.store.removeBuilds(tenant.tenantId, pool.poolId, [onDisk.revision]);
        },
      });
    }
  }
  return settle(deps, removals, apply);
}

/**
 * Groups of this data root's instances that hold no reservation are garbage, and so are the processes in them; a
 * group whose instance runs is its own, processes included (refreshing an instance's health is another job). A group
 * this data root has no instance record for is left alone: the cgroup parent may be shared with other data roots
 * (test runs, several agents), whose tenants may bear the same names. Instance IDs are random, so a record is proof
 * of ownership; a crash leaves the record (an instance is created before it starts and deleted after its VMM ends).
 */
async function groupRemovals(deps: GarbageDeps, groups: CgroupKey[], byKey: Map<string, Instance>): Promise<Removal[]> {
  const removals: Removal[] = [];
  for (const key of groups) {
    const owner = byKey.get(keyName(key));
    if (owner === undefined || holdsVmm(owner)) continue;
    const ownerRef = { tenantId: key.tenantId, poolId: key.poolId, instanceId: key.instanceId };
    const pids = await deps.cgroups.processes(key);
    if (pids.length > 0) {
      // One KILL pass for the group, listed once per process it held.
      let killing: Promise<unknown> | null = null;
      for (const pid of pids) {
        removals.push({ item: item("process", `pid ${pid}`, ownerRef, 0), remove: async () => void (await (killing ??= deps.cgroups.killProcesses(key, KILL_WAIT_MS))) });
      }
    }
    if (!holdsReservations(owner)) {
      removals.push({ item: item("cgroup", keyName(key), ownerRef, 0), remove: () => deps.cgroups.remove(key) });
    }
  }
  return removals;
}

function item(kind: GarbageKind, name: string, owner: GarbageOwner, sizeBytes: number): GarbageItem {
  return { kind, name, owner, sizeBytes, removed: false, error: "" };
}

function ownerOf(instance: Instance): GarbageOwner {
  return { tenantId: instance.tenantId, poolId: instance.poolId, instanceId: instance.instanceId };
}

/** In kind order (processes before the groups and TAPs they hold), each removal on its own, each one audited. */
async function settle(deps: GarbageDeps, removals: Removal[], apply: boolean): Promise<GarbageItem[]> {
  if (!apply) return removals.map((r) => r.item);
  const ordered = [...removals].sort((a, b) => KIND_ORDER.indexOf(a.item.kind) - KIND_ORDER.indexOf(b.item.kind));
  for (const r of ordered) {
    try {
      await r.remove();
      r.item.removed = true;
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      r.item.error = why.charAt(0).toLowerCase() + why.slice(1);
    }
    const { owner } = r.item;
    await deps.audit?.append({
      tenantId: owner.tenantId,
      actor: deps.actor ?? LOCAL_ACTOR,
      action: "garbage_collect",
      // A node-level item (tenant "") goes to the node's log, named by itself.
      target: owner.tenantId === "" ? r.item.name : [owner.tenantId, owner.poolId, owner.instanceId].filter((s) => s !== undefined).join("/"),
      outcome: r.item.removed ? "success" : "failure",
      reason: r.item.error,
      details: { kind: r.item.kind, name: r.item.name, size_bytes: String(r.item.sizeBytes) },
    });
  }
  return removals.map((r) => r.item);
}
