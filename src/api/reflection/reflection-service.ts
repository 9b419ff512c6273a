// gRPC server reflection (`grpc.reflection.v1` and the older `grpc.reflection.v1alpha`, which tools such as buf curl
// and grpcurl fall back to) for a Connect router, answered from the generated descriptors. Nothing maintained
// exists on npm for Connect, hence this small in-tree version.
//
// Services listed are those registered on the router when a request arrives, so the order of registration does not
// matter and a service is never listed without being served. File answers carry the requested file followed by
// all of its imports (well-known types included), every time: clients then never need a second round trip, and
// the stream stays stateless.

import { create, toBinary, type DescFile } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ConnectRouter } from "@connectrpc/connect";
import * as v1 from "../../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { buildDescriptorIndex, withTransitiveDependencies, type DescriptorIndex } from "./descriptor-index.js";

/** The request oneof, identical in both protocol versions. */
export type ReflectionQuery =
  | { case: "fileByFilename"; value: string }
  | { case: "fileContainingSymbol"; value: string }
  | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
  | { case: "allExtensionNumbersOfType"; value: string }
  | { case: "listServices"; value: string }
  | { case: undefined; value?: undefined };

/** The response oneof, identical in both protocol versions. */
export type ReflectionAnswer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

export interface ReflectionOptions {
  /**
   * Further files to describe (and their imports), for types a client may want to resolve that no registered
   * service mentions, such as error detail messages. They add no service to the list. Default none.
   */
  extraFiles?: readonly DescFile[];
}

/** The reflection protocol files themselves, so a client can ask about the reflection service too. */
export const REFLECTION_FILES: readonly DescFile[] = [
  v1.file_grpc_reflection_v1_reflection,
  v1alpha.file_grpc_reflection_v1alpha_reflection,
];

function errorAnswer(code: Code, message: string): ReflectionAnswer {
  // Code's numeric values are gRPC's status codes, which is what error_code carries.
  return { case: "errorResponse", value: { errorCode: code, errorMessage: message } };
}

/** Generated descriptors never change, so each file is serialized once per process. */
const serializedFiles = new WeakMap<DescFile, Uint8Array>();

function serializedFile(file: DescFile): Uint8Array {
  let bytes = serializedFiles.get(file);
  if (bytes === undefined) {
    bytes = toBinary(FileDescriptorProtoSchema, file.proto);
    serializedFiles.set(file, bytes);
  }
  return bytes;
}

function filesAnswer(file: DescFile): ReflectionAnswer {
  return { case: "fileDescriptorResponse", value: { fileDescriptorProto: withTransitiveDependencies(file).map(serializedFile) } };
}

/** Symbol and type names as clients send them; some write the fully-qualified form with a leading dot. */
function symbolName(name: string): string {
  return name.startsWith(".") ? name.slice(1) : name;
}

/** Answers one reflection request from `index`; `services` are the names to list. */
export function answerReflectionQuery(
  query: ReflectionQuery,
  index: DescriptorIndex,
  services: readonly string[],
): ReflectionAnswer {
  switch (query.case) {
    case "listServices":
      return { case: "listServicesResponse", value: { service: services.map((name) => ({ name })) } };
    case "fileByFilename": {
      const file = index.files.get(query.value);
      return file ? filesAnswer(file) : errorAnswer(Code.NotFound, `file_by_filename: no file named ${query.value}`);
    }
    case "fileContainingSymbol": {
      const file = index.symbols.get(symbolName(query.value));
      return file
        ? filesAnswer(file)
        : errorAnswer(Code.NotFound, `file_containing_symbol: no symbol named ${query.value}`);
    }
    case "fileContainingExtension": {
      const { extensionNumber } = query.value;
      const containingType = symbolName(query.value.containingType);
      const file = index.extensions.get(containingType)?.get(extensionNumber);
      return file
        ? filesAnswer(file)
        : errorAnswer(
            Code.NotFound,
            `file_containing_extension: no extension ${extensionNumber} of ${containingType === "" ? "(empty type name)" : containingType}`,
          );
    }
    case "allExtensionNumbersOfType": {
      const typeName = symbolName(query.value);
      if (!index.messageTypes.has(typeName)) {
        return errorAnswer(Code.NotFound, `all_extension_numbers_of_type: no message type named ${typeName}`);
      }
      const numbers = [...(index.extensions.get(typeName)?.keys() ?? [])].sort((a, b) => a - b);
      return { case: "allExtensionNumbersResponse", value: { baseTypeName: typeName, extensionNumber: numbers } };
    }
    case undefined:
      return errorAnswer(Code.InvalidArgument, "message_request: must be set to one of the request kinds");
  }
}

/**
 * What reflection knows at a given moment: the services on the router and every file they (and `extraFiles`, and
 * the reflection protocol) are declared in. Rebuilt only when the router gained handlers since the last look.
 */
function routerDescriptors(router: ConnectRouter, extraFiles: readonly DescFile[]) {
  let seenHandlers = -1;
  let cached: { index: DescriptorIndex; services: string[] } | undefined;
  return (): { index: DescriptorIndex; services: string[] } => {
    if (cached !== undefined && seenHandlers === router.handlers.length) return cached;
    const services = new Map<string, DescFile>();
    for (const handler of router.handlers) services.set(handler.service.typeName, handler.service.file);
    const roots = [...services.values(), ...REFLECTION_FILES, ...extraFiles];
    cached = { index: buildDescriptorIndex(roots), services: [...services.keys()].sort() };
    seenHandlers = router.handlers.length;
    return cached;
  };
}

/**
 * Registers `grpc.reflection.v1.ServerReflection` and `grpc.reflection.v1alpha.ServerReflection` on `router`.
 * Both serve the bidirectional `ServerReflectionInfo` stream, which Connect for Node serves over HTTP/2 only.
 */
export function registerReflection(router: ConnectRouter, options: ReflectionOptions = {}): void {
  const descriptors = routerDescriptors(router, options.extraFiles ?? []);

  router.service(v1.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const request of requests) {
        const { index, services } = descriptors();
        yield create(v1.ServerReflectionResponseSchema, {
          validHost: request.host,
          originalRequest: request,
          messageResponse: answerReflectionQuery(request.messageRequest, index, services),
        });
      }
    },
  });

  router.service(v1alpha.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const request of requests) {
        const { index, services } = descriptors();
        yield create(v1alpha.ServerReflectionResponseSchema, {
          validHost: request.host,
          originalRequest: request,
          messageResponse: answerReflectionQuery(request.messageRequest, index, services),
        });
      }
    },
  });
}
