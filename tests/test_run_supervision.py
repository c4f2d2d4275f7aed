"""`nearby run` supervises: a service, a fan-out replica or Envoy that exits
unexpectedly is restarted and serves again; one that keeps dying is given up
after the cap while the rest stays up. Real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

import grpc
from nearby.v1 import (
    friend_service_pb2,
    friend_service_pb2_grpc,
    presence_service_pb2,
    presence_service_pb2_grpc,
)

from tests.support.nearby_run import (
    assert_all_gone,
    descendants,
    free_block,
    pid_of,
    pid_on_port,
    run,
    run_env,
    stack_args,
    token,
    wait_new_pid,
    wait_output,
    wait_running,
)

T = TypeVar("T")


def _until_ok(call: Callable[[], T], within_s: float = 60.0) -> T:
    """The first answer of `call` that is not UNAVAILABLE (a restarted backend
    is back in Envoy's rotation after its next health check)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


class _Edge:
    """Unary calls through the launcher's Envoy."""

    def __init__(self, port: int, env: dict[str, str]) -> None:
        self.target = f"127.0.0.1:{port}"
        self.env = env
        self.admin = token(env, Path.cwd(), "ops", "--admin")

    def create_user(self, user: str) -> str:
        with grpc.insecure_channel(self.target) as channel:
            friend_service_pb2_grpc.FriendServiceStub(channel).CreateUser(
                friend_service_pb2.CreateUserRequest(user_id=user, display_name=user.title()),
                metadata=(("authorization", f"Bearer {self.admin}"),),
                timeout=10,
            )
        return user

    def visible(self, user: str) -> bool:
        me = token(self.env, Path.cwd(), user)
        with grpc.insecure_channel(self.target) as channel:
            resp = presence_service_pb2_grpc.PresenceServiceStub(channel).GetVisibility(
                presence_service_pb2.GetVisibilityRequest(),
                metadata=(("authorization", f"Bearer {me}"),),
                timeout=10,
            )
        return bool(resp.visibility == presence_service_pb2.VISIBILITY_VISIBLE)


class _Run(NamedTuple):
    proc: subprocess.Popen[bytes]
    port: int  # Envoy's
    env: dict[str, str]
    out: Path


def _start(
    redis_url: str, database_url: str, tmp: Path, launched: list[subprocess.Popen[bytes]]
) -> _Run:
    """`nearby run` with one fan-out replica, running."""
    env = run_env(redis_url, database_url, tmp / "home", fanout_replicas=1)
    out, port = tmp / "out.txt", free_block(1)
    proc = run(stack_args(port, free_block(1), 1), env, out)
    launched.append(proc)
    wait_running(proc, out)
    return _Run(proc, port, env, out)


def test_a_killed_service_a_drained_replica_and_a_killed_envoy_are_restarted(
    redis_url: str, database_url: str, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    proc, port, env, out = _start(redis_url, database_url, tmp_path, launched)
    edge = _Edge(port, env)
    user = edge.create_user("ivy")

    presence = pid_on_port(proc.pid, int(env["PRESENCE_PORT"]))
    os.kill(presence, signal.SIGKILL)
    wait_output(
        proc,
        out,
        "nearby: presence_svc was killed by signal 9; restarting in 0.5 s "
        "(restart 1 of 5 per minute)",
    )
    wait_output(proc, out, "nearby: presence_svc is serving again (restart 1)")
    assert wait_new_pid(proc.pid, int(env["PRESENCE_PORT"]), presence) != presence
    assert _until_ok(lambda: edge.visible(user)) is True

    # a replica told to stop by someone else drains, exits 0, and is restarted
    fanout_port = int(env["FANOUT_PORT"])
    replica = pid_on_port(proc.pid, fanout_port)
    os.kill(replica, signal.SIGTERM)
    wait_output(
        proc, out, "nearby: fanout_svc#0 exited with code 0; restarting in 0.5 s (restart 1 of"
    )
    wait_output(proc, out, "nearby: fanout_svc#0 is serving again (restart 1)")

    envoy = pid_of(descendants(proc.pid), "envoy")
    os.kill(envoy, signal.SIGKILL)
    wait_output(proc, out, "nearby: Envoy was killed by signal 9; restarting in 0.5 s")
    wait_output(proc, out, "nearby: Envoy is serving again (restart 1)")
    assert _until_ok(lambda: edge.create_user("jay")) == "jay"

    kids = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0, out.read_text()
    text = out.read_text()
    assert "nearby: stopped; every process exited cleanly" in text
    # the processes the stop ended were not restarted
    assert "restarting" not in text.split("nearby: stopping (signal)", 1)[1], text
    assert_all_gone(kids)


def test_a_service_that_keeps_dying_is_given_up_and_the_rest_stays_up(
    redis_url: str, database_url: str, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    proc, port, env, out = _start(redis_url, database_url, tmp_path, launched)
    presence_port = int(env["PRESENCE_PORT"])
    victim = pid_on_port(proc.pid, presence_port)
    for restart in range(6):  # the first run and 5 restarts, each killed as soon as it runs
        os.kill(victim, signal.SIGKILL)
        if restart < 5:
            victim = wait_new_pid(proc.pid, presence_port, victim)
    wait_output(
        proc,
        out,
        "nearby: presence_svc was killed by signal 9; giving up on it after 5 restarts "
        "within 60 s, the rest keeps running",
    )
    text = out.read_text()
    for n, delay in enumerate([0.5, 1, 2, 4, 8], start=1):
        assert f"restarting in {delay:g} s (restart {n} of 5 per minute)" in text, text

    # the rest serves on; presence is not started again
    edge = _Edge(port, env)
    assert _until_ok(lambda: edge.create_user("kim")) == "kim"
    time.sleep(1)  # longer than the first restart delay: nothing comes back
    assert not [p for p in descendants(proc.pid) if b"presence_svc" in _cmdline(p)]

    kids = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 1, out.read_text()
    assert "nearby: stopped; not cleanly: presence_svc (given up)" in out.read_text()
    assert_all_gone(kids)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
