"""The supervisor's policy on a clock the test moves: backoff doubling to its
ceiling, the reset after a stable run, the cap per window, one line per event,
and no restart once a stop is requested. (tests/test_run_supervision.py runs
the same supervisor inside the real `nearby run`.)"""

from __future__ import annotations

import pytest

from stack.supervisor import RestartBudget, RestartPolicy, Supervisor


class Process:
    """A process whose exits the test decides (the clock is the test's too)."""

    def __init__(self) -> None:
        self.code: int | None = None
        self.serving = False
        self.spawned = 0

    def exit_code(self) -> int | None:
        return self.code

    def respawn(self) -> None:
        assert self.code is not None, "respawned while running"
        self.code, self.serving = None, False
        self.spawned += 1

    def ready(self) -> bool:
        return self.serving


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_to_the_ceiling_and_the_sixth_exit_within_a_minute_gives_up() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=10))
    delays = [budget.after_exit(float(t), uptime_s=1.0) for t in range(8)]
    assert delays == [0.5, 1, 2, 4, 8, 10, 10, 10]

    capped = RestartBudget(RestartPolicy())
    assert [capped.after_exit(float(t), 1.0) for t in range(6)] == [0.5, 1, 2, 4, 8, None]


def test_the_window_slides_and_a_stable_run_starts_the_delays_again() -> None:
    budget = RestartBudget(RestartPolicy())
    for t in range(5):
        assert budget.after_exit(float(t), 1.0) is not None
    # the first restart (t=0) leaves the window at t=60: one more is allowed
    assert budget.after_exit(59.9, 1.0) is None
    assert budget.after_exit(60.0, 1.0) == 10
    assert budget.recent == 5
    # up 30 s or more: the next delay is the first one again
    assert budget.after_exit(200.0, 30.0) == 0.5
    assert budget.after_exit(201.0, 29.0) == 1


def test_each_event_is_one_line_and_a_given_up_process_stays_down() -> None:
    clock, said, proc = Clock(), list[str](), Process()
    sup = Supervisor(said.append, RestartPolicy(), clock)
    sup.watch("presence_svc", proc)
    for n, delay in enumerate([0.5, 1, 2, 4, 8], start=1):
        proc.code = -9
        sup.poll()
        assert said[-1] == (
            f"presence_svc was killed by signal 9; restarting in {delay:g} s "
            f"(restart {n} of 5 per minute)"
        )
        clock.now += delay - 0.01
        sup.poll()
        assert proc.spawned == n - 1, "restarted before its delay"
        clock.now += 0.01
        sup.poll()
        assert proc.spawned == n
        proc.serving = True
        sup.poll()
        assert said[-1] == f"presence_svc is serving again (restart {n})"
    proc.code = 1
    sup.poll()
    assert said[-1] == (
        "presence_svc exited with code 1; giving up on it after 5 restarts within 60 s, "
        "the rest keeps running"
    )
    assert [w.name for w in sup.given_up] == ["presence_svc"]
    lines = len(said)
    clock.now += 3600
    sup.poll()
    assert proc.spawned == 5 and len(said) == lines


def test_a_clean_exit_is_restarted_too_but_nothing_once_stopping() -> None:
    clock, said = Clock(), list[str]()
    drained, other = Process(), Process()
    sup = Supervisor(said.append, RestartPolicy(), clock)
    sup.watch("fanout_svc#1", drained)
    sup.watch("fanout_svc#0", other)
    drained.code = 0  # a replica drained after a SIGTERM from outside
    sup.poll()
    assert said == [
        "fanout_svc#1 exited with code 0; restarting in 0.5 s (restart 1 of 5 per minute)"
    ]
    clock.now += 1
    stopping = True
    other.code = 0  # the launcher's own stop ends it: it is no longer polled, and
    sup.poll(lambda: stopping)  # a poll already under way restarts nothing
    assert drained.spawned == 0 and other.spawned == 0
    assert len(said) == 1


def test_a_policy_must_make_sense() -> None:
    with pytest.raises(ValueError):
        RestartPolicy(first_delay_s=0)
    with pytest.raises(ValueError):
        RestartPolicy(first_delay_s=20, max_delay_s=10)
    with pytest.raises(ValueError):
        RestartPolicy(max_restarts=0)
