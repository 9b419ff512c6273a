import { Code, ConnectError } from "@connectrpc/connect";
import { expect } from "vitest";

/** Awaits a call that must fail with `code`; returns the error for further checks. */
export async function expectCode(call: Promise<unknown>, code: Code): Promise<ConnectError> {
  let caught: unknown;
  try {
    await call;
  } catch (e) {
    caught = e;
  }
  expect(caught, `expected ${Code[code]}`).toBeInstanceOf(ConnectError);
  const error = caught as ConnectError;
  expect(Code[error.code], error.message).toBe(Code[code]);
  return error;
}

/** Reads a server stream until it ends or `n` messages arrived. */
export async function take<T>(stream: AsyncIterable<T>, n: number): Promise<T[]> {
  const out: T[] = [];
  if (n === 0) return out;
  for await (const m of stream) {
    out.push(m);
    if (out.length >= n) break;
  }
  return out;
}
