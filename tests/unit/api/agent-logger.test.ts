import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createAgentLogger, readableLogLine, redactSecrets } from "../../../src/agent/agent-logger.js";

function capture(readable = false) {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _e, done) {
      lines.push(String(chunk));
      done();
    },
  });
  return { lines, logger: createAgentLogger({ level: "info", destination, readable }), parsed: (i: number) => JSON.parse(lines[i]!) as Record<string, unknown> };
}

describe("createAgentLogger", () => {
  it("writes JSON lines with secrets redacted at any of the first levels", () => {
    const { logger, lines, parsed } = capture();
    logger.info(
      { reqId: "r-1", tenant: "acme", privateKey: "-----BEGIN", tls: { keyPem: "PEM" }, req: { headers: { authorization: "Bearer t" } }, token: "abc" },
      "rpc ok",
    );
    const line = parsed(0);
    expect(line).toMatchObject({ reqId: "r-1", tenant: "acme", msg: "rpc ok", privateKey: "[redacted]", token: "[redacted]" });
    expect(line.tls).toEqual({ keyPem: "[redacted]" });
    expect(line.req).toEqual({ headers: { authorization: "[redacted]" } });
    expect(JSON.stringify(line)).not.toMatch(/Bearer|BEGIN|PEM"/);
    expect(lines).toHaveLength(1);
  });

  it("redacts inside arrays, in an error's own properties (still serialized as an error), and in child bindings", () => {
    const { logger, parsed } = capture();
    const err = Object.assign(new Error("boom"), { token: "tok-1", code: "E1" });
    logger.child({ tenant: "acme", secret: "s3" }).error({ err, items: [{ password: "pw" }, "plain"] }, "failed");
    const line = parsed(0);
    expect(line).toMatchObject({ tenant: "acme", secret: "[redacted]", msg: "failed", items: [{ password: "[redacted]" }, "plain"] });
    expect(line.err).toMatchObject({ type: "Error", message: "boom", token: "[redacted]", code: "E1" });
    expect(String((line.err as { stack: string }).stack)).toContain("boom");
    expect(JSON.stringify(line)).not.toMatch(/tok-1|"pw"|s3/);
  });
});

describe("readable log lines (for a terminal)", () => {
  it("writes time, level, message and the fields as key=value, secrets still redacted, an error's stack below", () => {
    const { logger, lines } = capture(true);
    logger.info({ reqId: "r-1", rpc: "mvm.v1.TenantService/CreateTenant", tenant: "acme", token: "abc", durationMs: 1.5, reason: "two words" }, "rpc ok");
    logger.error({ err: new Error("boom") }, "rpc failed");
    expect(lines[0]).toMatch(/^\d\d:\d\d:\d\d\.\d{3} INFO  rpc ok reqId=r-1 rpc=mvm.v1.TenantService\/CreateTenant tenant=acme token=\[redacted\] durationMs=1.5 reason="two words"\n$/);
    expect(lines[1]).toMatch(/^\d\d:\d\d:\d\d\.\d{3} ERROR rpc failed\n {4}Error: boom\n +at /);
    expect(lines.join("")).not.toContain("abc");
  });

  it("passes a line that is not JSON through unchanged", () => {
    expect(readableLogLine("not json")).toBe("not json\n");
  });
});

describe("redactSecrets", () => {
  it("changes nothing the caller passed, and returns the same object when there is nothing to redact", () => {
    const input = { a: { b: { token: "t" } }, list: [{ key: "k" }], keep: { x: 1 } };
    const before = structuredClone(input);
    const out = redactSecrets(input);
    expect(input).toEqual(before);
    expect(out).toEqual({ a: { b: { token: "[redacted]" } }, list: [{ key: "[redacted]" }], keep: { x: 1 } });
    expect(out.keep).toBe(input.keep);
    const clean = { reqId: "r", nested: { fine: true } };
    expect(redactSecrets(clean)).toBe(clean);
  });

  it("searches the top level and two levels below it, not deeper, nor inside buffers or class instances", () => {
    expect(redactSecrets({ a: { b: { c: { token: "deep" } } } })).toEqual({ a: { b: { c: { token: "deep" } } } });
    const buffer = Buffer.from("token");
    expect(redactSecrets({ buffer }).buffer).toBe(buffer);
    class Holder {
      token = "inside";
    }
    const holder = new Holder();
    expect(redactSecrets({ holder }).holder).toBe(holder);
  });
});
