// Firecracker's own API specification (Swagger 2.0, /work/shared/contracts/firecracker.yaml) as JSON schemas that
// ajv checks requests against: every `#/definitions/X` reference is resolved through one root schema holding all the
// definitions, and objects refuse properties the specification does not name (Firecracker's serde types deny
// unknown fields, so an extra property would be a 400 from the real thing).

import { readFileSync } from "node:fs";
import { Ajv } from "ajv";
import type { ValidateFunction } from "ajv";
import { parse } from "yaml";

export const SPEC_PATH = "/work/shared/contracts/firecracker.yaml";
const ROOT_ID = "firecracker.yaml";

interface SwaggerParameter {
  in: string;
  name: string;
  required?: boolean;
  schema?: unknown;
}
interface SwaggerOperation {
  parameters?: SwaggerParameter[];
  responses: Record<string, { schema?: unknown }>;
}
interface SwaggerSpec {
  paths: Record<string, Record<string, SwaggerOperation>>;
  definitions: Record<string, unknown>;
}

/** Swagger schema → JSON schema: refs point into the root schema; objects with properties are closed. */
export function toJsonSchema(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(toJsonSchema);
  if (node === null || typeof node !== "object") return node;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(node as Record<string, unknown>)) {
    if (key === "$ref" && typeof value === "string" && value.startsWith("#/definitions/")) {
      out.$ref = `${ROOT_ID}${value}`;
    } else if (key === "example" || key === "format") {
      // Swagger annotations without JSON-schema meaning here (the one `format` is a regex-like prose string).
    } else if (key === "properties" && value !== null && typeof value === "object") {
      out.properties = Object.fromEntries(Object.entries(value as Record<string, unknown>).map(([k, v]) => [k, toJsonSchema(v)]));
    } else {
      out[key] = toJsonSchema(value);
    }
  }
  if (out.$ref !== undefined) return { $ref: out.$ref };
  if (out.properties !== undefined && out.additionalProperties === undefined) out.additionalProperties = false;
  return out;
}

export interface SpecOperation {
  template: string;
  method: string;
  bodySchema: unknown | null;
  bodyRequired: boolean;
  pathParams: string[];
  statuses: string[];
}

export class FirecrackerSpec {
  readonly raw: SwaggerSpec;
  private readonly ajv: Ajv;
  private readonly validators = new Map<string, ValidateFunction>();

  constructor(path = SPEC_PATH) {
    this.raw = parse(readFileSync(path, "utf8")) as SwaggerSpec;
    this.ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
    this.ajv.addSchema({ $id: ROOT_ID, definitions: toJsonSchema(this.raw.definitions) });
  }

  /** The operation a concrete path and method match, with `{param}` templates filled by anything without '/'. */
  operation(method: string, path: string): SpecOperation | null {
    for (const [template, ops] of Object.entries(this.raw.paths)) {
      const pattern = new RegExp(`^${template.replace(/\{[^}]+\}/g, "[^/]+")}$`);
      if (!pattern.test(path)) continue;
      const op = ops[method.toLowerCase()];
      if (op === undefined) return null;
      const body = op.parameters?.find((p) => p.in === "body");
      return {
        template,
        method,
        bodySchema: body?.schema ?? null,
        bodyRequired: body?.required === true,
        pathParams: (op.parameters ?? []).filter((p) => p.in === "path").map((p) => p.name),
        statuses: Object.keys(op.responses),
      };
    }
    return null;
  }

  /** Problems with one request (empty when the specification accepts it). */
  check(req: { method: string; path: string; body: unknown }): string[] {
    const op = this.operation(req.method, req.path);
    if (op === null) return [`${req.method} ${req.path}: no such operation in the specification`];
    if (op.bodySchema === null) return req.body === null ? [] : [`${req.method} ${req.path}: the specification takes no body`];
    if (req.body === null) return op.bodyRequired ? [`${req.method} ${req.path}: body required`] : [];
    const key = JSON.stringify(op.bodySchema);
    let validate = this.validators.get(key);
    if (validate === undefined) {
      validate = this.ajv.compile(toJsonSchema(op.bodySchema) as object);
      this.validators.set(key, validate);
    }
    if (validate(req.body)) return [];
    return (validate.errors ?? []).map((e) => `${req.method} ${req.path}: body${e.instancePath} ${e.message ?? "invalid"} ${JSON.stringify(e.params)}`);
  }

  /** Validates a response body against the schema the specification gives for `status` (or `default`). */
  checkResponse(method: string, path: string, status: number, body: unknown): string[] {
    const op = this.operation(method, path);
    if (op === null) return [`${method} ${path}: no such operation`];
    const response = this.raw.paths[op.template]?.[method.toLowerCase()]?.responses[String(status)] ??
      this.raw.paths[op.template]?.[method.toLowerCase()]?.responses.default;
    if (response === undefined) return [`${method} ${path}: status ${status} not in the specification`];
    if (response.schema === undefined) return body === null ? [] : [`${method} ${path}: status ${status} has no body`];
    const validate = this.ajv.compile(toJsonSchema(response.schema) as object);
    return validate(body) ? [] : (validate.errors ?? []).map((e) => `${e.instancePath} ${e.message ?? ""}`);
  }
}
