// The jail's files on the host (SPEC §6.6): the chroot directory is prepared before the jailer runs, with the VM's
// resources hard-linked into it (so the guest's disks are the instance's own files, not copies), the writable ones
// owned by the jailed uid/gid; after the VMM has exited the whole `<base>/<exec-file-name>/<id>` is removed, which is
// mvm's job, not the jailer's. Removal never follows a symlink planted inside the jail.

import { chown, link, mkdir, rm, rename, copyFile } from "node:fs/promises";
import { join } from "node:path";
import { failedPrecondition } from "../../core/errors.js";
import { errnoCode } from "../store/process-identity.js";
import type { JailLayout } from "./jailer-command.js";

export interface JailResource {
  /** Host path of the file to hard-link. */
  hostPath: string;
  /** File name inside the chroot's `/`. */
  name: string;
  /** Owned by the jailed uid/gid (it writes it, or opens it with restrictive permissions). */
  ownedByJail: boolean;
}

/** A jail as it must be before the jailer starts: empty root plus the linked resources. A stale jail is replaced. */
export async function prepareJail(layout: JailLayout, resources: readonly JailResource[], identity: { uid: number; gid: number }): Promise<void> {
  await rm(layout.jailDir, { recursive: true, force: true });
  await mkdir(layout.rootDir, { recursive: true, mode: 0o700 });
  await chown(layout.rootDir, identity.uid, identity.gid);
  for (const resource of resources) await linkIntoJail(layout, resource, identity);
}

export async function linkIntoJail(layout: JailLayout, resource: JailResource, identity: { uid: number; gid: number }): Promise<string> {
  if (resource.name.includes("/") || resource.name === "" || resource.name === "." || resource.name === "..") {
    throw failedPrecondition(`jail resource name ${JSON.stringify(resource.name)} must be a plain file name`);
  }
  const target = join(layout.rootDir, resource.name);
  await rm(target, { force: true });
  try {
    await link(resource.hostPath, target);
  } catch (e) {
    if (errnoCode(e) === "EXDEV") {
      throw failedPrecondition(
        `jailer: ${resource.hostPath} is on another file system than the chroot base ${layout.jailDir}: resources are hard-linked, so both must be on one`,
      );
    }
    throw e;
  }
  if (resource.ownedByJail) await chown(target, identity.uid, identity.gid);
  return target;
}

/** Moves a file Firecracker wrote inside the jail out to `destination` (renamed when possible, else copied). */
export async function moveOutOfJail(source: string, destination: string): Promise<void> {
  try {
    await rename(source, destination);
  } catch (e) {
    if (errnoCode(e) !== "EXDEV") throw e;
    await copyFile(source, destination);
    await rm(source, { force: true });
  }
}

/** Removes the jail; idempotent. Only the hard links go: the instance's own files stay. */
export async function removeJail(layout: JailLayout): Promise<void> {
  await rm(layout.jailDir, { recursive: true, force: true });
}
