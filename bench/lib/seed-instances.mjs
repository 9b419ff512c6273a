// Instance records for control-plane benchmarks, shared by watch-latency.mjs and agent-memory.mjs.

import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const dist = (path) => pathToFileURL(join(root, "dist", path)).href;

const { createTenant } = await import(dist("src/core/use-cases/tenants.js"));
const { createPool } = await import(dist("src/core/use-cases/pools.js"));
const { createInstance } = await import(dist("src/core/use-cases/instances.js"));
const { macAddress, tapName } = await import(dist("src/core/naming.js"));
const { allocateGuestAddress, parseCidr } = await import(dist("src/core/subnet.js"));

/**
 * Writes `count` instance records spread over `tenants` tenants (one pool each) and returns them. The first instance
 * of each pool comes from the createInstance use case; the rest are copies of it with their own ID, address, tap and
 * MAC, written straight to the store, because the use case re-reads every record of the node on each create
 * (quadratic: minutes for 1000).
 */
export async function seedInstances(runtime, count, tenants) {
  const perTenant = Math.ceil(count / tenants);
  const records = [];
  const taken = new Set();
  for (let t = 0; t < tenants && records.length < count; t++) {
    const tenantId = `bench-${t}`;
    const tenant = await createTenant(runtime, { tenantId, quotas: { maxInstancesPerPool: perTenant } });
    await createPool(runtime, { tenantId, poolId: "web" }, {});
    const template = await createInstance(runtime, { tenantId, poolId: "web" });
    taken.add(template.instanceId);
    records.push(template);
    const subnet = parseCidr(tenant.network.ipv4Subnet, "network.ipv4_subnet");
    const usedIps = new Set([template.net.guestIp]);
    for (let i = 1; i < perTenant && records.length < count; i++) {
      let instanceId;
      do instanceId = `i-${runtime.ids.randomHex(4)}`;
      while (taken.has(instanceId));
      taken.add(instanceId);
      const { ip, offset } = allocateGuestAddress(subnet, usedIps);
      usedIps.add(ip);
      const netId = tenant.network.netId;
      const net = { ...template.net, guestIp: ip, tapName: tapName(netId, offset), mac: macAddress(netId, offset) };
      const instance = { ...template, instanceId, net };
      await runtime.store.putInstance(instance);
      records.push(instance);
    }
  }
  return records;
}
