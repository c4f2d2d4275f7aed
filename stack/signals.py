"""One stop request per burst of signals.

A terminal's Ctrl-C reaches every process of its foreground group (`make` and
the launcher under `make run`), and `make` passes a SIGTERM it receives on to
its child: a single request to stop can arrive as two or three signals a few
milliseconds apart. The first signal asks for a graceful stop, signals within
`window_s` of it belong to the same request, and a signal after that is a
deliberate second one: stop now, without the grace periods.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class Verdict(enum.Enum):
    GRACEFUL = "graceful"  # the first signal: stop, draining
    REPEAT = "repeat"  # the same request delivered again: nothing to do
    NOW = "now"  # a deliberate second request: skip the grace


class SignalBurst:
    """Tells a first signal, its echoes and a later second signal apart."""

    def __init__(self, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._first_at: float | None = None

    def receive(self) -> Verdict:
        at = self._clock()
        if self._first_at is None:
            self._first_at = at
            return Verdict.GRACEFUL
        if at - self._first_at <= self.window_s:
            return Verdict.REPEAT
        return Verdict.NOW
