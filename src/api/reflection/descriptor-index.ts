// What gRPC server reflection answers from: every file reachable from a set of descriptors (their imports included,
// transitively), every fully-qualified symbol they declare, and every extension, each pointing at its file.
// Symbol names follow protobuf scoping: `pkg.Message`, `pkg.Message.Nested`, `pkg.Message.field`,
// `pkg.Message.oneof_name`, `pkg.Enum`, `pkg.ENUM_VALUE` (values live in the scope that holds their enum),
// `pkg.Service`, `pkg.Service.Method`, `pkg.extension_name`.

import type { DescFile } from "@bufbuild/protobuf";
import type { DescriptorProto, EnumDescriptorProto, FieldDescriptorProto } from "@bufbuild/protobuf/wkt";

export interface DescriptorIndex {
  /** Every indexed file, keyed by its path as imports spell it (`mvm/v1/instance.proto`). */
  readonly files: ReadonlyMap<string, DescFile>;
  /** The file that declares each symbol. */
  readonly symbols: ReadonlyMap<string, DescFile>;
  /** The message type names among the symbols (extension numbers are asked for by message type). */
  readonly messageTypes: ReadonlySet<string>;
  /** The file declaring each extension, by extended message type name (no leading dot), then field number. */
  readonly extensions: ReadonlyMap<string, ReadonlyMap<number, DescFile>>;
}

/** A file's path as imports and reflection clients name it; `DescFile.name` drops the `.proto` suffix. */
export function descriptorFileName(file: DescFile): string {
  return file.proto.name;
}

/**
 * Indexes `roots` and everything they import. Where two files claim one symbol, the first one seen keeps it.
 * Reads the FileDescriptorProto rather than the Desc* objects: those leave out synthetic map entry messages
 * (`Msg.LabelsEntry`), which reflection clients may still ask for.
 */
export function buildDescriptorIndex(roots: Iterable<DescFile>): DescriptorIndex {
  const files = new Map<string, DescFile>();
  const symbols = new Map<string, DescFile>();
  const messageTypes = new Set<string>();
  const extensions = new Map<string, Map<number, DescFile>>();

  const addSymbol = (name: string, file: DescFile) => {
    if (!symbols.has(name)) symbols.set(name, file);
  };
  const addExtensions = (scope: string, fields: readonly FieldDescriptorProto[], file: DescFile) => {
    for (const ext of fields) {
      addSymbol(`${scope}${ext.name}`, file);
      const extendee = ext.extendee.replace(/^\./, "");
      const byNumber = extensions.get(extendee) ?? new Map<number, DescFile>();
      if (!byNumber.has(ext.number)) byNumber.set(ext.number, file);
      extensions.set(extendee, byNumber);
    }
  };
  // `scope` is the enclosing package or message name with a trailing dot, or "" for a file without a package.
  const addEnum = (scope: string, e: EnumDescriptorProto, file: DescFile) => {
    addSymbol(`${scope}${e.name}`, file);
    // An enum value's name is a sibling of its enum, not a child: `pkg.Outer.VALUE` for an enum nested in Outer.
    for (const value of e.value) addSymbol(`${scope}${value.name}`, file);
  };
  const addMessage = (scope: string, m: DescriptorProto, file: DescFile) => {
    const name = `${scope}${m.name}`;
    addSymbol(name, file);
    messageTypes.add(name);
    for (const field of m.field) addSymbol(`${name}.${field.name}`, file);
    for (const oneof of m.oneofDecl) addSymbol(`${name}.${oneof.name}`, file);
    for (const nested of m.nestedType) addMessage(`${name}.`, nested, file);
    for (const nested of m.enumType) addEnum(`${name}.`, nested, file);
    addExtensions(`${name}.`, m.extension, file);
  };
  const addFile = (file: DescFile) => {
    const name = descriptorFileName(file);
    if (files.has(name)) return;
    files.set(name, file);
    const proto = file.proto;
    const scope = proto.package === "" ? "" : `${proto.package}.`;
    for (const m of proto.messageType) addMessage(scope, m, file);
    for (const e of proto.enumType) addEnum(scope, e, file);
    addExtensions(scope, proto.extension, file);
    for (const service of proto.service) {
      addSymbol(`${scope}${service.name}`, file);
      for (const method of service.method) addSymbol(`${scope}${service.name}.${method.name}`, file);
    }
    for (const dependency of file.dependencies) addFile(dependency);
  };
  for (const root of roots) addFile(root);
  return { files, symbols, messageTypes, extensions };
}

/**
 * `file` followed by every file it imports, directly or not, each once: what a reflection client needs to build the
 * file without asking again.
 */
export function withTransitiveDependencies(file: DescFile): DescFile[] {
  const seen = new Set<string>();
  const ordered: DescFile[] = [];
  const visit = (f: DescFile) => {
    const name = descriptorFileName(f);
    if (seen.has(name)) return;
    seen.add(name);
    ordered.push(f);
    for (const dependency of f.dependencies) visit(dependency);
  };
  visit(file);
  return ordered;
}
