import { describe, expect, it } from "vitest";
import {
  KVM_PROBE_MARKER,
  buildKvmProbeImage,
  kvmProbeArgv,
  parseCpuMhzAsKhz,
} from "../../../src/runtime/qemu/kvm-probe.js";

describe("buildKvmProbeImage", () => {
  const image = buildKvmProbeImage();
  const entry = image.readUInt32LE(24);
  const programHeaders = image.readUInt32LE(28);
  const header = (i: number) => {
    const at = programHeaders + 32 * i;
    return { type: image.readUInt32LE(at), offset: image.readUInt32LE(at + 4), address: image.readUInt32LE(at + 12), size: image.readUInt32LE(at + 16) };
  };

  it("is a 32-bit x86 ELF executable", () => {
    expect(image.subarray(0, 4).toString("latin1")).toBe("\x7fELF");
    expect(image[4]).toBe(1);
    expect(image.readUInt16LE(16)).toBe(2);
    expect(image.readUInt16LE(18)).toBe(3);
    expect(image.readUInt16LE(44)).toBe(2);
  });

  it("loads the whole file and carries a Xen PVH entry note that points at the code", () => {
    const load = header(0);
    expect(load).toMatchObject({ type: 1, offset: 0, size: image.length });
    const note = header(1);
    expect(note.type).toBe(4);
    const n = image.subarray(note.offset, note.offset + note.size);
    expect(n.readUInt32LE(8)).toBe(18);
    expect(n.subarray(12, 15).toString("latin1")).toBe("Xen");
    expect(n.readUInt32LE(16)).toBe(entry);
    expect(entry - load.address).toBe(note.offset + note.size);
  });

  it("writes the marker to COM1, then exits through isa-debug-exit", () => {
    const code = image.subarray(entry - header(0).address);
    expect([...code.subarray(0, 4)]).toEqual([0x66, 0xba, 0xf8, 0x03]);
    const written: number[] = [];
    let at = 4;
    while (code[at] === 0xb0 && code[at + 2] === 0xee) {
      written.push(code[at + 1] as number);
      at += 3;
    }
    expect(Buffer.from(written).toString("latin1")).toBe(`${KVM_PROBE_MARKER}\n`);
    expect([...code.subarray(at, at + 7)]).toEqual([0x66, 0xba, 0xf4, 0x00, 0xb0, 0x10, 0xee]);
  });
});

describe("kvmProbeArgv", () => {
  it("probes with the accelerator and cpu model that boots would use", () => {
    const argv = kvmProbeArgv("qemu-system-x86_64", "/tmp/p.elf");
    expect(argv.join(" ")).toContain("-M microvm -accel kvm -cpu host");
    expect(argv).toContain("isa-debug-exit,iobase=0xf4,iosize=4");
    expect(argv.slice(-2)).toEqual(["-kernel", "/tmp/p.elf"]);
    expect(kvmProbeArgv("q", "/p", "tcg").join(" ")).toContain("-accel tcg -cpu max");
  });
});

describe("parseCpuMhzAsKhz", () => {
  it("takes the first cpu MHz line, in kHz", () => {
    const cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.102\n\nprocessor\t: 1\ncpu MHz\t\t: 3000.000\n";
    expect(parseCpuMhzAsKhz(cpuinfo)).toBe(2_596_102);
    expect(parseCpuMhzAsKhz("cpu MHz : 1999.9996\n")).toBe(2_000_000);
  });

  it("is null without a usable line", () => {
    expect(parseCpuMhzAsKhz("processor : 0\nBogoMIPS : 50.00\n")).toBeNull();
    expect(parseCpuMhzAsKhz("cpu MHz : 0.000\n")).toBeNull();
  });
});
