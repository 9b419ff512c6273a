import { homedir } from "node:os";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { resolveDataRoot } from "../../../src/runtime/store/data-root.js";

describe("resolveDataRoot", () => {
  const env = { MVM_HOME: "/srv/mvm-home", XDG_DATA_HOME: "/home/u/.data", HOME: "/home/u" };

  it("prefers --data-dir over everything, resolving a relative path", () => {
    expect(resolveDataRoot({ dataDir: "/opt/d", env, uid: 0 })).toBe("/opt/d");
    expect(resolveDataRoot({ dataDir: "rel/d", env, uid: 1000 })).toBe(resolve(process.cwd(), "rel/d"));
  });

  it("uses $MVM_HOME next, for root too", () => {
    expect(resolveDataRoot({ env, uid: 0 })).toBe("/srv/mvm-home");
    expect(resolveDataRoot({ env, uid: 1000 })).toBe("/srv/mvm-home");
    expect(resolveDataRoot({ env: { ...env, MVM_HOME: "here" }, uid: 1000 })).toBe(resolve(process.cwd(), "here"));
  });

  it("uses /var/lib/mvm for root without $MVM_HOME", () => {
    expect(resolveDataRoot({ env: { ...env, MVM_HOME: undefined }, uid: 0 })).toBe("/var/lib/mvm");
    expect(resolveDataRoot({ env: { ...env, MVM_HOME: "" }, uid: 0 })).toBe("/var/lib/mvm");
  });

  it("uses $XDG_DATA_HOME/mvm, then ~/.local/share/mvm, for other users", () => {
    expect(resolveDataRoot({ env: { XDG_DATA_HOME: "/home/u/.data", HOME: "/home/u" }, uid: 1000 })).toBe("/home/u/.data/mvm");
    expect(resolveDataRoot({ env: { HOME: "/home/u" }, uid: 1000 })).toBe("/home/u/.local/share/mvm");
    expect(resolveDataRoot({ env: { XDG_DATA_HOME: "", HOME: "/home/u" }, uid: 1000 })).toBe("/home/u/.local/share/mvm");
    // XDG: a relative XDG_DATA_HOME is invalid and ignored.
    expect(resolveDataRoot({ env: { XDG_DATA_HOME: "rel", HOME: "/home/u" }, uid: 1000 })).toBe("/home/u/.local/share/mvm");
    expect(resolveDataRoot({ env: {}, uid: 1000 })).toBe(resolve(homedir(), ".local/share/mvm"));
  });
});
