/**
 * Reconnect delays: exponential backoff with full jitter.
 *
 * The ceiling grows like gRPC's connection backoff (an initial delay
 * multiplied by `multiplier` per failed attempt, capped at `maxMs`), and each
 * delay is drawn uniformly from [0, ceiling] ("full jitter"), so thousands of
 * clients cut off by the same event do not come back in lock-step. The same
 * rules as the Python SDK (sdk/nearby/backoff.py).
 */

/** How long a session waits between reconnect attempts. */
export interface BackoffPolicy {
  /** Ceiling of the first delay, in milliseconds (default 1000). */
  readonly initialMs: number;
  /** Growth of the ceiling per consecutive failed attempt (default 1.6). */
  readonly multiplier: number;
  /** The ceiling never exceeds this many milliseconds (default 30000). */
  readonly maxMs: number;
  /** Give up after this many consecutive failed attempts; undefined: never. */
  readonly maxAttempts?: number | undefined;
}

export const DEFAULT_BACKOFF: BackoffPolicy = Object.freeze({
  initialMs: 1000,
  multiplier: 1.6,
  maxMs: 30_000,
});

/** A complete policy from a partial one; throws RangeError when it is unusable. */
export function backoffPolicy(overrides: Partial<BackoffPolicy> = {}): BackoffPolicy {
  const policy = { ...DEFAULT_BACKOFF, ...overrides };
  if (!(policy.initialMs > 0)) throw new RangeError("initialMs must be positive");
  if (!(policy.multiplier >= 1)) throw new RangeError("multiplier must be at least 1");
  if (!(policy.maxMs >= policy.initialMs)) throw new RangeError("maxMs must be at least initialMs");
  if (policy.maxAttempts !== undefined && !(policy.maxAttempts >= 1)) {
    throw new RangeError("maxAttempts must be at least 1 (or undefined)");
  }
  return Object.freeze(policy);
}

/** The largest delay of the `attempt`-th consecutive retry (1-based). */
export function ceilingMs(policy: BackoffPolicy, attempt: number): number {
  let value = policy.initialMs;
  for (let i = 1; i < attempt; i++) {
    value *= policy.multiplier;
    if (value >= policy.maxMs) return policy.maxMs; // stop before overflowing
  }
  return Math.min(value, policy.maxMs);
}

/** The retry state of one session under a policy. */
export class Backoff {
  /** Consecutive failed attempts since the last healthy connection. */
  attempt = 0;

  constructor(
    readonly policy: BackoffPolicy = DEFAULT_BACKOFF,
    private readonly random: () => number = Math.random,
  ) {}

  /** Counts one more failed attempt and returns how long to wait (ms). */
  nextDelayMs(): number {
    this.attempt += 1;
    return this.random() * ceilingMs(this.policy, this.attempt);
  }

  /** True when the policy's maxAttempts has been used up. */
  exhausted(): boolean {
    const limit = this.policy.maxAttempts;
    return limit !== undefined && this.attempt >= limit;
  }

  /** Forgets past failures (after a healthy connection). */
  reset(): void {
    this.attempt = 0;
  }
}
