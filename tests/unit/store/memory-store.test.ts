import { describe, expect, it } from "vitest";
import { MemoryStore } from "../../../src/runtime/fake/memory-store.js";
import { describeStoreContract } from "./store-contract.js";

describeStoreContract("MemoryStore", async () => new MemoryStore({ dataRoot: "/data/mvm" }));

describe("MemoryStore extras", () => {
  it("reports broken records a test adds, as copies", async () => {
    const store = new MemoryStore();
    expect(await store.brokenRecords()).toEqual([]);
    store.addBrokenRecord({ path: "/x/tenant.json.broken", reason: "tenant.json: is empty" });
    const listed = await store.brokenRecords();
    expect(listed).toEqual([{ path: "/x/tenant.json.broken", reason: "tenant.json: is empty" }]);
    listed[0]!.reason = "mutated";
    expect((await store.brokenRecords())[0]?.reason).toBe("tenant.json: is empty");
  });

  it("keeps the ssh key pair it was given", async () => {
    const store = new MemoryStore();
    await store.putTenantSshKey("acme", { publicKey: "ssh-ed25519 AAAA x", privateKey: "PRIV" });
    expect(store.sshKey("acme")).toEqual({ publicKey: "ssh-ed25519 AAAA x", privateKey: "PRIV" });
    expect(store.sshKey("other")).toBeNull();
  });
});
