// How much of the host one instance's cgroup may use, derived from the pool's resource shape (SPEC §6.4).

import type { CgroupLimits } from "../../core/data-plane-ports.js";

const MIB = 1024 * 1024;
const PAGE_BYTES = 4096;

/**
 * Fixed VMM overhead on top of guest RAM, MiB. A QEMU microvm measured here sits at 50–150 MiB beyond the guest's
 * pages (its own code and libraries, device emulation, I/O buffers, and under TCG the touched part of the
 * translated-code cache, which grows with the amount of guest code run); 160 MiB covers the top of that range.
 */
export const VMM_OVERHEAD_MIB = 160;
/**
 * Overhead that grows with guest RAM, as a fraction of it: page tables and the dirty bitmap used while saving a
 * sleeping guest (migration), plus headroom for TCG's code cache on larger guests.
 */
export const VMM_OVERHEAD_RAM_FRACTION = 0.1;
/** The CFS period, µs (the kernel default); the quota is vCPUs × this, so each vCPU may use one whole host CPU. */
export const CPU_PERIOD_US = 100_000;
/**
 * Burst allowance as a fraction of the quota (1: the most the kernel accepts). A VMM's CPU comes in bursts: a boot
 * sets up devices on QEMU's main thread while the vCPU thread runs the guest's kernel, a wake loads the memory stream
 * just before the guest resumes. With the quota alone, a cold boot of a 1-vCPU guest was throttled in 5-12 periods
 * (12-40 ms in all, bench/wake.mjs with the group's cpu.stat read around it); with the burst, in none. An instance
 * that has been idle may spend up to twice its vCPUs in one period; over time it still gets no more than its vCPUs.
 */
export const CPU_BURST_QUOTA_FRACTION = 1;
/** One QEMU uses about 7 tasks (main loop, vCPU and I/O threads); the rest is headroom for worker threads. */
export const VMM_PIDS_MAX = 64;

export function cgroupLimitsFor(resources: { vcpus: number; memMib: number }): CgroupLimits {
  const guestBytes = resources.memMib * MIB;
  const scaled = Math.ceil((guestBytes * VMM_OVERHEAD_RAM_FRACTION) / PAGE_BYTES) * PAGE_BYTES;
  return {
    memoryBytes: guestBytes + VMM_OVERHEAD_MIB * MIB + scaled,
    cpuQuotaUs: resources.vcpus * CPU_PERIOD_US,
    cpuPeriodUs: CPU_PERIOD_US,
    cpuBurstUs: Math.floor(resources.vcpus * CPU_PERIOD_US * CPU_BURST_QUOTA_FRACTION),
    pidsMax: VMM_PIDS_MAX,
  };
}
