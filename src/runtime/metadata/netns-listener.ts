// A listening TCP socket inside a network namespace, for a process that stays in its own. A short-lived Node helper
// started under `ip netns exec` binds it there and hands the socket over the IPC channel (the socket keeps its
// namespace: connections to it come from inside), then exits. The agent accepts on it from the root namespace.

import { spawn } from "node:child_process";
import type { Server } from "node:net";
import { MvmError } from "../../core/errors.js";

const HELPER_TIMEOUT_MS = 10_000;

const HELPER = [
  'const net = require("node:net");',
  "const [host, port] = [process.argv[1], Number(process.argv[2])];",
  "const server = net.createServer();",
  'server.on("error", (e) => { process.stderr.write(e.message); process.exit(3); });',
  'server.listen({ host, port }, () => process.send("listening", server, () => process.exit(0)));',
].join("\n");

/** A server listening on `host:port` inside `netns`; the caller serves on it (http.Server.listen(handle)). */
export function listenInNetns(netns: string, host: string, port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const child = spawn("ip", ["netns", "exec", netns, process.execPath, "-e", HELPER, host, String(port)], {
      stdio: ["ignore", "ignore", "pipe", "ipc"],
    });
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    let settled = false;
    const fail = (why: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (child.exitCode === null) child.kill("SIGKILL");
      reject(new MvmError("unavailable", `listening on ${host}:${port} in network namespace ${netns}: ${why}`));
    };
    const timer = setTimeout(() => fail(`no socket within ${HELPER_TIMEOUT_MS} ms`), HELPER_TIMEOUT_MS);
    child.once("message", (message, handle) => {
      if (settled) return;
      if (message !== "listening" || handle === undefined) return fail(`unexpected answer ${JSON.stringify(message)}`);
      settled = true;
      clearTimeout(timer);
      resolve(handle as Server);
    });
    child.once("error", (e) => fail(e.message));
    child.once("exit", (code) => {
      // Its message may still be in the channel: it is delivered before the channel's end.
      const failed = () => fail(stderr.trim() || `the helper exited with ${code}`);
      if (child.connected) child.once("disconnect", failed);
      else failed();
    });
  });
}
