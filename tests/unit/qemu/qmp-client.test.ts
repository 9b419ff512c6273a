// The QMP client against an in-test Unix-socket server that speaks QMP: greeting, capability negotiation, answers
// matched by id, errors, events, and servers that misbehave (silent, late, gone).

import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import type { Server, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { QmpClient, QmpCommandError, QmpTransportError, withQmp } from "../../../src/runtime/qemu/qmp-client.js";

const GREETING = {
  QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: "test" }, capabilities: ["oob"] },
};

interface Command {
  execute: string;
  arguments?: Record<string, unknown>;
  id?: unknown;
}

type Handler = (command: Command, reply: (message: unknown) => void, socket: Socket) => void;

interface FakeQmp {
  path: string;
  received: Command[];
  connections: number;
  server: Server;
}

let dir: string;
const servers: Server[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-qmp-"));
});

afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise<void>((resolve) => s.close(() => resolve()));
  await rm(dir, { recursive: true, force: true });
});

/** A QMP server: greets (unless told not to), insists on qmp_capabilities first, then hands commands to `handler`. */
async function fakeQmp(handler: Handler, options: { greet?: boolean; path?: string; listen?: boolean } = {}): Promise<FakeQmp> {
  const fake: FakeQmp = { path: options.path ?? join(dir, "qmp.sock"), received: [], connections: 0, server: createServer() };
  fake.server.on("connection", (socket) => {
    fake.connections++;
    const reply = (message: unknown): void => {
      if (!socket.destroyed) socket.write(`${JSON.stringify(message)}\r\n`);
    };
    if (options.greet !== false) reply(GREETING);
    let negotiated = false;
    let buffer = "";
    socket.setEncoding("utf8");
    socket.on("error", () => undefined);
    socket.on("data", (chunk: string) => {
      buffer += chunk;
      for (let end = buffer.indexOf("\n"); end >= 0; end = buffer.indexOf("\n")) {
        const command = JSON.parse(buffer.slice(0, end)) as Command;
        buffer = buffer.slice(end + 1);
        fake.received.push(command);
        if (!negotiated) {
          if (command.execute === "qmp_capabilities") {
            negotiated = true;
            reply({ return: {}, id: command.id });
          } else {
            reply({ error: { class: "CommandNotFound", desc: "Expecting capabilities negotiation with 'qmp_capabilities'" }, id: command.id });
          }
          continue;
        }
        handler(command, reply, socket);
      }
    });
  });
  servers.push(fake.server);
  if (options.listen !== false) await listen(fake);
  return fake;
}

function listen(fake: FakeQmp): Promise<void> {
  return new Promise((resolve) => fake.server.listen(fake.path, () => resolve()));
}

const answerAll: Handler = (command, reply) => {
  if (command.execute === "query-status") reply({ return: { status: "running", running: true }, id: command.id });
  else if (command.execute === "echo") reply({ return: command.arguments ?? null, id: command.id });
  else reply({ error: { class: "CommandNotFound", desc: `The command ${command.execute} has not been found` }, id: command.id });
};

describe("QmpClient", () => {
  it("reads the greeting, negotiates capabilities first, then returns each command's result", async () => {
    const fake = await fakeQmp(answerAll);
    const qmp = await QmpClient.connect(fake.path);
    try {
      expect(qmp.greeting.version.qemu).toEqual({ major: 7, minor: 2, micro: 22 });
      expect(await qmp.execute("query-status")).toEqual({ status: "running", running: true });
      expect(await qmp.execute("echo", { uri: "exec:cat > /tmp/x y", n: 3 })).toEqual({ uri: "exec:cat > /tmp/x y", n: 3 });
      expect(fake.received.map((c) => c.execute)).toEqual(["qmp_capabilities", "query-status", "echo"]);
      expect(fake.received[1]).not.toHaveProperty("arguments");
      const ids = fake.received.map((c) => c.id);
      expect(new Set(ids).size).toBe(ids.length);
    } finally {
      await qmp.close();
    }
  });

  it("raises qemu's error class and description as a QmpCommandError", async () => {
    const fake = await fakeQmp(answerAll);
    await withQmp(fake.path, async (qmp) => {
      const error = await qmp.execute("migrate").then(
        () => null,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(QmpCommandError);
      expect(error).toMatchObject({ command: "migrate", errorClass: "CommandNotFound", desc: "The command migrate has not been found" });
      expect((error as Error).message).toBe("qmp migrate: CommandNotFound: The command migrate has not been found");
      // The connection stays usable after an error.
      expect(await qmp.execute("query-status")).toMatchObject({ status: "running" });
    });
  });

  it("matches answers to commands by id, whatever order they come in", async () => {
    const held: Array<() => void> = [];
    const fake = await fakeQmp((command, reply) => {
      held.push(() => reply({ return: command.execute, id: command.id }));
      if (held.length === 3) for (const answer of held.reverse()) answer();
    });
    await withQmp(fake.path, async (qmp) => {
      const results = await Promise.all([qmp.execute("a"), qmp.execute("b"), qmp.execute("c")]);
      expect(results).toEqual(["a", "b", "c"]);
    });
  });

  it("delivers asynchronous events to listeners, also ones sent right after the greeting", async () => {
    const fake = await fakeQmp((command, reply) => {
      reply({ event: "STOP", timestamp: { seconds: 1, microseconds: 2 } });
      reply({ return: {}, id: command.id });
      setTimeout(() => reply({ event: "SHUTDOWN", data: { guest: true, reason: "guest-shutdown" } }), 20);
    });
    const qmp = await QmpClient.connect(fake.path);
    try {
      const seen: string[] = [];
      const stop = qmp.onEvent((e) => seen.push(e.event));
      const shutdown = qmp.waitForEvent("SHUTDOWN", 2_000);
      await qmp.execute("stop");
      expect(seen).toEqual(["STOP"]);
      expect(await shutdown).toMatchObject({ event: "SHUTDOWN", data: { reason: "guest-shutdown" } });
      stop();
      expect(seen).toEqual(["STOP", "SHUTDOWN"]);
    } finally {
      await qmp.close();
    }
  });

  it("times out a command the server never answers, drops the late answer and carries on", async () => {
    const fake = await fakeQmp((command, reply) => {
      if (command.execute === "slow") setTimeout(() => reply({ return: "late", id: command.id }), 300);
      else reply({ return: command.execute, id: command.id });
    });
    await withQmp(fake.path, async (qmp) => {
      const t0 = Date.now();
      const error = await qmp.execute("slow", undefined, 100).then(
        () => null,
        (e: unknown) => e,
      );
      expect(Date.now() - t0).toBeLessThan(1_000);
      expect(error).toBeInstanceOf(QmpTransportError);
      expect(error).toMatchObject({ reason: "timeout" });
      expect((error as Error).message).toBe("qmp slow: no answer within 100 ms");
      await new Promise((resolve) => setTimeout(resolve, 350));
      expect(await qmp.execute("next")).toBe("next");
    });
  });

  it("uses the default command timeout when the call gives none", async () => {
    const fake = await fakeQmp(() => undefined);
    const qmp = await QmpClient.connect(fake.path, { commandTimeoutMs: 80 });
    try {
      await expect(qmp.execute("never")).rejects.toMatchObject({ reason: "timeout" });
    } finally {
      await qmp.close();
    }
  });

  it("gives up on a server that accepts but never greets", async () => {
    const fake = await fakeQmp(answerAll, { greet: false });
    const t0 = Date.now();
    await expect(QmpClient.connect(fake.path, { connectTimeoutMs: 150 })).rejects.toMatchObject({
      reason: "timeout",
      message: expect.stringContaining("no greeting"),
    });
    expect(Date.now() - t0).toBeLessThan(1_000);
  });

  it("rejects a peer that does not speak qmp", async () => {
    const server = createServer((socket) => socket.end("hello, I am not qemu\n"));
    servers.push(server);
    const path = join(dir, "other.sock");
    await new Promise<void>((resolve) => server.listen(path, () => resolve()));
    await expect(QmpClient.connect(path, { connectTimeoutMs: 500 })).rejects.toMatchObject({ reason: "protocol" });
  });

  it("retries until the socket appears", async () => {
    const fake = await fakeQmp(answerAll, { listen: false });
    setTimeout(() => void listen(fake), 150);
    const qmp = await QmpClient.connect(fake.path, { connectTimeoutMs: 3_000 });
    expect(await qmp.execute("query-status")).toMatchObject({ status: "running" });
    await qmp.close();
  });

  it("bounds the wait for a socket that never appears", async () => {
    const t0 = Date.now();
    const error = await QmpClient.connect(join(dir, "absent.sock"), { connectTimeoutMs: 200 }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(QmpTransportError);
    expect(error).toMatchObject({ reason: "timeout" });
    expect((error as Error).message).toContain("not accepting connections in time (ENOENT)");
    expect(Date.now() - t0).toBeLessThan(1_000);
  });

  it("stops retrying when aborted", async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 50);
    const t0 = Date.now();
    await expect(
      QmpClient.connect(join(dir, "absent.sock"), { connectTimeoutMs: 5_000, signal: controller.signal }),
    ).rejects.toMatchObject({ reason: "aborted" });
    expect(Date.now() - t0).toBeLessThan(1_000);
  });

  it("fails pending commands when the server goes away, and refuses new ones", async () => {
    const fake = await fakeQmp((_command, _reply, socket) => socket.destroy());
    const qmp = await QmpClient.connect(fake.path);
    await expect(qmp.execute("quit")).rejects.toMatchObject({ reason: "closed" });
    await qmp.closed;
    expect(qmp.isClosed).toBe(true);
    await expect(qmp.execute("query-status")).rejects.toMatchObject({ reason: "closed" });
    await qmp.close();
  });

  it("withQmp closes the connection even when the work fails", async () => {
    const fake = await fakeQmp(answerAll);
    let client: QmpClient | null = null;
    await expect(
      withQmp(fake.path, async (qmp) => {
        client = qmp;
        await qmp.execute("nope");
      }),
    ).rejects.toBeInstanceOf(QmpCommandError);
    expect((client as QmpClient | null)?.isClosed).toBe(true);
    // The server, which serves one client at a time like QEMU, can take the next one.
    expect(await withQmp(fake.path, (qmp) => qmp.execute("query-status"))).toMatchObject({ status: "running" });
    expect(fake.connections).toBe(2);
  });
});
