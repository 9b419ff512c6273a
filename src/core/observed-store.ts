// A Store that tells an InstanceEventSink about every instance record it writes or deletes, so that watchers see
// every change whichever use case made it, without each use case having to remember to publish.

import type { InstanceEventSink } from "./observability-ports.js";
import type { Store } from "./ports.js";

export function observeInstanceWrites(store: Store, sink: InstanceEventSink): Store {
  const overrides: Partial<Store> = {};
  overrides.putInstance = async (instance) => {
    await store.putInstance(instance);
    sink.publish({ kind: "upsert", instance });
  };
  overrides.deleteInstance = async (tenantId, poolId, instanceId) => {
    const last = await store.getInstance(tenantId, poolId, instanceId);
    await store.deleteInstance(tenantId, poolId, instanceId);
    if (last) sink.publish({ kind: "deleted", instance: { ...last, status: "destroyed" } });
  };
  overrides.deletePool = async (tenantId, poolId) => {
    const gone = await store.listInstances(tenantId, poolId);
    await store.deletePool(tenantId, poolId);
    for (const instance of gone) sink.publish({ kind: "deleted", instance: { ...instance, status: "destroyed" } });
  };
  overrides.deleteTenant = async (tenantId) => {
    const pools = await store.listPools(tenantId);
    const gone = (await Promise.all(pools.map((p) => store.listInstances(tenantId, p.poolId)))).flat();
    await store.deleteTenant(tenantId);
    for (const instance of gone) sink.publish({ kind: "deleted", instance: { ...instance, status: "destroyed" } });
  };
  // Everything else goes to the wrapped store, bound to it, so its own state stays where it lives. Bound methods
  // are made once: reads go through here on every RPC.
  const bound = new Map<PropertyKey, { fn: unknown; boundFn: unknown }>();
  return new Proxy(store, {
    get(target, property) {
      if (Object.hasOwn(overrides, property)) return overrides[property as keyof Store];
      const value: unknown = Reflect.get(target, property, target);
      if (typeof value !== "function") return value;
      let known = bound.get(property);
      if (known === undefined || known.fn !== value) {
        known = { fn: value, boundFn: (value as (...args: unknown[]) => unknown).bind(target) };
        bound.set(property, known);
      }
      return known.boundFn;
    },
  });
}
