import assert from "node:assert/strict";
import { test } from "node:test";
import { Code } from "@connectrpc/connect";
import type { UnaryRequest, UnaryResponse } from "@connectrpc/connect";
import { authInterceptor } from "../../src/client.js";
import { AuthError } from "../../src/errors.js";

/** Runs the interceptor over a request carrying only headers; returns what reached `next`. */
async function send(interceptor: ReturnType<typeof authInterceptor>): Promise<string | null> {
  let seen: string | null = "unset";
  const next = async (req: UnaryRequest): Promise<UnaryResponse> => {
    seen = req.header.get("authorization");
    return {} as UnaryResponse;
  };
  await interceptor(next as never)({ header: new Headers() } as never);
  return seen;
}

test("the token source is asked on every call (a refreshed token is used at once)", async () => {
  const tokens = ["t1", "t2", "t3"];
  let asked = 0;
  const interceptor = authInterceptor(async () => tokens[asked++]!);
  assert.deepEqual([await send(interceptor), await send(interceptor), await send(interceptor)], [
    "Bearer t1",
    "Bearer t2",
    "Bearer t3",
  ]);
  assert.equal(asked, 3);
  assert.equal(await send(authInterceptor("fixed")), "Bearer fixed");
});

test("no token: no header (the edge answers UNAUTHENTICATED); a failing source is an AuthError", async () => {
  assert.equal(await send(authInterceptor(undefined)), null);
  assert.equal(await send(authInterceptor(() => "")), null);
  await assert.rejects(
    send(
      authInterceptor(() => {
        throw new Error("refresh failed");
      }),
    ),
    (e: unknown) => e instanceof AuthError && e.code === Code.Unauthenticated && /refresh failed/.test(e.message),
  );
});
