import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { MvmError, exhausted, failedPrecondition, invalid, notFound } from "../../../src/core/errors.js";
import { PkiError } from "../../../src/platform/pki/pki-error.js";
import { INTERNAL_ERROR_MESSAGE, instanceStateError, remapViolations, toConnectError } from "../../../src/api/errors.js";
import { IdempotencyCache } from "../../../src/api/idempotency.js";
import { encodePageToken, filterKeyOf, paginate } from "../../../src/api/paging.js";
import { BadRequestDetailSchema, InstanceOperation, InstanceStateDetailSchema } from "../../../gen/mvm/v1/errors_pb.js";
import { InstanceStatus } from "../../../gen/mvm/v1/instance_pb.js";

describe("toConnectError", () => {
  it("maps every domain error kind to its code", () => {
    const cases: Array<[MvmError, Code]> = [
      [notFound("tenant x"), Code.NotFound],
      [new MvmError("already_exists", "x"), Code.AlreadyExists],
      [failedPrecondition("x"), Code.FailedPrecondition],
      [exhausted("x"), Code.ResourceExhausted],
      [new MvmError("permission_denied", "x"), Code.PermissionDenied],
      [new MvmError("unavailable", "x"), Code.Unavailable],
      [new MvmError("terminal", "x"), Code.Internal],
      [new MvmError("internal", "x"), Code.Internal],
    ];
    for (const [error, code] of cases) expect(toConnectError(error).code).toBe(code);
  });

  it("sends invalid input with one BadRequestDetail violation per field", () => {
    const error = toConnectError(invalid([{ field: "tenant_id", rule: "must match" }, { field: "quotas.max_vcpus", rule: "must be <= 1024" }]));
    expect(error.code).toBe(Code.InvalidArgument);
    const [detail] = error.findDetails(BadRequestDetailSchema);
    expect(detail?.fieldViolations.map((v) => [v.field, v.rule])).toEqual([
      ["tenant_id", "must match"],
      ["quotas.max_vcpus", "must be <= 1024"],
    ]);
  });

  it("maps PKI errors like domain errors", () => {
    expect(toConnectError(new PkiError("failed_precondition", "no certificates")).code).toBe(Code.FailedPrecondition);
  });

  it("hides an unexpected error's message and stack from the caller", () => {
    const error = toConnectError(new TypeError("cannot read properties of undefined (reading 'secret')"));
    expect(error.code).toBe(Code.Internal);
    expect(error.rawMessage).toBe(INTERNAL_ERROR_MESSAGE);
    expect(error.message).not.toContain("secret");
  });

  it("passes a ConnectError through", () => {
    const original = new ConnectError("x", Code.Aborted);
    expect(toConnectError(original)).toBe(original);
  });

  it("builds an InstanceStateDetail with the operations allowed from the current state", () => {
    const error = instanceStateError("no", { tenantId: "a", poolId: "b", instanceId: "i-00000001" }, "sleeping", "start");
    const [detail] = error.findDetails(InstanceStateDetailSchema);
    expect(detail?.currentStatus).toBe(InstanceStatus.SLEEPING);
    expect(detail?.refusedOperation).toBe(InstanceOperation.START);
    expect(detail?.allowedOperations).toEqual([InstanceOperation.WAKE, InstanceOperation.STOP, InstanceOperation.DESTROY]);
  });

  it("rewrites violation paths and leaves other errors alone", () => {
    const renamed = remapViolations(invalid([{ field: "tenant_id", rule: "r" }]), (f) => `instance.${f}`) as MvmError;
    expect(renamed.violations).toEqual([{ field: "instance.tenant_id", rule: "r" }]);
    expect(renamed.message).toContain("instance.tenant_id");
    const other = notFound("x");
    expect(remapViolations(other, (f) => f)).toBe(other);
  });
});

describe("paginate", () => {
  const items = ["a", "b", "c", "d", "e"];
  const key = (s: string) => s;

  it("walks every item once, page after page", () => {
    const seen: string[] = [];
    let token = "";
    do {
      const page = paginate(items, key, { pageSize: 2, pageToken: token }, "f");
      seen.push(...page.items);
      token = page.nextPageToken;
    } while (token !== "");
    expect(seen).toEqual(items);
  });

  it("does not repeat or skip an item when one is deleted between pages", () => {
    const first = paginate(items, key, { pageSize: 2, pageToken: "" }, "f");
    const second = paginate(["a", "c", "d", "e"], key, { pageSize: 2, pageToken: first.nextPageToken }, "f");
    expect(second.items).toEqual(["c", "d"]);
  });

  it("uses the default size for 0 and cuts at the maximum", () => {
    const many = Array.from({ length: 1500 }, (_, i) => String(i).padStart(5, "0"));
    expect(paginate(many, key, { pageSize: 0, pageToken: "" }, "").items).toHaveLength(100);
    expect(paginate(many, key, { pageSize: 5000, pageToken: "" }, "").items).toHaveLength(1000);
  });

  it("refuses a token from another filter or a forged one", () => {
    const token = encodePageToken("b", filterKeyOf({ tenant: "a" }));
    expect(() => paginate(items, key, { pageSize: 2, pageToken: token }, filterKeyOf({ tenant: "b" }))).toThrow(/another filter/);
    expect(() => paginate(items, key, { pageSize: 2, pageToken: "garbage!" }, "")).toThrow(/page_token/);
  });

  it("pages newest first in descending order", () => {
    const page = paginate(["e", "d", "c"], key, { pageSize: 1, pageToken: encodePageToken("d", "") }, "", { defaultSize: 1, maxSize: 10 }, "desc");
    expect(page.items).toEqual(["c"]);
  });

  it("describes filters independently of key order", () => {
    expect(filterKeyOf({ a: 1, b: { d: 2, c: 3 } })).toBe(filterKeyOf({ b: { c: 3, d: 2 }, a: 1 }));
  });
});

describe("IdempotencyCache", () => {
  it("runs a request once per request_id and returns the first result to a retry", async () => {
    const cache = new IdempotencyCache();
    let runs = 0;
    const work = async () => ++runs;
    expect(await cache.run("s", "req-1", "fp", work)).toBe(1);
    expect(await cache.run("s", "req-1", "fp", work)).toBe(1);
    expect(await cache.run("s", "req-2", "fp", work)).toBe(2);
    expect(await cache.run("other-caller", "req-1", "fp", work)).toBe(3);
    expect(await cache.run("s", "", "fp", work)).toBe(4);
    expect(await cache.run("s", "", "fp", work)).toBe(5);
  });

  it("lets a concurrent retry wait for the first call", async () => {
    const cache = new IdempotencyCache();
    let runs = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const work = async () => {
      runs++;
      await gate;
      return "done";
    };
    const a = cache.run("s", "r", "fp", work);
    const b = cache.run("s", "r", "fp", work);
    release();
    expect(await Promise.all([a, b])).toEqual(["done", "done"]);
    expect(runs).toBe(1);
  });

  it("forgets failures, so a retry after one acts again", async () => {
    const cache = new IdempotencyCache();
    let runs = 0;
    await expect(cache.run("s", "r", "fp", async () => { runs++; throw new Error("boom"); })).rejects.toThrow("boom");
    expect(await cache.run("s", "r", "fp", async () => ++runs)).toBe(2);
  });

  it("expires after the TTL and stays bounded", async () => {
    let now = 0;
    const cache = new IdempotencyCache({ ttlMs: 1000, maxEntries: 3, now: () => now });
    let runs = 0;
    const work = async () => ++runs;
    await cache.run("s", "r", "fp", work);
    now = 999;
    expect(await cache.run("s", "r", "fp", work)).toBe(1);
    now = 1000;
    expect(await cache.run("s", "r", "fp", work)).toBe(2);
    for (let i = 0; i < 10; i++) await cache.run("s", `k${i}`, "fp", work);
    expect(cache.size).toBeLessThanOrEqual(3);
  });

  it("refuses a reused request_id with another request, and a malformed one", async () => {
    const cache = new IdempotencyCache();
    await cache.run("s", "r", "fp-1", async () => 1);
    await expect(cache.run("s", "r", "fp-2", async () => 2)).rejects.toMatchObject({ kind: "invalid", violations: [{ field: "request_id" }] });
    await expect(cache.run("s", "has space", "fp", async () => 2)).rejects.toMatchObject({ kind: "invalid" });
  });
});
