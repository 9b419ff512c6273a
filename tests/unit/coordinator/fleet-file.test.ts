import { describe, expect, it } from "vitest";
import { MvmError } from "../../../src/core/errors.js";
import { desiredStateToProto, parsePushDocuments } from "../../../src/coordinator/desired-documents.js";
import { parseFleet, selectNodes } from "../../../src/coordinator/fleet-file.js";

function violations(work: () => unknown): string[] {
  try {
    work();
  } catch (e) {
    if (e instanceof MvmError && e.kind === "invalid") return e.violations.map((v) => `${v.field}: ${v.rule}`);
    throw e;
  }
  throw new Error("expected invalid input");
}

const credentials = { ca: "ca.pem", cert: "c.pem", key: "/abs/k.pem" };

describe("fleet file", () => {
  it("reads nodes and resolves credential paths against the file's folder", () => {
    const fleet = parseFleet({ credentials, nodes: [{ name: "a", address: "127.0.0.1:7443", labels: { zone: "x" } }, { name: "b", address: "[::1]:7444" }] }, "/etc/mvm");
    expect(fleet.credentials).toEqual({ ca: "/etc/mvm/ca.pem", cert: "/etc/mvm/c.pem", key: "/abs/k.pem" });
    expect(fleet.nodes.map((n) => [n.name, n.host, n.port])).toEqual([["a", "127.0.0.1", 7443], ["b", "::1", 7444]]);
    expect(selectNodes(fleet, [], { zone: "x" }).map((n) => n.name)).toEqual(["a"]);
    expect(violations(() => selectNodes(fleet, ["a", "zz"], {}))).toEqual(["--nodes: must name nodes of the fleet file (unknown: zz)"]);
  });

  it("reports every violation with its path", () => {
    const found = violations(() =>
      parseFleet({ credentials: { ca: "", cert: "c" }, nodes: [{ name: "A", address: "h:0" }, { name: "b", address: "h:1", extra: 1 }, { name: "b", address: "h:1" }] }, "/"),
    );
    expect(found).toEqual(
      expect.arrayContaining([
        "credentials.ca: is required: a PEM file path",
        "credentials.key: is required: a PEM file path",
        expect.stringMatching(/^nodes\[0\]\.name: must be 1-63 characters/),
        expect.stringMatching(/^nodes\[0\]\.address: must be HOST:PORT/),
        expect.stringMatching(/^nodes\[1\]\.extra: is not a known field/),
        expect.stringMatching(/^nodes\[2\]\.name: must be unique/),
        expect.stringMatching(/^nodes\[2\]\.address: must be unique/),
      ]),
    );
    expect(violations(() => parseFleet({ credentials }, "/"))).toEqual([expect.stringMatching(/^nodes: is required/)]);
  });
});

describe("push documents", () => {
  const doc = { schema_version: 1, tenants: [{ tenant_id: "acme", pools: [{ pool_id: "web", image: { debian: { suite: "bookworm" } }, resources: { vcpus: 1, mem_mib: 256 }, desired_counts: { running: 0 } }] }] };

  it("a template gets each node's ID; a fleet document keeps its own and fills missing ones", () => {
    const template = parsePushDocuments(doc, ["a"]);
    expect(template.kind).toBe("template");
    if (template.kind !== "template") return;
    const proto = desiredStateToProto(template.document, "node-1234");
    expect(proto.nodeId).toBe("node-1234");
    expect(proto.tenants[0]?.pools[0]?.spec?.resources?.memMib).toBe(256);
    const perNode = parsePushDocuments({ nodes: { a: { ...doc, node_id: "given" }, b: doc } }, ["a", "b"]);
    if (perNode.kind !== "per-node") throw new Error("expected per-node");
    expect(desiredStateToProto(perNode.documents.get("a")!, "ignored").nodeId).toBe("given");
    expect(desiredStateToProto(perNode.documents.get("b")!, "node-b").nodeId).toBe("node-b");
  });

  it("refuses bad documents and unknown node names before anything is sent, naming the path", () => {
    const bad = { ...doc, tenants: [{ tenant_id: "acme", pools: [{ pool_id: "web", image: { debian: {} }, resources: { vcpus: 0, mem_mib: 256 } }] }] };
    expect(violations(() => parsePushDocuments({ nodes: { a: bad, zz: doc } }, ["a"]))).toEqual(
      expect.arrayContaining([expect.stringMatching(/^nodes\.a\.tenants\[0\]\.pools\[0\]\.resources\.vcpus: /), "nodes.zz: must name a node of the fleet file"]),
    );
  });
});
