import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff, backoffPolicy, ceilingMs } from "../../src/backoff.js";

test("the ceiling grows by the multiplier and stops at maxMs", () => {
  const policy = backoffPolicy({ initialMs: 100, multiplier: 2, maxMs: 1000 });
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6, 50].map((a) => ceilingMs(policy, a)),
    [100, 200, 400, 800, 1000, 1000, 1000],
  );
  assert.equal(ceilingMs(backoffPolicy({ multiplier: 1e300 }), 1e6), 30_000); // no overflow
});

test("full jitter: each delay is the random draw times the ceiling", () => {
  const draws = [0, 0.5, 0.999999, 0.25];
  const backoff = new Backoff(backoffPolicy({ initialMs: 1000, multiplier: 1.6, maxMs: 30_000 }), () => draws.shift()!);
  assert.equal(backoff.nextDelayMs(), 0);
  assert.equal(backoff.nextDelayMs(), 0.5 * 1600);
  assert.ok(Math.abs(backoff.nextDelayMs() - 0.999999 * 2560) < 1e-6);
  assert.equal(backoff.attempt, 3);
  backoff.reset();
  assert.equal(backoff.nextDelayMs(), 250);
});

test("delays stay within [0, ceiling] with the real random source", () => {
  const backoff = new Backoff(backoffPolicy({ initialMs: 10, multiplier: 3, maxMs: 500 }));
  for (let i = 1; i <= 200; i++) {
    const d = backoff.nextDelayMs();
    assert.ok(d >= 0 && d <= ceilingMs(backoff.policy, i), `${d} at attempt ${i}`);
  }
});

test("maxAttempts exhausts; bad policies are refused", () => {
  const backoff = new Backoff(backoffPolicy({ maxAttempts: 2 }));
  backoff.nextDelayMs();
  assert.equal(backoff.exhausted(), false);
  backoff.nextDelayMs();
  assert.equal(backoff.exhausted(), true);
  assert.throws(() => backoffPolicy({ initialMs: 0 }), RangeError);
  assert.throws(() => backoffPolicy({ multiplier: 0.5 }), RangeError);
  assert.throws(() => backoffPolicy({ initialMs: 10, maxMs: 5 }), RangeError);
  assert.throws(() => backoffPolicy({ maxAttempts: 0 }), RangeError);
});
