"""Supervision for `nearby run`: a process that exits unexpectedly is started again.

Unexpectedly means anything but a stop the launcher asked for: killed by a
signal, crashed, or exited by itself, a fan-out replica that drained and
exited 0 after a SIGTERM from outside included. The launcher polls
`Supervisor.poll()` from its main thread (children die with the thread that
started them, stack/procs.py) until the user asks it to stop; after that it
no longer polls, so the processes its own stop ends are never restarted.

The policy (`RESTART_POLICY`, documented in docs/running.md and mirrored by
the systemd units in deploy/systemd/):

- the first restart after 0.5 s, each further one waits twice as long, up to
  10 s;
- a process that stayed up 30 s or longer before it exited starts the delays
  again from 0.5 s;
- at most 5 restarts within any 60 s: the 6th exit gives up on that process
  (one line says so) and the rest keeps running.

Each event is one line: the exit and the delay, the give-up, and the restarted
process being ready again (health SERVING, or Envoy LIVE).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff between restarts and a cap on restarts per window."""

    first_delay_s: float = 0.5
    max_delay_s: float = 10.0
    #: an exit after at least this long up starts the delays from the first again
    stable_after_s: float = 30.0
    max_restarts: int = 5
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.first_delay_s <= self.max_delay_s:
            raise ValueError("delays must satisfy 0 < first_delay_s <= max_delay_s")
        if self.max_restarts < 1 or self.window_s <= 0:
            raise ValueError("max_restarts must be at least 1 and window_s positive")


RESTART_POLICY = RestartPolicy()


@dataclass
class RestartBudget:
    """The restart history of one process under a policy: decides, for each
    unexpected exit, how long to wait before the restart, or to give up."""

    policy: RestartPolicy
    _next_delay: float = field(init=False)
    _restarts: deque[float] = field(init=False, default_factory=deque)

    def __post_init__(self) -> None:
        self._next_delay = self.policy.first_delay_s

    def after_exit(self, now: float, uptime_s: float) -> float | None:
        """The delay before restarting a process that exited at `now` after
        `uptime_s` up; None when the cap is reached (give up)."""
        p = self.policy
        if uptime_s >= p.stable_after_s:
            self._next_delay = p.first_delay_s
        while self._restarts and now - self._restarts[0] >= p.window_s:
            self._restarts.popleft()
        if len(self._restarts) >= p.max_restarts:
            return None
        self._restarts.append(now)
        delay = self._next_delay
        self._next_delay = min(delay * 2, p.max_delay_s)
        return delay

    @property
    def recent(self) -> int:
        """Restarts counted in the current window (the last one included)."""
        return len(self._restarts)


class Restartable(Protocol):
    """What the supervisor needs of a process (procs.Child, edge.Envoy)."""

    def exit_code(self) -> int | None:
        """None while running; the exit status (negative: killed by that signal)."""
        ...

    def respawn(self) -> None:
        """Start a fresh process in the place of the one that exited."""
        ...

    def ready(self) -> bool:
        """True when the process serves (a quick check; False while starting)."""
        ...


def _per(window_s: float) -> str:
    return "per minute" if window_s == 60 else f"per {window_s:g} s"


def describe_exit(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


@dataclass
class Watched:
    """One supervised process: its state and restart history."""

    name: str
    process: Restartable
    budget: RestartBudget
    log_path: Path | None = None
    started_at: float = 0.0
    state: str = "running"  # running | waiting | starting | given up
    restart_at: float = 0.0
    last_code: int | None = None
    restarts: int = 0


class Supervisor:
    """Restarts the processes it watches when they exit, per the policy.

    `say` prints one line (the launcher prefixes "nearby: "); `clock` is
    monotonic seconds.
    """

    def __init__(
        self,
        say: Callable[[str], None],
        policy: RestartPolicy = RESTART_POLICY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._say = say
        self._clock = clock
        self.watched: list[Watched] = []

    def watch(self, name: str, process: Restartable, log_path: Path | None = None) -> None:
        self.watched.append(
            Watched(name, process, RestartBudget(self.policy), log_path, self._clock())
        )

    @property
    def given_up(self) -> list[Watched]:
        return [w for w in self.watched if w.state == "given up"]

    def poll(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """One round: notice exits, restart what is due, report readiness.
        Restarts nothing once `stopping()` is true."""
        for w in self.watched:
            if stopping():
                return
            now = self._clock()
            if w.state in ("running", "starting"):
                code = w.process.exit_code()
                if code is not None:
                    self._exited(w, code, now)
                elif w.state == "starting" and w.process.ready():
                    w.state = "running"
                    self._say(f"{w.name} is serving again (restart {w.restarts})")
            if w.state == "waiting" and now >= w.restart_at and not stopping():
                w.restarts += 1
                w.started_at = self._clock()
                try:
                    w.process.respawn()
                except OSError as exc:  # e.g. out of file descriptors: counts as an exit
                    self._say(f"{w.name} could not be started again: {exc}")
                    self._exited(w, w.last_code or 1, w.started_at)
                    continue
                w.state = "starting"

    def _exited(self, w: Watched, code: int, now: float) -> None:
        w.last_code = code
        delay = w.budget.after_exit(now, now - w.started_at)
        p = self.policy
        if delay is None:
            w.state = "given up"
            where = f" (log: {w.log_path})" if w.log_path is not None else ""
            self._say(
                f"{w.name} {describe_exit(code)}; giving up on it after {p.max_restarts} "
                f"restarts within {p.window_s:g} s, the rest keeps running{where}"
            )
            return
        w.state, w.restart_at = "waiting", now + delay
        self._say(
            f"{w.name} {describe_exit(code)}; restarting in {delay:g} s "
            f"(restart {w.budget.recent} of {p.max_restarts} {_per(p.window_s)})"
        )
