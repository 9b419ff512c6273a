import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createAgentLogger } from "../../../src/agent/agent-logger.js";

describe("createAgentLogger", () => {
  it("writes JSON lines with secrets redacted at any of the first levels", () => {
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk, _e, done) {
        lines.push(String(chunk));
        done();
      },
    });
    const logger = createAgentLogger({ level: "info", destination });
    logger.info(
      { reqId: "r-1", tenant: "acme", privateKey: "-----BEGIN", tls: { keyPem: "PEM" }, req: { headers: { authorization: "Bearer t" } }, token: "abc" },
      "rpc ok",
    );
    const line = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(line).toMatchObject({ reqId: "r-1", tenant: "acme", msg: "rpc ok", privateKey: "[redacted]", token: "[redacted]" });
    expect(line.tls).toEqual({ keyPem: "[redacted]" });
    expect(JSON.stringify(line)).not.toMatch(/Bearer|BEGIN|PEM"/);
  });
});
