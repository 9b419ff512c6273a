import { describe, expect, it } from "vitest";
import type { TenantNetworkPlan } from "../../../src/core/data-plane-ports.js";
import { isMvmError } from "../../../src/core/errors.js";
import { checkNetnsName, checkTapPlan, tapPlanViolations, tenantPlanViolations } from "../../../src/runtime/network/network-plan-checks.js";

const plan: TenantNetworkPlan = {
  tenantId: "acme",
  netId: 1,
  bridgeName: "br-mvm-1",
  gatewayIp: "10.201.1.1",
  subnet: "10.201.1.0/24",
  prefixLen: 24,
  metadataPort: 8169,
};
const fields = (v: { field: string }[]) => v.map((x) => x.field);

describe("network plan checks", () => {
  it("accepts a consistent plan and TAP", () => {
    expect(tenantPlanViolations(plan)).toEqual([]);
    expect(tapPlanViolations(plan, { name: "tn1i3", mac: "02:fc:00:01:00:03", guestIp: "10.201.1.3" })).toEqual([]);
  });

  it("refuses anything that could change an nft script or an ip argument", () => {
    expect(fields(tenantPlanViolations({ ...plan, bridgeName: 'br" ; flush ruleset' }))).toEqual(["bridge_name"]);
    expect(fields(tenantPlanViolations({ ...plan, bridgeName: "a-name-longer-than-15" }))).toEqual(["bridge_name"]);
    expect(fields(tapPlanViolations(plan, { name: "tn1i3\n", mac: "02:fc:00:01:00:03", guestIp: "10.201.1.3" }))).toEqual(["tap.name"]);
    expect(fields(tapPlanViolations(plan, { name: "tap-1", mac: "02:fc:00:01:00:03", guestIp: "10.201.1.3" }))).toEqual(["tap.name"]);
    expect(() => checkNetnsName("../etc")).toThrow(/netns: must be/);
  });

  it("checks addresses against the subnet", () => {
    expect(fields(tenantPlanViolations({ ...plan, gatewayIp: "10.201.2.1" }))).toEqual(["gateway_ip"]);
    expect(fields(tenantPlanViolations({ ...plan, prefixLen: 16 }))).toEqual(["prefix_len"]);
    expect(fields(tenantPlanViolations({ ...plan, subnet: "10.201.1.5/24" }))).toEqual(["subnet"]);
    expect(fields(tenantPlanViolations({ ...plan, metadataPort: 0 }))).toEqual(["metadata_port"]);
    expect(fields(tenantPlanViolations({ ...plan, netId: 5000 }))).toEqual(["net_id"]);
    const tap = { name: "tn1i3", mac: "02:fc:00:01:00:03", guestIp: "10.201.2.3" };
    expect(fields(tapPlanViolations(plan, tap))).toEqual(["tap.guest_ip"]);
    expect(fields(tapPlanViolations(plan, { ...tap, guestIp: "10.201.1.1" }))).toEqual(["tap.guest_ip"]);
  });

  it("refuses multicast and malformed MACs", () => {
    const tap = { name: "tn1i3", mac: "03:fc:00:01:00:03", guestIp: "10.201.1.3" };
    expect(fields(tapPlanViolations(plan, tap))).toEqual(["tap.mac"]);
    expect(fields(tapPlanViolations(plan, { ...tap, mac: "02:FC:00:01:00:03" }))).toEqual(["tap.mac"]);
    expect(fields(tapPlanViolations(plan, { ...tap, mac: "02:fc:00:01:00" }))).toEqual(["tap.mac"]);
  });

  it("throws an invalid error naming the fields", () => {
    try {
      checkTapPlan(plan, { name: "tn1i3", mac: "x", guestIp: "y" });
      expect.unreachable();
    } catch (e) {
      expect(isMvmError(e) && e.kind).toBe("invalid");
      expect((e as Error).message).toMatch(/tap\.mac: must be a unicast MAC.*tap\.guest_ip: must be an IPv4 address/);
    }
  });
});
