"""Reconnect delays: exponential backoff with full jitter.

The ceiling grows like gRPC's connection backoff (an initial delay multiplied
by ``multiplier`` per failed attempt, capped at ``max_s``), and each delay is
drawn uniformly from ``[0, ceiling]`` ("full jitter"), so thousands of clients
cut off by the same event do not come back in lock-step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff", "BackoffPolicy"]


@dataclass(frozen=True)
class BackoffPolicy:
    """How long a session waits between reconnect attempts.

    Attributes:
        initial_s: ceiling of the first delay, in seconds.
        multiplier: growth of the ceiling per consecutive failed attempt.
        max_s: the ceiling never exceeds this many seconds.
        max_attempts: give up (raise) after this many consecutive failed
            attempts; ``None`` retries forever.
    """

    initial_s: float = 1.0
    multiplier: float = 1.6
    max_s: float = 30.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not self.initial_s > 0:
            raise ValueError("initial_s must be positive")
        if not self.multiplier >= 1:
            raise ValueError("multiplier must be at least 1")
        if not self.max_s >= self.initial_s:
            raise ValueError("max_s must be at least initial_s")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")

    def ceiling(self, attempt: int) -> float:
        """The largest delay of the ``attempt``-th consecutive retry (1-based)."""
        exponent = max(attempt - 1, 0)
        # Stop multiplying once past the cap (avoids float overflow).
        value = self.initial_s
        for _ in range(exponent):
            value *= self.multiplier
            if value >= self.max_s:
                return self.max_s
        return min(value, self.max_s)


@dataclass
class Backoff:
    """The retry state of one session under a :class:`BackoffPolicy`."""

    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    """Consecutive failed attempts since the last healthy connection."""

    def next_delay(self) -> float:
        """Counts one more failed attempt and returns how long to wait."""
        self.attempt += 1
        return self.rng.uniform(0.0, self.policy.ceiling(self.attempt))

    def exhausted(self) -> bool:
        """True when the policy's ``max_attempts`` has been used up."""
        limit = self.policy.max_attempts
        return limit is not None and self.attempt >= limit

    def reset(self) -> None:
        """Forgets past failures (call after a healthy connection)."""
        self.attempt = 0
