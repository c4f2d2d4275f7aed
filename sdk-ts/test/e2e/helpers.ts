/** Shared set-up of the end-to-end tests: a real stack behind Envoy (NEARBY_URL), dev login. */
import assert from "node:assert/strict";
import type { Event, NearbySession } from "../../src/index.js";

export const BASE = process.env["NEARBY_URL"] ?? "";
export const RUN = process.env["NEARBY_RUN_ID"] ?? Math.random().toString(36).slice(2, 8);

if (!BASE) throw new Error("set NEARBY_URL to the edge of a `nearby run --dev` stack (tests/test_sdk_ts.py does)");

/** A fresh user id of this run. */
export const uid = (name: string): string => `${name}-${RUN}`;

/** POST /dev/token (dev mode): creates the user on first use. */
export async function devToken(userId: string, extra: Record<string, unknown> = {}): Promise<string> {
  const response = await fetch(`${BASE}/dev/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user_id: userId, display_name: userId.split("-")[0], ...extra }),
  });
  const body = (await response.json()) as { token?: string; error?: string };
  assert.equal(response.status, 200, JSON.stringify(body));
  return body.token!;
}

/** Iterates the session until `done(event)` is true; fails after `withinMs`. */
export async function until(
  session: NearbySession,
  done: (event: Event) => boolean,
  withinMs = 15_000,
): Promise<Event[]> {
  const seen: Event[] = [];
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`condition not met within ${withinMs} ms; events: ${JSON.stringify(seen)}`)),
      withinMs,
    );
  });
  const loop = (async () => {
    for (;;) {
      const r = await session.next();
      if (r.done) throw new Error(`session ended; events: ${JSON.stringify(seen)}`);
      seen.push(r.value);
      if (done(r.value)) return seen;
    }
  })();
  try {
    return await Promise.race([loop, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
