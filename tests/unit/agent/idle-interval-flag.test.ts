// `mvm agent serve` refuses a bad idle interval before it opens anything (run through the built binary).
import { afterEach, describe, expect, it } from "vitest";
import { fingerprint, runMvm, tempDataDir } from "../../helpers/mvm-cli.js";

let data: ReturnType<typeof tempDataDir> | null = null;
afterEach(() => data?.cleanup());

describe("agent serve --idle-interval", () => {
  it.each([
    [["--idle-interval", "-1"], {}, /--idle-interval: must be a number of seconds >= 0/],
    [[], { MVM_IDLE_INTERVAL_MS: "1.5" }, /MVM_IDLE_INTERVAL_MS: must be an integer >= 0/],
    [[], { MVM_IDLE_INTERVAL_MS: "soon" }, /MVM_IDLE_INTERVAL_MS: must be an integer >= 0/],
  ])("refuses %j %j with exit code 2 and writes nothing", (flags, env, message) => {
    data = tempDataDir();
    const before = fingerprint(data.path);
    const r = runMvm(["agent", "serve", "--listen", "none", "--socket", "none", "--metrics-listen", "none", ...flags], { dataDir: data.path, env });
    expect(r.stderr).toMatch(message);
    expect(r.code).toBe(2);
    expect(fingerprint(data.path)).toEqual(before);
  });
});
