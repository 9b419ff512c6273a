// The compiled encoder must give exactly toBinary's bytes (and toBinary's errors) for every message it is given.
// Random messages of every type in the API's generated files, of the well-known types, and of a fixture proto that
// has every field shape proto3 allows, are encoded both ways and compared byte for byte.

import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  create,
  createFileRegistry,
  fromBinary,
  ScalarType,
  toBinary,
  type DescEnum,
  type DescField,
  type DescFile,
  type DescMessage,
  type Message,
} from "@bufbuild/protobuf";
import { FileDescriptorSetSchema, file_google_protobuf_descriptor, file_google_protobuf_struct, file_google_protobuf_timestamp, file_google_protobuf_duration, file_google_protobuf_field_mask } from "@bufbuild/protobuf/wkt";
import { beforeAll, describe, expect, it } from "vitest";
import { encodeMessage, hasCompiledEncoding } from "../../../src/api/proto-binary-encoder.js";
import { seededRandom } from "../../helpers/seeded-random.js";
import * as agentService from "../../../gen/mvm/v1/agent_service_pb.js";
import * as audit from "../../../gen/mvm/v1/audit_pb.js";
import * as build from "../../../gen/mvm/v1/build_pb.js";
import * as common from "../../../gen/mvm/v1/common_pb.js";
import * as desiredState from "../../../gen/mvm/v1/desired_state_pb.js";
import * as errors from "../../../gen/mvm/v1/errors_pb.js";
import * as fleetService from "../../../gen/mvm/v1/fleet_service_pb.js";
import * as instance from "../../../gen/mvm/v1/instance_pb.js";
import * as instanceService from "../../../gen/mvm/v1/instance_service_pb.js";
import * as node from "../../../gen/mvm/v1/node_pb.js";
import * as nodeService from "../../../gen/mvm/v1/node_service_pb.js";
import * as pool from "../../../gen/mvm/v1/pool_pb.js";
import * as poolService from "../../../gen/mvm/v1/pool_service_pb.js";
import * as reconcile from "../../../gen/mvm/v1/reconcile_pb.js";
import * as reconcileService from "../../../gen/mvm/v1/reconcile_service_pb.js";
import * as snapshot from "../../../gen/mvm/v1/snapshot_pb.js";
import * as tenant from "../../../gen/mvm/v1/tenant_pb.js";
import * as tenantService from "../../../gen/mvm/v1/tenant_service_pb.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../../..");
const GENERATED = [agentService, audit, build, common, desiredState, errors, fleetService, instance, instanceService, node, nodeService, pool, poolService, reconcile, reconcileService, snapshot, tenant, tenantService];


function messagesOf(file: DescFile): DescMessage[] {
  const out: DescMessage[] = [];
  const visit = (m: DescMessage) => {
    out.push(m);
    m.nestedMessages.forEach(visit);
  };
  file.messages.forEach(visit);
  return out;
}

const STRINGS = ["", "a", "ok", "i-0a1b2c3d", "héllo", "日本語", "😀 and more", "\ud800", "x\udc00y", "tail\ud83d", "a".repeat(70), "é".repeat(80), "mixed 😀".repeat(12)];
const INT32S = [0, 1, -1, 127, 128, -128, 16383, 16384, 2147483647, -2147483648];
const UINT32S = [0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455, 268435456, 4294967295];
const INT64S = [0n, 1n, -1n, 127n, 128n, 2n ** 31n, 2n ** 32n, 2n ** 35n + 7n, 2n ** 63n - 1n, -(2n ** 63n)];
const UINT64S = [0n, 1n, 127n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 49n + 3n, 2n ** 63n, 2n ** 64n - 1n];
const DOUBLES = [0, -0, 1.5, -2.25e300, 5e-324, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 1234.5678];
const FLOATS = [0, -0, 1.5, Math.fround(3.3), -Math.fround(1e30), Number.NaN, Number.POSITIVE_INFINITY, 3.4028234663852886e38];

class RandomValues {
  constructor(private readonly next: () => number) {}

  pick<T>(values: readonly T[]): T {
    return values[Math.floor(this.next() * values.length)]!;
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  count(max: number): number {
    return Math.floor(this.next() * (max + 1));
  }

  scalar(type: ScalarType): unknown {
    const random = this.chance(0.3);
    switch (type) {
      case ScalarType.STRING:
        return random ? Array.from({ length: this.count(20) }, () => String.fromCharCode(32 + this.count(94))).join("") : this.pick(STRINGS);
      case ScalarType.BYTES:
        return Uint8Array.from({ length: this.chance(0.1) ? 300 : this.count(12) }, () => this.count(255));
      case ScalarType.BOOL:
        return this.chance(0.5);
      case ScalarType.DOUBLE:
        return random ? (this.next() - 0.5) * 1e12 : this.pick(DOUBLES);
      case ScalarType.FLOAT:
        return random ? Math.fround((this.next() - 0.5) * 1e6) : this.pick(FLOATS);
      case ScalarType.INT32:
      case ScalarType.SINT32:
      case ScalarType.SFIXED32:
        return random ? Math.floor((this.next() - 0.5) * 2 ** 32) : this.pick(INT32S);
      case ScalarType.UINT32:
      case ScalarType.FIXED32:
        return random ? Math.floor(this.next() * 2 ** 32) : this.pick(UINT32S);
      case ScalarType.UINT64:
      case ScalarType.FIXED64:
        return random ? BigInt(Math.floor(this.next() * 2 ** 53)) * BigInt(1 + this.count(2000)) : this.pick(UINT64S);
      default:
        return random ? BigInt(Math.floor((this.next() - 0.5) * 2 ** 53)) * BigInt(1 + this.count(1000)) : this.pick(INT64S);
    }
  }

  enumValue(e: DescEnum): number {
    if (this.chance(0.1)) return this.pick([99, -5, 2147483647]); // open enums carry unknown numbers
    return this.pick(e.values).number;
  }

  message(desc: DescMessage, depth: number): Message {
    const init: Record<string, unknown> = {};
    const oneofsDone = new Set<string>();
    for (const field of desc.fields) {
      if (field.oneof !== undefined) {
        if (oneofsDone.has(field.oneof.name)) continue;
        oneofsDone.add(field.oneof.name);
        if (this.chance(0.3)) continue;
        const member = this.pick(field.oneof.fields);
        const value = this.singular(member, depth);
        if (value !== undefined) init[field.oneof.localName] = { case: member.localName, value };
        continue;
      }
      if (this.chance(0.25)) continue;
      const value = this.fieldValue(field, depth);
      if (value !== undefined) init[field.localName] = value;
    }
    return create(desc, init as never);
  }

  private singular(field: DescField, depth: number): unknown {
    switch (field.fieldKind) {
      case "scalar":
        return this.scalar(field.scalar);
      case "enum":
        return this.enumValue(field.enum);
      case "message":
        return depth >= 3 ? undefined : this.message(field.message, depth + 1);
      default:
        return undefined;
    }
  }

  private fieldValue(field: DescField, depth: number): unknown {
    switch (field.fieldKind) {
      case "list":
        return Array.from({ length: this.count(3) }, () =>
          field.listKind === "scalar" ? this.scalar(field.scalar) : field.listKind === "enum" ? this.enumValue(field.enum) : depth >= 3 ? create(field.message) : this.message(field.message, depth + 1),
        );
      case "map": {
        const out: Record<string, unknown> = {};
        for (let i = this.count(3); i > 0; i--) {
          const key = field.mapKey === ScalarType.STRING ? String(this.scalar(ScalarType.STRING)) : String(this.count(1000));
          out[key] =
            field.mapKind === "scalar" ? this.scalar(field.scalar) : field.mapKind === "enum" ? this.enumValue(field.enum) : depth >= 3 ? create(field.message) : this.message(field.message, depth + 1);
        }
        return out;
      }
      default:
        return this.singular(field, depth);
    }
  }
}

function expectSameBytes(desc: DescMessage, message: Message, context: string): void {
  let expected: Buffer;
  try {
    expected = Buffer.from(toBinary(desc, message));
  } catch (e) {
    // A message toBinary refuses (a proto2 required field unset): the encoder must refuse it with the same error.
    expect(() => encodeMessage(desc, message as never), context).toThrow((e as Error).message);
    return;
  }
  const actual = encodeMessage(desc, message as never);
  if (!actual.equals(expected)) {
    throw new Error(`${context}: ${desc.typeName}\n  toBinary ${expected.toString("hex")}\n  encoder  ${actual.toString("hex")}`);
  }
}

let fixture: { allShapes: DescMessage; sparse: DescMessage; intKeyed: DescMessage };

beforeAll(() => {
  // The fixture proto is compiled by buf (a dev dependency) rather than generated into gen/.
  const image = execFileSync(join(ROOT, "node_modules/.bin/buf"), ["build", join(ROOT, "tests/unit/api/encoder-fixture"), "-o", "-"], { cwd: ROOT });
  const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, image));
  fixture = {
    allShapes: registry.getMessage("encoder.test.AllShapes")!,
    sparse: registry.getMessage("encoder.test.Sparse")!,
    intKeyed: registry.getMessage("encoder.test.IntKeyedMap")!,
  };
  expect(fixture.allShapes.fields.length).toBeGreaterThan(60);
});

describe("encodeMessage: the bytes toBinary gives", () => {
  it("for random messages with every proto3 field shape", () => {
    const random = new RandomValues(seededRandom(1));
    for (let i = 0; i < 1500; i++) expectSameBytes(fixture.allShapes, random.message(fixture.allShapes, 0), `seed 1, message ${i}`);
  });

  it("for every message type of the API, randomly filled", () => {
    const types = GENERATED.flatMap((module) => Object.values(module).filter((v): v is DescFile => (v as DescFile)?.kind === "file").flatMap(messagesOf));
    expect(types.length).toBeGreaterThan(100);
    const random = new RandomValues(seededRandom(2));
    for (const desc of types) {
      for (let i = 0; i < 30; i++) expectSameBytes(desc, random.message(desc, 0), `seed 2, message ${i}`);
    }
  });

  it("for the well-known types, proto2 descriptors (defaults on the prototype, required fields) included", () => {
    const random = new RandomValues(seededRandom(3));
    const files = [file_google_protobuf_struct, file_google_protobuf_timestamp, file_google_protobuf_duration, file_google_protobuf_field_mask, file_google_protobuf_descriptor];
    for (const desc of files.flatMap(messagesOf)) {
      for (let i = 0; i < 20; i++) expectSameBytes(desc, random.message(desc, 0), `seed 3, message ${i}`);
    }
  });

  it("compiles every message type of the API and of the fixture, but not one with a map keyed by integers", () => {
    const types = GENERATED.flatMap((module) => Object.values(module).filter((v): v is DescFile => (v as DescFile)?.kind === "file").flatMap(messagesOf));
    expect(types.filter((desc) => !hasCompiledEncoding(desc)).map((desc) => desc.typeName)).toEqual([]);
    expect(hasCompiledEncoding(fixture.allShapes)).toBe(true);
    expect(hasCompiledEncoding(fixture.intKeyed)).toBe(false);
  });

  it("for a message type off the fast path (a map keyed by integers)", () => {
    const random = new RandomValues(seededRandom(4));
    for (let i = 0; i < 50; i++) expectSameBytes(fixture.intKeyed, random.message(fixture.intKeyed, 0), `seed 4, message ${i}`);
    expect(encodeMessage(fixture.intKeyed, create(fixture.intKeyed, { byNumber: { 7: "seven" } } as never)).length).toBeGreaterThan(0);
  });

  it("with unknown fields kept from a decode, written after the known ones", () => {
    const random = new RandomValues(seededRandom(5));
    for (let i = 0; i < 200; i++) {
      const bytes = toBinary(fixture.allShapes, random.message(fixture.allShapes, 0));
      const decoded = fromBinary(fixture.sparse, bytes);
      expectSameBytes(fixture.sparse, decoded, `seed 5, message ${i}`);
    }
  });

  it("leaves the reserved prefix to the caller and the message after it", () => {
    const message = new RandomValues(seededRandom(6)).message(fixture.allShapes, 0);
    const out = encodeMessage(fixture.allShapes, message as never, 5);
    expect(out.subarray(5).equals(Buffer.from(toBinary(fixture.allShapes, message)))).toBe(true);
  });
});

describe("encodeMessage: values toBinary refuses or converts", () => {
  const cases: Array<[string, Record<string, unknown>]> = [
    ["an int32 out of range", { fInt32: 2 ** 40 }],
    ["a fractional int32", { fInt32: 1.5 }],
    ["a negative uint32", { fUint32: -1 }],
    ["a float32 out of range", { fFloat: 1e300 }],
    ["a uint64 below zero", { fUint64: -1n }],
    ["an int64 above its range", { fInt64: 2n ** 63n }],
    ["a string in an int32 field", { fInt32: "12" }],
    ["a string in an int64 field", { fInt64: "-12" }],
    ["a number in a uint64 field", { fUint64: 12 }],
    ["a number in a string field", { fString: 12 }],
  ];
  for (const [name, fields] of cases) {
    it(`gives toBinary's result for ${name}`, () => {
      const message = Object.assign(create(fixture.allShapes), fields);
      let expected: Buffer | string;
      try {
        expected = Buffer.from(toBinary(fixture.allShapes, message));
      } catch (e) {
        expected = (e as Error).message;
      }
      if (typeof expected === "string") expect(() => encodeMessage(fixture.allShapes, message as never)).toThrow(expected);
      else expect(encodeMessage(fixture.allShapes, message as never).equals(expected)).toBe(true);
    });
  }
});
