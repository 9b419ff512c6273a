import type { Clock } from "../../core/ports.js";

export function createSystemClock(): Clock {
  return { nowMs: () => Date.now() };
}
