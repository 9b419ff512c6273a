// TEST DOUBLE of Firecracker's API, for tests only: an HTTP/1.1 server on a real Unix socket that answers the way
// /work/shared/contracts/firecracker.yaml describes (204 on success, 200 with a body for the GETs, 400 with an
// `Error` body { fault_message } on bad input or a request in the wrong phase, 503 when told to be busy). It keeps the
// phase rules of the real thing: configuration only before InstanceStart, `snapshot/load` only on a fresh process
// (logger and metrics aside), snapshots only while paused. Run as a program (`node firecracker-test-double.mjs
// --api-sock PATH --id ID`) it stands in for the `firecracker` binary: the serial console is its stdout, and every
// request it gets is appended to `requests.jsonl` next to the socket.

import { closeSync, constants, openSync, writeSync, writeFileSync, ftruncateSync, appendFileSync, existsSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";

const PRE_BOOT = new Set(["/logger", "/metrics", "/serial", "/machine-config", "/boot-source"]);
const PAGE = 4096;

/**
 * @param {object} options
 * @param {string} options.socketPath
 * @param {string} [options.instanceId]
 * @param {(text: string) => void} [options.serial] receives what the guest writes on its console
 * @param {(req: {method: string, path: string, body: unknown}) => string[]} [options.check] body problems → 400
 * @param {number} [options.busyCount] answer this many requests with 503 first
 * @param {string | null} [options.requestLog]
 * @param {() => void} [options.onGuestExit]
 */
export function startFirecrackerTestDouble(options) {
  const requests = [];
  const vm = { state: "Not started", configured: new Set(), bootArgs: "", memMib: 128, trackDirty: false, metricsFd: null };
  let busy = options.busyCount ?? 0;
  const instanceId = () => /mvm\.instance=(\S+)/.exec(vm.bootArgs)?.[1] ?? options.instanceId ?? "anonymous-instance";

  const writeMetrics = (op) => {
    if (vm.metricsFd === null) return;
    const line = { utc_timestamp_ms: Date.now(), api_server: { process_startup_time_us: 1234 }, latencies_us: { [op]: 42, [`vmm_${op}`]: 17 } };
    try {
      writeSync(vm.metricsFd, `${JSON.stringify(line)}\n`);
    } catch {
      // a full or reader-less FIFO drops metrics, as Firecracker does
    }
  };

  const handle = (method, path, body) => {
    const fault = (message) => ({ status: 400, body: { fault_message: message } });
    const problems = options.check ? options.check({ method, path, body }) : [];
    if (problems.length > 0) return fault(problems.join("; "));
    if (method === "GET" && path === "/") {
      return { status: 200, body: { app_name: "Firecracker", id: instanceId(), state: vm.state, vmm_version: "1.17.0" } };
    }
    if (method === "GET" && path === "/version") return { status: 200, body: { firecracker_version: "1.17.0" } };
    const resource = /^\/(drives|network-interfaces)\/([^/]+)$/.exec(path);
    if (method === "PUT" && (PRE_BOOT.has(path) || resource !== null)) {
      if (vm.state !== "Not started") return fault(`the requested operation is not supported after starting the microVM`);
      if (resource !== null) {
        const idField = resource[1] === "drives" ? "drive_id" : "iface_id";
        if (body?.[idField] !== resource[2]) return fault(`the id from the path does not match the id from the body`);
      }
      if (path === "/metrics") {
        try {
          vm.metricsFd = openSync(body.metrics_path, constants.O_WRONLY | constants.O_NONBLOCK);
        } catch (e) {
          return fault(`cannot open the metrics fifo: ${e.message}`);
        }
      }
      if (path === "/machine-config") {
        vm.memMib = body.mem_size_mib;
        vm.trackDirty = body.track_dirty_pages === true;
      }
      if (path === "/boot-source") vm.bootArgs = body.boot_args ?? "";
      vm.configured.add(resource === null ? path : resource[1]);
      return { status: 204 };
    }
    if (method === "PUT" && path === "/actions") {
      if (body.action_type === "InstanceStart") {
        if (vm.state !== "Not started") return fault("the microVM is already running");
        if (!vm.configured.has("/boot-source")) return fault("cannot start the microVM without a boot source");
        vm.state = "Running";
        setTimeout(() => options.serial?.(`[    0.1] booting\nMVM-READY ${instanceId()}\n`), 20);
        return { status: 204 };
      }
      if (body.action_type === "SendCtrlAltDel") {
        if (vm.state === "Not started") return fault("the microVM is not running");
        setTimeout(() => options.onGuestExit?.(), 30);
        return { status: 204 };
      }
      if (body.action_type === "FlushMetrics") {
        writeMetrics("flush");
        return { status: 204 };
      }
    }
    if (method === "PATCH" && path === "/vm") {
      if (vm.state === "Not started") return fault("the microVM is not running");
      vm.state = body.state === "Paused" ? "Paused" : "Running";
      writeMetrics(body.state === "Paused" ? "pause_vm" : "resume_vm");
      return { status: 204 };
    }
    if (method === "PUT" && path === "/snapshot/create") {
      if (vm.state !== "Paused") return fault("the microVM must be paused to create a snapshot");
      const diff = body.snapshot_type === "Diff";
      if (diff && !vm.trackDirty) return fault("diff snapshots need dirty page tracking");
      const size = vm.memMib * 1024 * 1024;
      const fd = openSync(body.mem_file_path, "w", 0o600);
      try {
        ftruncateSync(fd, size);
        if (diff) {
          // Dirtied pages only: one with text, one written as zeros (which a hole must not be confused with).
          writeSync(fd, Buffer.from("DIFF-PAGE".padEnd(PAGE, ".")), 0, PAGE, PAGE);
          writeSync(fd, Buffer.alloc(PAGE), 0, PAGE, 3 * PAGE);
        } else {
          const page = Buffer.from("FULL-PAGE".padEnd(PAGE, "#"));
          for (let offset = 0; offset < size; offset += PAGE) writeSync(fd, page, 0, PAGE, offset);
        }
      } finally {
        closeSync(fd);
      }
      writeFileSync(body.snapshot_path, JSON.stringify({ memMib: vm.memMib, bootArgs: vm.bootArgs, type: body.snapshot_type ?? "Full" }), { mode: 0o600 });
      writeMetrics(diff ? "diff_create_snapshot" : "full_create_snapshot");
      return { status: 204 };
    }
    if (method === "PUT" && path === "/snapshot/load") {
      const other = [...vm.configured].filter((c) => c !== "/logger" && c !== "/metrics");
      if (vm.state !== "Not started" || other.length > 0) {
        return fault("loading a microVM snapshot not allowed after configuring boot-specific resources");
      }
      const memPath = body.mem_backend?.backend_path ?? body.mem_file_path;
      if (!existsSync(body.snapshot_path) || !existsSync(memPath)) return fault("cannot open the snapshot files");
      const saved = JSON.parse(String(readFileText(body.snapshot_path)));
      if (statSync(memPath).size !== saved.memMib * 1024 * 1024) return fault("the memory file does not match the snapshot");
      vm.bootArgs = saved.bootArgs;
      vm.memMib = saved.memMib;
      vm.trackDirty = body.track_dirty_pages === true;
      vm.state = body.resume_vm ? "Running" : "Paused";
      writeMetrics("load_snapshot");
      return { status: 204 };
    }
    return fault("Invalid request method and/or path");
  };

  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      let body = null;
      let answer;
      try {
        body = text === "" ? null : JSON.parse(text);
      } catch {
        answer = { status: 400, body: { fault_message: "the body is not valid json" } };
      }
      const record = { method: req.method, path: req.url, body };
      requests.push(record);
      if (options.requestLog) appendFileSync(options.requestLog, `${JSON.stringify(record)}\n`);
      if (answer === undefined && busy > 0) {
        busy -= 1;
        answer = { status: 503, body: { fault_message: "the api server is busy" } };
      }
      answer ??= handle(req.method, req.url, body);
      const payload = answer.body === undefined ? "" : JSON.stringify(answer.body);
      res.writeHead(answer.status, payload === "" ? {} : { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) });
      res.end(payload);
    });
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.socketPath, () =>
      resolve({
        requests,
        vm,
        close: () => new Promise((done) => server.close(() => done())),
      }),
    );
  });
}

function readFileText(path) {
  const fd = openSync(path, "r");
  try {
    const size = statSync(path).size;
    const buffer = Buffer.alloc(size);
    let read = 0;
    while (read < size) {
      const n = readSyncCompat(fd, buffer, read, size - read, read);
      if (n === 0) break;
      read += n;
    }
    return buffer.toString("utf8");
  } finally {
    closeSync(fd);
  }
}

async function runAsProgram() {
  const args = process.argv.slice(2);
  if (args.includes("--version")) {
    process.stdout.write("Firecracker v1.17.0-test-double\n");
    return;
  }
  const valueOf = (flag) => {
    const i = args.indexOf(flag);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const socketPath = valueOf("--api-sock");
  if (!socketPath) {
    process.stderr.write("test double: --api-sock is required\n");
    process.exit(2);
  }
  const seccompFilter = valueOf("--seccomp-filter");
  if (seccompFilter && readFileText(seccompFilter).trimStart().startsWith("{")) {
    process.stderr.write("test double: --seccomp-filter got json, not bpf\n");
    process.exit(1);
  }
  await startFirecrackerTestDouble({
    socketPath,
    instanceId: valueOf("--id"),
    serial: (text) => process.stdout.write(text),
    requestLog: join(dirname(socketPath), "requests.jsonl"),
    onGuestExit: () => process.exit(0),
  });
}

import { readSync as readSyncCompat } from "node:fs";

if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  void runAsProgram();
}
