// Protobuf binary encoding compiled once per message type, for the agent's reply path.
//
// @bufbuild/protobuf's toBinary walks every message through its reflection layer and a writer that grows chunk by
// chunk: for a GetInstance reply that is about a quarter of the agent's whole per-call time (bench/rpc-latency.mjs).
// This encoder reads the generated message objects directly, from a plan made once per type, and writes the bytes
// in two passes (sizes first, then one buffer of the final length), so a reply is a single allocation.
//
// It must produce exactly the bytes toBinary produces (tests/unit/api/proto-binary-encoder.test.ts compares them on
// random messages of every type the API has). Whatever it does not handle goes to toBinary instead, so the result
// is always toBinary's: message types that use a feature with a special JS representation or a rare wire form
// (wrapper and Struct fields, groups, proto2 required fields, maps keyed by anything but strings), and any value
// toBinary would convert or refuse (strings in numeric fields, out-of-range numbers, 64-bit values that are not
// bigints); for those toBinary throws its own error.

import { ScalarType, toBinary, type DescField, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { isWrapperDesc } from "@bufbuild/protobuf/wkt";

const WIRE_VARINT = 0;
const WIRE_BIT64 = 1;
const WIRE_LENGTH_DELIMITED = 2;
const WIRE_BIT32 = 5;

const FEATURE_PRESENCE_IMPLICIT = 2;
const FEATURE_PRESENCE_LEGACY_REQUIRED = 3;

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;
const FLOAT32_MAX = 3.4028234663852886e38;

const KIND_SCALAR = 0;
const KIND_MESSAGE = 1;
const KIND_LIST_PACKED = 2;
const KIND_LIST_UNPACKED = 3;
const KIND_LIST_MESSAGE = 4;
const KIND_MAP = 5;

interface FieldPlan {
  /** Property holding the value: the field's own, or its oneof group's. */
  property: string;
  /** The field's local name when it belongs to a oneof (the group's `case`), else undefined. */
  oneofCase: string | undefined;
  implicit: boolean;
  kind: number;
  /** Scalar type of the value, list items, or map values (enums are int32 on the wire). */
  scalar: ScalarType;
  /** The zero value of an enum field with implicit presence (its first value). */
  enumZero: number | undefined;
  /** The field's tag, varint-encoded. */
  tag: number[];
  /** The nested plan for message, message list and message-valued map fields. */
  message: MessagePlan | undefined;
  /** For maps: whether values are messages. */
  mapValueIsMessage: boolean;
}

interface MessagePlan {
  fields: FieldPlan[];
}

/** Thrown inside a pass when a value is not one the fast path encodes; the caller hands the message to toBinary. */
class NotFastPath extends Error {}
const NOT_FAST_PATH = new NotFastPath("not on the fast path");

const plans = new WeakMap<DescMessage, MessagePlan>();
const fastPathAllowed = new WeakMap<DescMessage, boolean>();

function tagBytes(fieldNo: number, wireType: number): number[] {
  let value = ((fieldNo << 3) | wireType) >>> 0;
  const bytes: number[] = [];
  while (value > 0x7f) {
    bytes.push((value & 0x7f) | 0x80);
    value >>>= 7;
  }
  bytes.push(value);
  return bytes;
}

function wireTypeOf(scalar: ScalarType): number {
  switch (scalar) {
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return WIRE_LENGTH_DELIMITED;
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return WIRE_BIT64;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return WIRE_BIT32;
    default:
      return WIRE_VARINT;
  }
}

/** Why a field keeps its message type off the fast path, or undefined when nothing does. */
function unsupportedFeature(field: DescField): string | undefined {
  if (field.presence === FEATURE_PRESENCE_LEGACY_REQUIRED) return "a required field";
  switch (field.fieldKind) {
    case "message":
      if (field.delimitedEncoding) return "a group";
      if (field.oneof === undefined && isWrapperDesc(field.message)) return "a wrapper field";
      if (field.message.typeName === "google.protobuf.Struct" && field.parent.typeName !== "google.protobuf.Value") {
        return "a Struct field";
      }
      return undefined;
    case "list":
      return field.listKind === "message" && field.delimitedEncoding ? "a group" : undefined;
    case "map":
      return field.mapKey === ScalarType.STRING ? undefined : "a map not keyed by strings";
    default:
      return undefined;
  }
}

function nestedMessageOf(field: DescField): DescMessage | undefined {
  switch (field.fieldKind) {
    case "message":
      return field.message;
    case "list":
      return field.listKind === "message" ? field.message : undefined;
    case "map":
      return field.mapKind === "message" ? field.message : undefined;
    default:
      return undefined;
  }
}

/** Whether every message type reachable from `desc` is one the fast path handles. */
export function hasCompiledEncoding(desc: DescMessage): boolean {
  const known = fastPathAllowed.get(desc);
  if (known !== undefined) return known;
  const seen = new Set<DescMessage>();
  const pending = [desc];
  let allowed = true;
  while (allowed && pending.length > 0) {
    const next = pending.pop()!;
    if (seen.has(next)) continue;
    seen.add(next);
    for (const field of next.fields) {
      if (unsupportedFeature(field) !== undefined) {
        allowed = false;
        break;
      }
      const nested = nestedMessageOf(field);
      if (nested !== undefined) pending.push(nested);
    }
  }
  fastPathAllowed.set(desc, allowed);
  return allowed;
}

function planOf(desc: DescMessage): MessagePlan {
  const existing = plans.get(desc);
  if (existing !== undefined) return existing;
  // Registered before its fields are planned, so that recursive types end.
  const plan: MessagePlan = { fields: [] };
  plans.set(desc, plan);
  const sorted = [...desc.fields].sort((a, b) => a.number - b.number);
  plan.fields = sorted.map((field) => fieldPlanOf(field));
  return plan;
}

function fieldPlanOf(field: DescField): FieldPlan {
  const base = {
    property: field.oneof === undefined ? field.localName : field.oneof.localName,
    oneofCase: field.oneof === undefined ? undefined : field.localName,
    implicit: field.presence === FEATURE_PRESENCE_IMPLICIT && field.oneof === undefined,
    enumZero: undefined as number | undefined,
    message: undefined as MessagePlan | undefined,
    mapValueIsMessage: false,
  };
  switch (field.fieldKind) {
    case "scalar":
      return { ...base, kind: KIND_SCALAR, scalar: field.scalar, tag: tagBytes(field.number, wireTypeOf(field.scalar)) };
    case "enum":
      return {
        ...base,
        kind: KIND_SCALAR,
        scalar: ScalarType.INT32,
        enumZero: field.enum.values[0]?.number ?? 0,
        tag: tagBytes(field.number, WIRE_VARINT),
      };
    case "message":
      return {
        ...base,
        kind: KIND_MESSAGE,
        scalar: ScalarType.INT32,
        tag: tagBytes(field.number, WIRE_LENGTH_DELIMITED),
        message: planOf(field.message),
      };
    case "list":
      if (field.listKind === "message") {
        return {
          ...base,
          kind: KIND_LIST_MESSAGE,
          scalar: ScalarType.INT32,
          tag: tagBytes(field.number, WIRE_LENGTH_DELIMITED),
          message: planOf(field.message),
        };
      }
      {
        const scalar = field.listKind === "enum" ? ScalarType.INT32 : field.scalar;
        return field.packed
          ? { ...base, kind: KIND_LIST_PACKED, scalar, tag: tagBytes(field.number, WIRE_LENGTH_DELIMITED) }
          : { ...base, kind: KIND_LIST_UNPACKED, scalar, tag: tagBytes(field.number, wireTypeOf(scalar)) };
      }
    case "map":
      return {
        ...base,
        kind: KIND_MAP,
        scalar: field.mapKind === "scalar" ? field.scalar : ScalarType.INT32,
        tag: tagBytes(field.number, WIRE_LENGTH_DELIMITED),
        message: field.mapKind === "message" ? planOf(field.message) : undefined,
        mapValueIsMessage: field.mapKind === "message",
      };
  }
}

// ---- sizes ----------------------------------------------------------------------------------------------------

function varint32Size(value: number): number {
  if (value < 0x80) return 1;
  if (value < 0x4000) return 2;
  if (value < 0x200000) return 3;
  if (value < 0x10000000) return 4;
  return 5;
}

function varint64Size(unsigned: bigint): number {
  if (unsigned <= 0xffffffffn) return varint32Size(Number(unsigned));
  let size = 1;
  let rest = unsigned;
  while (rest > 0x7fn) {
    rest >>= 7n;
    size++;
  }
  return size;
}

/** UTF-8 length of `s`, as TextEncoder would encode it (a lone surrogate becomes U+FFFD, 3 bytes). */
function utf8Length(s: string): number {
  if (s.length > 64) return Buffer.byteLength(s, "utf8");
  let size = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) size += 1;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        size += 2; // the pair: 2 UTF-16 units, 4 bytes
        i++;
      } else size += 2;
    } else size += 2;
  }
  return size;
}

/** The unsigned 64-bit pattern that a 64-bit value is written as. */
function unsigned64(scalar: ScalarType, value: unknown): bigint {
  if (typeof value !== "bigint") throw NOT_FAST_PATH;
  switch (scalar) {
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      if (value < 0n || value > UINT64_MAX) throw NOT_FAST_PATH;
      return value;
    case ScalarType.SINT64:
      if (value < INT64_MIN || value > INT64_MAX) throw NOT_FAST_PATH;
      return BigInt.asUintN(64, (value << 1n) ^ (value >> 63n));
    default:
      if (value < INT64_MIN || value > INT64_MAX) throw NOT_FAST_PATH;
      return BigInt.asUintN(64, value);
  }
}

function isInt32(value: unknown): value is number {
  return typeof value === "number" && (value | 0) === value;
}

function isUint32(value: unknown): value is number {
  return typeof value === "number" && value >>> 0 === value;
}

/** Bytes of one scalar value (no tag). String lengths are recorded in `lengths` for the write pass. */
function scalarSize(scalar: ScalarType, value: unknown, lengths: number[]): number {
  switch (scalar) {
    case ScalarType.STRING: {
      if (typeof value !== "string") throw NOT_FAST_PATH;
      const length = utf8Length(value);
      lengths.push(length);
      return varint32Size(length) + length;
    }
    case ScalarType.BYTES:
      if (!(value instanceof Uint8Array)) throw NOT_FAST_PATH;
      return varint32Size(value.byteLength) + value.byteLength;
    case ScalarType.BOOL:
      return 1;
    case ScalarType.DOUBLE:
      if (typeof value !== "number") throw NOT_FAST_PATH;
      return 8;
    case ScalarType.FLOAT:
      if (typeof value !== "number" || (Number.isFinite(value) && Math.abs(value) > FLOAT32_MAX)) throw NOT_FAST_PATH;
      return 4;
    case ScalarType.FIXED32:
      if (!isUint32(value)) throw NOT_FAST_PATH;
      return 4;
    case ScalarType.SFIXED32:
      if (!isInt32(value)) throw NOT_FAST_PATH;
      return 4;
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      unsigned64(scalar, value);
      return 8;
    case ScalarType.INT32:
      if (!isInt32(value)) throw NOT_FAST_PATH;
      return value < 0 ? 10 : varint32Size(value);
    case ScalarType.UINT32:
      if (!isUint32(value)) throw NOT_FAST_PATH;
      return varint32Size(value);
    case ScalarType.SINT32:
      if (!isInt32(value)) throw NOT_FAST_PATH;
      return varint32Size(((value << 1) ^ (value >> 31)) >>> 0);
    default:
      // INT64, UINT64, SINT64
      return varint64Size(unsigned64(scalar, value));
  }
}

function isImplicitZero(field: FieldPlan, value: unknown): boolean {
  if (field.enumZero !== undefined) return value === field.enumZero;
  switch (field.scalar) {
    case ScalarType.BOOL:
      return value === false;
    case ScalarType.STRING:
      return value === "";
    case ScalarType.BYTES:
      return value instanceof Uint8Array && value.byteLength === 0;
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return Object.is(value, 0);
    default:
      return value == 0; // loosely, as toBinary does: 0, 0n and "0" alike
  }
}

/** The field's value when it is set (would be written), else undefined. */
function setValueOf(field: FieldPlan, message: Record<string, unknown>): unknown {
  const held = message[field.property];
  if (field.oneofCase !== undefined) {
    const group = held as { case: unknown; value: unknown } | undefined;
    return group !== undefined && group.case === field.oneofCase ? group.value : undefined;
  }
  switch (field.kind) {
    case KIND_LIST_PACKED:
    case KIND_LIST_UNPACKED:
    case KIND_LIST_MESSAGE:
      if (!Array.isArray(held)) throw NOT_FAST_PATH;
      return held.length > 0 ? held : undefined;
    case KIND_MAP:
      if (held === null || typeof held !== "object") throw NOT_FAST_PATH;
      return hasOwnKey(held) ? held : undefined;
    default:
      if (field.implicit) return isImplicitZero(field, held) ? undefined : held;
      return held !== undefined && Object.prototype.hasOwnProperty.call(message, field.property) ? held : undefined;
  }
}

function hasOwnKey(object: object): boolean {
  for (const key in object) if (Object.prototype.hasOwnProperty.call(object, key)) return true;
  return false;
}

function messageObject(value: unknown): Record<string, unknown> {
  if (value === null || typeof value !== "object") throw NOT_FAST_PATH;
  return value as Record<string, unknown>;
}

interface UnknownField {
  no: number;
  wireType: number;
  data: Uint8Array;
}

/** Size of `message`'s body; every nested message's body size and every string's length go to `lengths`, in order. */
function messageSize(plan: MessagePlan, message: Record<string, unknown>, lengths: number[]): number {
  let size = 0;
  for (const field of plan.fields) {
    const value = setValueOf(field, message);
    if (value === undefined) continue;
    const tagSize = field.tag.length;
    switch (field.kind) {
      case KIND_SCALAR:
        size += tagSize + scalarSize(field.scalar, value, lengths);
        break;
      case KIND_MESSAGE:
        size += tagSize + nestedSize(field.message!, value, lengths);
        break;
      case KIND_LIST_MESSAGE:
        for (const item of value as unknown[]) size += tagSize + nestedSize(field.message!, item, lengths);
        break;
      case KIND_LIST_UNPACKED:
        for (const item of value as unknown[]) size += tagSize + scalarSize(field.scalar, item, lengths);
        break;
      case KIND_LIST_PACKED: {
        const slot = lengths.length;
        lengths.push(0);
        let body = 0;
        for (const item of value as unknown[]) body += scalarSize(field.scalar, item, lengths);
        lengths[slot] = body;
        size += tagSize + varint32Size(body) + body;
        break;
      }
      case KIND_MAP: {
        const entries = value as Record<string, unknown>;
        for (const key in entries) {
          const slot = lengths.length;
          lengths.push(0);
          let body = 1 + scalarSize(ScalarType.STRING, key, lengths);
          const entryValue = entries[key];
          body += 1 + (field.mapValueIsMessage ? nestedSize(field.message!, entryValue, lengths) : scalarSize(field.scalar, entryValue, lengths));
          lengths[slot] = body;
          size += tagSize + varint32Size(body) + body;
        }
        break;
      }
    }
  }
  const unknown = message.$unknown as UnknownField[] | undefined;
  if (unknown !== undefined) {
    for (const { no, wireType, data } of unknown) size += tagBytes(no, wireType).length + data.byteLength;
  }
  return size;
}

function nestedSize(plan: MessagePlan, value: unknown, lengths: number[]): number {
  const slot = lengths.length;
  lengths.push(0);
  const body = messageSize(plan, messageObject(value), lengths);
  lengths[slot] = body;
  return varint32Size(body) + body;
}

// ---- writing --------------------------------------------------------------------------------------------------

/** The write pass's position in `lengths`; encoding is synchronous, so one cursor serves every call. */
let cursor = 0;

function writeVarint32(out: Buffer, pos: number, value: number): number {
  while (value > 0x7f) {
    out[pos++] = (value & 0x7f) | 0x80;
    value >>>= 7;
  }
  out[pos++] = value;
  return pos;
}

function writeVarint64(out: Buffer, pos: number, unsigned: bigint): number {
  if (unsigned <= 0xffffffffn) return writeVarint32(out, pos, Number(unsigned));
  while (unsigned > 0x7fn) {
    out[pos++] = Number(unsigned & 0x7fn) | 0x80;
    unsigned >>= 7n;
  }
  out[pos++] = Number(unsigned);
  return pos;
}

function writeString(out: Buffer, pos: number, value: string, length: number): number {
  pos = writeVarint32(out, pos, length);
  if (length === value.length) {
    // ASCII: one byte per UTF-16 unit.
    for (let i = 0; i < length; i++) out[pos + i] = value.charCodeAt(i);
    return pos + length;
  }
  return pos + out.write(value, pos, length, "utf8");
}

function writeScalar(out: Buffer, pos: number, scalar: ScalarType, value: unknown, lengths: number[]): number {
  switch (scalar) {
    case ScalarType.STRING:
      return writeString(out, pos, value as string, lengths[cursor++]!);
    case ScalarType.BYTES: {
      const bytes = value as Uint8Array;
      pos = writeVarint32(out, pos, bytes.byteLength);
      out.set(bytes, pos);
      return pos + bytes.byteLength;
    }
    case ScalarType.BOOL:
      out[pos] = value ? 1 : 0;
      return pos + 1;
    case ScalarType.DOUBLE:
      return out.writeDoubleLE(value as number, pos);
    case ScalarType.FLOAT:
      return out.writeFloatLE(value as number, pos);
    case ScalarType.FIXED32:
      return out.writeUInt32LE(value as number, pos);
    case ScalarType.SFIXED32:
      return out.writeInt32LE(value as number, pos);
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return out.writeBigUInt64LE(unsigned64(scalar, value), pos);
    case ScalarType.INT32: {
      let v = value as number;
      if (v >= 0) return writeVarint32(out, pos, v);
      // Negative: sign-extended to 64 bits, always 10 bytes.
      for (let i = 0; i < 9; i++) {
        out[pos++] = (v & 0x7f) | 0x80;
        v >>= 7;
      }
      out[pos++] = 1;
      return pos;
    }
    case ScalarType.UINT32:
      return writeVarint32(out, pos, value as number);
    case ScalarType.SINT32: {
      const v = value as number;
      return writeVarint32(out, pos, ((v << 1) ^ (v >> 31)) >>> 0);
    }
    default:
      return writeVarint64(out, pos, unsigned64(scalar, value));
  }
}

function writeTag(out: Buffer, pos: number, tag: number[]): number {
  for (let i = 0; i < tag.length; i++) out[pos++] = tag[i]!;
  return pos;
}

function writeNested(out: Buffer, pos: number, plan: MessagePlan, value: unknown, lengths: number[]): number {
  pos = writeVarint32(out, pos, lengths[cursor++]!);
  return writeMessage(out, pos, plan, value as Record<string, unknown>, lengths);
}

function writeMessage(out: Buffer, pos: number, plan: MessagePlan, message: Record<string, unknown>, lengths: number[]): number {
  for (const field of plan.fields) {
    const value = setValueOf(field, message);
    if (value === undefined) continue;
    switch (field.kind) {
      case KIND_SCALAR:
        pos = writeScalar(out, writeTag(out, pos, field.tag), field.scalar, value, lengths);
        break;
      case KIND_MESSAGE:
        pos = writeNested(out, writeTag(out, pos, field.tag), field.message!, value, lengths);
        break;
      case KIND_LIST_MESSAGE:
        for (const item of value as unknown[]) pos = writeNested(out, writeTag(out, pos, field.tag), field.message!, item, lengths);
        break;
      case KIND_LIST_UNPACKED:
        for (const item of value as unknown[]) pos = writeScalar(out, writeTag(out, pos, field.tag), field.scalar, item, lengths);
        break;
      case KIND_LIST_PACKED:
        pos = writeVarint32(out, writeTag(out, pos, field.tag), lengths[cursor++]!);
        for (const item of value as unknown[]) pos = writeScalar(out, pos, field.scalar, item, lengths);
        break;
      case KIND_MAP: {
        const entries = value as Record<string, unknown>;
        for (const key in entries) {
          pos = writeVarint32(out, writeTag(out, pos, field.tag), lengths[cursor++]!);
          out[pos++] = (1 << 3) | WIRE_LENGTH_DELIMITED;
          pos = writeString(out, pos, key, lengths[cursor++]!);
          if (field.mapValueIsMessage) {
            out[pos++] = (2 << 3) | WIRE_LENGTH_DELIMITED;
            pos = writeNested(out, pos, field.message!, entries[key], lengths);
          } else {
            out[pos++] = (2 << 3) | wireTypeOf(field.scalar);
            pos = writeScalar(out, pos, field.scalar, entries[key], lengths);
          }
        }
        break;
      }
    }
  }
  const unknown = message.$unknown as UnknownField[] | undefined;
  if (unknown !== undefined) {
    for (const { no, wireType, data } of unknown) {
      pos = writeTag(out, pos, tagBytes(no, wireType));
      out.set(data, pos);
      pos += data.byteLength;
    }
  }
  return pos;
}

/**
 * `message` in the protobuf binary format, byte for byte what toBinary(schema, message) gives, in a Buffer that
 * starts with `reserve` bytes left for the caller (a gRPC envelope header, say); their content is unspecified.
 */
export function encodeMessage<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>, reserve = 0): Buffer {
  if (hasCompiledEncoding(schema)) {
    try {
      const plan = planOf(schema);
      const lengths: number[] = [];
      const body = messageSize(plan, message as unknown as Record<string, unknown>, lengths);
      const out = Buffer.allocUnsafe(reserve + body);
      cursor = 0;
      const end = writeMessage(out, reserve, plan, message as unknown as Record<string, unknown>, lengths);
      if (end !== out.length) throw new Error(`protobuf encoder: wrote ${end - reserve} bytes of ${body} for ${schema.typeName}`);
      return out;
    } catch (e) {
      if (e !== NOT_FAST_PATH) throw e;
    }
  }
  const bytes = toBinary(schema, message);
  const out = Buffer.allocUnsafe(reserve + bytes.byteLength);
  out.set(bytes, reserve);
  return out;
}
