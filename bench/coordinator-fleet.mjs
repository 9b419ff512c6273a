// Shared by the coordinator benchmarks: starts `total` agents spread over `processes` child processes
// (coordinator-agent-host.mjs), all under one fresh CA, and gives the coordinator's side what it needs: the fleet
// (names, addresses), the coordinator's PEMs, and a way to change one agent's instance record.

import { fork } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = (path) => pathToFileURL(join(here, "..", "dist", path)).href;

export async function startBenchFleet(total, processes) {
  const { createCertificateAuthority, issueCertificate } = await import(dist("src/platform/pki/cert-authority.js"));
  const dir = await mkdtemp(join(tmpdir(), "mvm-bench-coordinator-"));
  const ca = await createCertificateAuthority({ trustDomain: "mvm.local" });
  const coordinator = await issueCertificate(ca, { identity: { kind: "coordinator" }, trustDomain: "mvm.local", kind: "server", ipAddresses: ["127.0.0.1"] });
  const pems = { ca: join(dir, "ca.pem"), caKey: join(dir, "ca-key.pem"), cert: join(dir, "coordinator.pem"), key: join(dir, "coordinator-key.pem") };
  await writeFile(pems.ca, ca.certPem);
  await writeFile(pems.caKey, ca.keyPem, { mode: 0o600 });
  await writeFile(pems.cert, coordinator.certPem);
  await writeFile(pems.key, coordinator.keyPem, { mode: 0o600 });

  const hosts = [];
  const nodes = [];
  const perProcess = Math.ceil(total / processes);
  const started = [];
  for (let p = 0; p < processes; p++) {
    const count = Math.min(perProcess, total - p * perProcess);
    if (count <= 0) break;
    const child = fork(join(here, "coordinator-agent-host.mjs"), [String(count), join(dir, `host-${p}`), pems.ca, pems.caKey], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    const host = { child, waiting: new Map() };
    hosts.push(host);
    started.push(
      new Promise((resolve, reject) => {
        child.once("exit", (code) => reject(new Error(`agent host ${p} exited ${code}`)));
        child.on("message", (m) => {
          if (m.ready) resolve(m.ready.map((a, i) => ({ ...a, host, index: i })));
          if (m.touched !== undefined) {
            host.waiting.get(m.touched)?.(m);
            host.waiting.delete(m.touched);
          }
        });
      }),
    );
  }
  for (const agents of await Promise.all(started)) {
    for (const a of agents) nodes.push({ name: `node-${String(nodes.length).padStart(3, "0")}`, address: `127.0.0.1:${a.port}`, host: "127.0.0.1", port: a.port, labels: {}, agent: a });
  }
  const fleet = { credentials: { ca: pems.ca, cert: pems.cert, key: pems.key }, nodes };

  /** Changes node `n`'s instance; resolves to { instanceId, publishedAt } (wall clock, ms). */
  function touch(node) {
    const { host, index } = node.agent;
    return new Promise((resolve) => {
      host.waiting.set(index, resolve);
      host.child.send({ touch: index });
    });
  }

  async function stop() {
    await Promise.all(
      hosts.map(
        (h) =>
          new Promise((resolve) => {
            h.child.removeAllListeners("exit");
            h.child.once("exit", resolve);
            h.child.send({ stop: true });
            setTimeout(() => h.child.kill("SIGKILL"), 10_000).unref();
          }),
      ),
    );
    // A reconcile pass may still be writing as the hosts stop: retry the removal.
    await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  }

  return { fleet, pems, touch, stop };
}

export function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

export function summary(samples) {
  const ms = [...samples].sort((a, b) => a - b);
  return { p50: percentile(ms, 50), p99: percentile(ms, 99), max: ms[ms.length - 1], mean: ms.reduce((a, b) => a + b, 0) / ms.length, n: ms.length };
}

export const memoryMib = () => {
  const m = process.memoryUsage();
  return { rss: m.rss / 2 ** 20, heapUsed: m.heapUsed / 2 ** 20 };
};
