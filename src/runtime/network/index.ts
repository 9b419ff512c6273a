// The Linux `Network` adapter and the pure pieces it is built from (rulesets, inspection), for wiring and tests.
export { createLinuxNetwork, ensureNetns, type LinuxNetworkOptions } from "./linux-network.js";
export { ensureTenantInetScript, removeTenantInetScript, tenantChainNames, tenantInetRules } from "./inet-ruleset.js";
export { ensureTapGuardScript, removeTapGuardScript, tapGuardChain } from "./bridge-ruleset.js";
export { inspectTenantNetwork, type TenantNetworkObservation } from "./tenant-network-inspection.js";
