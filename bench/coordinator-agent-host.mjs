#!/usr/bin/env node
// Child process of the coordinator benchmarks: hosts several node agents (the production composition: openNodeRuntime
// on a temporary data root, buildAgentServer with mTLS on 127.0.0.1), each seeded with one tenant, pool and
// instance, all with certificates from one CA given by the parent. No VM is booted.
//
// Parent → child (IPC): { touch: <agent index> } changes that agent's instance record (health flipped) through its
// store; the child answers { touched, instanceId, publishedAt } with the wall-clock time (ms, sub-ms precision) at
// which the agent's watch hub published the change. Startup ends with { ready: [{ port, nodeId, instanceId }] }.
//
// Usage (by the benchmarks): node bench/coordinator-agent-host.mjs <count> <dir> <ca.pem> <ca-key.pem>

import { mkdir, readFile, rm } from "node:fs/promises";
import { join, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = (path) => pathToFileURL(join(root, "dist", path)).href;
const { pino } = await import("pino");
const { buildAgentServer } = await import(dist("src/agent/server.js"));
const { openNodeRuntime } = await import(dist("src/agent/node-runtime.js"));
const { WatchHub } = await import(dist("src/core/watch-hub.js"));
const { CertStore } = await import(dist("src/platform/pki/index.js"));
const { createTenant } = await import(dist("src/core/use-cases/tenants.js"));
const { createPool } = await import(dist("src/core/use-cases/pools.js"));
const { createInstance } = await import(dist("src/core/use-cases/instances.js"));

const [count, dir, caPath, caKeyPath] = process.argv.slice(2);
const importCa = { certPem: await readFile(caPath, "utf8"), keyPem: await readFile(caKeyPath, "utf8") };
const wallNow = () => performance.timeOrigin + performance.now();
const agents = [];

async function startAgent(i) {
  const dataDir = join(dir, `agent-${i}`);
  await mkdir(dataDir, { recursive: true });
  const hub = new WatchHub();
  const runtime = await openNodeRuntime({ dataDir, env: {}, actor: { kind: "system", id: "system:bench" }, events: hub });
  const nodeId = (await runtime.store.node()).nodeId;
  await createTenant(runtime, { tenantId: "bench" });
  await createPool(runtime, { tenantId: "bench", poolId: "web" }, {});
  let instance = await createInstance(runtime, { tenantId: "bench", poolId: "web" });
  const certStore = CertStore.at(dataDir);
  await certStore.init({ nodeId, hostName: "localhost", importCa });
  const server = buildAgentServer({
    runtime,
    certStore,
    listen: { host: "127.0.0.1", port: 0 },
    logger: pino({ level: "silent" }),
    shutdownGraceMs: 100,
    certificateCheckIntervalMs: 0,
  });
  const port = (await server.start()).api.port;
  const agent = { port, nodeId, runtime, server, hub, pendingPublish: null };
  const publish = hub.publish.bind(hub);
  hub.publish = (event) => {
    if (agent.pendingPublish && event.instance.instanceId === instance.instanceId) {
      agent.pendingPublish(wallNow());
      agent.pendingPublish = null;
    }
    publish(event);
  };
  agent.touch = async () => {
    const published = new Promise((resolve) => (agent.pendingPublish = resolve));
    const at = new Date().toISOString();
    instance = { ...instance, healthy: !instance.healthy, lastHealthCheckAt: at, updatedAt: at };
    await runtime.store.putInstance(instance);
    return { instanceId: instance.instanceId, publishedAt: await published };
  };
  agent.instanceId = instance.instanceId;
  return agent;
}

for (let i = 0; i < Number(count); i++) agents.push(await startAgent(i));
process.send({ ready: agents.map((a) => ({ port: a.port, nodeId: a.nodeId, instanceId: a.instanceId })) });

process.on("message", async (message) => {
  if (message.touch !== undefined) {
    const result = await agents[message.touch].touch();
    process.send({ touched: message.touch, ...result });
  }
  if (message.stop) {
    for (const a of agents) {
      await a.server.stop();
      await a.runtime.close();
    }
    await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 }).catch(() => undefined);
    process.exit(0);
  }
});
