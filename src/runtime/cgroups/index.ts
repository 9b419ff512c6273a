// The cgroupfs `Cgroups` adapter (v1 and v2) and the limits mvm gives each instance, for wiring and tests.
export { createCgroups, DEFAULT_CGROUP_PARENT, DEFAULT_CGROUP_ROOT, type CgroupsOptions } from "./linux-cgroups.js";
export { cgroupLimitsFor, CPU_PERIOD_US, VMM_OVERHEAD_MIB, VMM_OVERHEAD_RAM_FRACTION, VMM_PIDS_MAX } from "./cgroup-limits.js";
