import { mkdtemp, rm, writeFile, chmod } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseFilefragExtents } from "../../../src/runtime/firecracker/diff-snapshot-merge.js";
import { checkGuestKernelHeader, parseFirecrackerVersion } from "../../../src/runtime/firecracker/firecracker-probe.js";
import { parseMetricsLine } from "../../../src/runtime/firecracker/metrics-fifo.js";
import { looksLikeJson, resolveSeccompFilter } from "../../../src/runtime/firecracker/seccomp-filter.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-fc-support-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("seccomp policy", () => {
  it("default passes no filter; strict never passes json where bpf is expected", async () => {
    expect(await resolveSeccompFilter("default", { filterJson: "/x.json" }, dir)).toBeNull();
    const json = join(dir, "filter.json");
    await writeFile(json, JSON.stringify({ vmm: { default_action: "trap", filter_action: "allow", filter: [] } }));
    await expect(resolveSeccompFilter("strict", { filterBpf: json }, dir)).rejects.toThrow(/is json, but firecracker needs a compiled bpf filter/);
    await expect(resolveSeccompFilter("strict", { filterJson: json, seccompilerBinary: "/nonexistent/seccompiler-bin" }, dir)).rejects.toThrow(
      /seccompiler-bin is not installed/,
    );
    await expect(resolveSeccompFilter("strict", {}, dir)).rejects.toMatchObject({ kind: "failed_precondition" });
    const bpf = join(dir, "filter.bpf");
    await writeFile(bpf, Buffer.from([3, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0]));
    expect(await resolveSeccompFilter("strict", { filterBpf: bpf }, dir)).toBe(bpf);
  });

  it("compiles json with seccompiler-bin when present and checks what it wrote", async () => {
    const json = join(dir, "f.json");
    await writeFile(json, "{}");
    const fake = join(dir, "seccompiler-bin");
    // A stand-in that writes its input unchanged: json again, which must be refused.
    await writeFile(fake, '#!/bin/sh\nwhile [ $# -gt 0 ]; do case "$1" in --input-file) in=$2;; --output-file) out=$2;; esac; shift; done\ncp "$in" "$out"\n');
    await chmod(fake, 0o755);
    await expect(resolveSeccompFilter("strict", { filterJson: json, seccompilerBinary: fake }, dir)).rejects.toThrow(/compiled filter .* is json/);
    expect(looksLikeJson(Buffer.from([0x0f, 0x7b]))).toBe(false);
  });
});

describe("probe and metrics parsing", () => {
  it("reads firecracker and jailer versions", () => {
    expect(parseFirecrackerVersion("Firecracker v1.7.0\n\nSupported snapshot data format versions: v1.0.0")).toBe("1.7.0");
    expect(parseFirecrackerVersion("Jailer v1.10.1-dev")).toBe("1.10.1-dev");
    expect(parseFirecrackerVersion("nothing")).toBeNull();
  });

  it("accepts an x86_64 ELF vmlinux only", () => {
    const elf = Buffer.alloc(64);
    Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1]).copy(elf);
    elf.writeUInt16LE(0x3e, 18);
    expect(checkGuestKernelHeader(elf)).toEqual({ suitable: true, format: "elf-vmlinux" });
    elf.writeUInt16LE(0xb7, 18);
    expect(checkGuestKernelHeader(elf)).toMatchObject({ suitable: false, reason: expect.stringMatching(/aarch64/) });
    expect(checkGuestKernelHeader(Buffer.from("#!/bin/sh\n"))).toMatchObject({ suitable: false });
  });

  it("keeps firecracker's latency metrics, flattening aggregates", () => {
    const sample = parseMetricsLine(
      JSON.stringify({ utc_timestamp_ms: 5, api_server: { process_startup_time_us: 900 }, latencies_us: { pause_vm: 12, load_snapshot: { min_us: 1, max_us: 9, sum_us: 20 } } }),
    );
    expect(sample).toEqual({ utcTimestampMs: 5, processStartupTimeUs: 900, latenciesUs: { pause_vm: 12, "load_snapshot.min_us": 1, "load_snapshot.max_us": 9, "load_snapshot.sum_us": 20 } });
    expect(parseMetricsLine("not json")).toBeNull();
  });

  it("parses filefrag extents and merges adjacent ones", () => {
    const output = [
      "Filesystem type is: ef53",
      "File size of /m is 16384 (4 blocks of 4096 bytes)",
      " ext:     logical_offset:        physical_offset: length:   expected: flags:",
      "   0:        1..       1:    2000..      2000:      1:            ",
      "   1:        2..       2:    3000..      3000:      1:       2001:",
      "   2:        5..       6:    4000..      4001:      2:       3001: last,eof",
    ].join("\n");
    expect(parseFilefragExtents(output)).toEqual([
      { offset: 4096, length: 8192 },
      { offset: 5 * 4096, length: 8192 },
    ]);
    expect(() => parseFilefragExtents("garbage")).toThrow(/block size/);
  });
});
