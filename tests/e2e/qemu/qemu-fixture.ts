// A kernel and a tiny initramfs for the QEMU adapter's e2e tests, built once and cached under .cache/qemu-test/:
// Debian's cloud kernel (vmlinux extracted from the LZ4 frame inside vmlinuz, as VM-NOTES describes) and a
// busybox-static initramfs whose /init loads the virtio and power-button modules, describes the devices it sees,
// then behaves as `mvm.test=` on the kernel command line asks:
//   ready (default)  prints `MVM-READY <mvm.instance>`, powers off when the ACPI power button is pressed
//   deaf             prints the ready line but ignores the power button (shutdown must fall back to quit)
//   fail             prints `MVM-FAILED <reason>` and stays up (boot must fail on the line, not on an exit)
//   hang             prints nothing and stays up (boot must time out)
//   exit             powers off at once without reporting

import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { access, copyFile, mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile, chmod } from "node:fs/promises";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import { execa } from "execa";
import { REPO_ROOT } from "../../helpers/transpile.js";

const run = promisify(execFile);

export interface QemuTestFixture {
  kernel: string;
  initramfs: string;
}

const CACHE_DIR = join(REPO_ROOT, ".cache", "qemu-test");
const BUSYBOX = "/bin/busybox";
/** Load order matters: each module needs the ones before it. */
const MODULES = [
  "drivers/virtio/virtio_ring",
  "drivers/virtio/virtio",
  "drivers/virtio/virtio_mmio",
  "drivers/block/virtio_blk",
  "net/core/failover",
  "drivers/net/net_failover",
  "drivers/net/virtio_net",
  "drivers/acpi/button",
  "drivers/input/evdev",
];

const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ${MODULES.map((m) => m.split("/").pop()).join(" ")}; do insmod /lib/modules/$m.ko; done
id=""; mode=ready
for a in $(cat /proc/cmdline); do
  case "$a" in
    mvm.instance=*) id="\${a#mvm.instance=}" ;;
    mvm.test=*) mode="\${a#mvm.test=}" ;;
  esac
done
disks=""
for d in /sys/block/vd*; do [ -e "$d" ] && disks="$disks $(basename $d):$(cat $d/size):$(cat $d/ro)"; done
echo "MVM-DISKS$disks"
echo "MVM-MAC $(cat /sys/class/net/eth0/address 2>/dev/null)"
power_button() {
  for e in /dev/input/event*; do
    (head -c 1 "$e" >/dev/null; echo "MVM-POWER"; poweroff -f) &
  done
}
case "$mode" in
  ready) power_button; echo "MVM-READY $id" ;;
  deaf) echo "MVM-READY $id" ;;
  fail) echo "MVM-FAILED test init was asked to fail" ;;
  hang) ;;
  exit) poweroff -f ;;
esac
while true; do sleep 3600; done
`;

let building: Promise<QemuTestFixture> | undefined;

/** The cached fixture, built on first use (downloads the kernel package when apt has none cached). */
export function ensureQemuTestFixture(): Promise<QemuTestFixture> {
  building ??= build();
  return building;
}

async function build(): Promise<QemuTestFixture> {
  const stamp = createHash("sha256").update(INIT_SCRIPT).update(MODULES.join(",")).digest("hex").slice(0, 16);
  const kernel = join(CACHE_DIR, "vmlinux");
  const initramfs = join(CACHE_DIR, `initramfs-${stamp}.cpio`);
  if ((await exists(kernel)) && (await exists(initramfs))) return { kernel, initramfs };

  await mkdir(CACHE_DIR, { recursive: true });
  const work = await mkdtemp(join(CACHE_DIR, ".build-"));
  try {
    const deb = await kernelPackage(work);
    const tree = join(work, "pkg");
    await run("dpkg-deb", ["-x", deb, tree]);
    const boot = join(tree, "boot");
    const vmlinuz = (await readdir(boot)).find((f) => f.startsWith("vmlinuz-"));
    if (vmlinuz === undefined) throw new Error(`no vmlinuz in ${deb}`);
    const release = vmlinuz.slice("vmlinuz-".length);
    const elf = await extractVmlinux(await readFile(join(boot, vmlinuz)));

    const root = join(work, "initramfs");
    await mkdir(join(root, "bin"), { recursive: true });
    await mkdir(join(root, "lib", "modules"), { recursive: true });
    for (const d of ["proc", "sys", "dev"]) await mkdir(join(root, d));
    await copyFile(BUSYBOX, join(root, "bin", "busybox"));
    await chmod(join(root, "bin", "busybox"), 0o755);
    for (const m of MODULES) {
      const name = m.split("/").pop() as string;
      await copyFile(join(tree, "lib", "modules", release, "kernel", `${m}.ko`), join(root, "lib", "modules", `${name}.ko`));
    }
    await writeFile(join(root, "init"), INIT_SCRIPT, { mode: 0o755 });
    const list = (await listTree(root)).map((p) => relative(root, p)).join("\n");
    const cpio = await execa("cpio", ["-o", "-H", "newc", "--quiet"], { cwd: root, input: `${list}\n`, encoding: "buffer" });

    await writeFile(join(work, "vmlinux"), elf);
    await writeFile(join(work, "initramfs.cpio"), cpio.stdout);
    await rename(join(work, "vmlinux"), kernel);
    await rename(join(work, "initramfs.cpio"), initramfs);
    return { kernel, initramfs };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** A cloud kernel package from apt's cache, else downloaded with apt-get. */
async function kernelPackage(work: string): Promise<string> {
  const archives = "/var/cache/apt/archives";
  const cached = (await readdir(archives).catch(() => [] as string[]))
    .filter((f) => /^linux-image-[0-9][^_]*-cloud-amd64_.*\.deb$/.test(f) && !/-(dbg|unsigned)_/.test(f))
    .sort();
  const newest = cached[cached.length - 1];
  if (newest !== undefined) return join(archives, newest);
  const { stdout } = await run("apt-cache", ["depends", "linux-image-cloud-amd64"]);
  const name = /Depends:\s*(linux-image-\S+-cloud-amd64)/.exec(stdout)?.[1];
  if (name === undefined) throw new Error("apt knows no linux-image-cloud-amd64 dependency");
  await run("apt-get", ["download", name], { cwd: work });
  const deb = (await readdir(work)).find((f) => f.startsWith(`${name}_`) && f.endsWith(".deb"));
  if (deb === undefined) throw new Error(`apt-get download ${name} produced no package`);
  return join(work, deb);
}

/** Finds the LZ4 legacy frame (magic 02 21 4c 18) whose content is an ELF file. */
async function extractVmlinux(vmlinuz: Buffer): Promise<Buffer> {
  const magic = Buffer.from([0x02, 0x21, 0x4c, 0x18]);
  for (let at = vmlinuz.indexOf(magic); at >= 0; at = vmlinuz.indexOf(magic, at + 1)) {
    const out = await execa("lz4", ["-dc"], { input: vmlinuz.subarray(at), encoding: "buffer", reject: false });
    const elf = Buffer.from(out.stdout);
    if (elf.subarray(0, 4).equals(Buffer.from("\x7fELF", "latin1"))) return elf;
  }
  throw new Error("no LZ4 frame holding an ELF kernel in vmlinuz");
}

async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    out.push(path);
    if (entry.isDirectory()) out.push(...(await listTree(path)));
  }
  return out;
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
