// Renders records for people (a table) or programs (JSON, YAML). Tables carry no colour, so they read the same on a
// TTY and in a pipe.

import Table from "cli-table3";
import { stringify as toYaml } from "yaml";
import { invalid } from "../core/errors.js";

export const OUTPUT_FORMATS = ["table", "json", "yaml"] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

export function parseOutputFormat(value: unknown): OutputFormat {
  if (typeof value === "string" && (OUTPUT_FORMATS as readonly string[]).includes(value)) return value as OutputFormat;
  throw invalid([{ field: "--output", rule: `must be one of ${OUTPUT_FORMATS.join(", ")} (got ${JSON.stringify(value)})` }]);
}

/** A column of a list table: its heading and how to read the cell from a record. */
export interface Column<T> {
  header: string;
  cell: (row: T) => string | number | boolean | null | undefined;
  /** Wrap the column's text at this many characters (long free-text columns). */
  maxWidth?: number;
}

const PLAIN_STYLE = { head: [] as string[], border: [] as string[] };
/** No rule between rows: a record reads as a compact list of fields. */
const COMPACT_ROWS = { mid: "", "left-mid": "", "mid-mid": "", "right-mid": "" };

function cellText(value: string | number | boolean | null | undefined): string {
  if (value === null || value === undefined || value === "") return "-";
  return String(value);
}

function serialise(data: unknown, format: "json" | "yaml"): string {
  // lineWidth 0: never fold long values such as SSH keys across lines.
  return format === "json" ? `${JSON.stringify(data, null, 2)}\n` : toYaml(data, { lineWidth: 0 });
}

export function renderList<T>(rows: readonly T[], columns: readonly Column<T>[], format: OutputFormat): string {
  if (format !== "table") return serialise(rows, format);
  if (rows.length === 0) return "(none)\n";
  const wraps = columns.some((c) => c.maxWidth !== undefined);
  const table = new Table({
    head: columns.map((c) => c.header),
    style: PLAIN_STYLE,
    ...(wraps ? { wordWrap: true, colWidths: columns.map((c) => (c.maxWidth === undefined ? null : c.maxWidth + 2)) } : {}),
  });
  for (const row of rows) table.push(columns.map((c) => cellText(c.cell(row))));
  return `${table.toString()}\n`;
}

/** Flattens nested objects into dotted keys so one record reads as a two-column table. */
function flatten(value: unknown, prefix: string, out: Array<[string, string]>): void {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const entries = Object.entries(value as Record<string, unknown>);
    if (entries.length === 0) out.push([prefix, "-"]);
    for (const [k, v] of entries) flatten(v, prefix ? `${prefix}.${k}` : k, out);
    return;
  }
  if (Array.isArray(value)) {
    out.push([prefix, value.length === 0 ? "-" : value.map((v) => (typeof v === "object" ? JSON.stringify(v) : String(v))).join(", ")]);
    return;
  }
  out.push([prefix, cellText(value as string | number | boolean | null | undefined)]);
}

export function renderRecord(record: object, format: OutputFormat): string {
  if (format !== "table") return serialise(record, format);
  const pairs: Array<[string, string]> = [];
  flatten(record, "", pairs);
  const table = new Table({ style: PLAIN_STYLE, chars: COMPACT_ROWS });
  for (const [k, v] of pairs) table.push([k, v]);
  return `${table.toString()}\n`;
}
