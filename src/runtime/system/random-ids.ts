import { randomBytes } from "node:crypto";
import type { Ids } from "../../core/ports.js";

export function createRandomIds(): Ids {
  return { randomHex: (bytes: number) => randomBytes(bytes).toString("hex") };
}
