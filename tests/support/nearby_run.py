"""The real `nearby run` (or `make run`) as a subprocess of a test: free port
blocks, its environment, waiting on its output, the pids of its children, and
checks that nothing outlives it.

    env = run_env(redis_url, database_url, tmp_path / "home")
    proc = small_stack(env, out, launched)        # one fan-out replica, running
    pid_of(children(proc.pid), "presence_svc")    # a service's pid
    wait_output(proc, out, "is serving again")    # a line the launcher prints
    assert_all_gone(kids)                          # no orphans after the stop

The `launched` fixture (conftest.py) kills, by pid, every launcher a test
started and did not stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from stack import infra

ROOT = Path(__file__).resolve().parent.parent.parent

_HANDED_OUT: set[int] = set()


def free_block(width: int) -> int:
    """A port p with p..p+width-1 and their metrics ports (+1000) all free, and
    none of them handed out before (blocks for one stack must not overlap: a
    service's metrics port would otherwise land on another's gRPC port)."""
    for _ in range(200):
        base = infra.free_port()
        wanted = [base + i for i in range(width)] + [base + 1000 + i for i in range(width)]
        if all(p < 65536 and p not in _HANDED_OUT and _free(p) for p in wanted):
            _HANDED_OUT.update(wanted)
            return base
    raise RuntimeError("no free block of ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_env(
    redis_url: str, database_url: str, home: Path, *, fanout_replicas: int = 2
) -> dict[str, str]:
    """The environment of a `nearby run` on these servers, on free ports, with
    short grace and drain periods."""
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        NEARBY_HOME=str(home),
        JWKS_PATH="",
        FRIEND_PORT=str(free_block(1)),
        LOCATION_PORT=str(free_block(1)),
        PRESENCE_PORT=str(free_block(1)),
        FANOUT_PORT=str(free_block(fanout_replicas)),
        DEV_TOKEN_PORT=str(free_block(1)),
        MAP_PORT=str(free_block(1)),
        SHUTDOWN_GRACE_S="2",
        DRAIN_S="1",
        ENVOY_TLS_PORT=str(free_block(1)),
        JWKS_SERVE_PORT=str(free_block(1)),
        # tests call faster than people: the per-user limit would throttle them
        RATE_LIMIT_PER_S="1000",
        RATE_LIMIT_BURST="1000",
    )
    return env


def children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start(
    command: list[str], env: dict[str, str], out: Path, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """`command` as the leader of its own process group, output to `out`."""
    with open(out, "wb") as log:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def run(args: list[str], env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    """`python -m stack run ARGS`."""
    return start([sys.executable, "-m", "stack", "run", *args], env, out)


def wait_output(
    proc: subprocess.Popen[bytes], out: Path, text: str, within_s: float = 120.0
) -> None:
    """Until `text` appears in the launcher's output (fails if it exits first)."""
    deadline = time.monotonic() + within_s
    while text not in out.read_text():
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, f"no {text!r} within {within_s:g} s:\n{out.read_text()}"
        time.sleep(0.1)


def wait_running(proc: subprocess.Popen[bytes], out: Path) -> None:
    wait_output(proc, out, "nearby is running")


def token(env: dict[str, str], cwd: Path, user: str, *flags: str) -> str:
    """`nearby token USER FLAGS` run in `cwd`."""
    nearby = Path(sys.executable).parent / "nearby"
    return subprocess.run(
        [str(nearby), "token", user, *flags],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()


def stack_args(port: int, admin_port: int, fanout_replicas: int) -> list[str]:
    return [
        "--port",
        str(port),
        "--admin-port",
        str(admin_port),
        "--fanout-replicas",
        str(fanout_replicas),
        "--listen",
        "127.0.0.1",
    ]


def small_stack(
    env: dict[str, str], out: Path, launched: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """`nearby run` with one fan-out replica on free ports, running."""
    proc = run(stack_args(free_block(1), free_block(1), 1), env, out)
    launched.append(proc)
    wait_running(proc, out)
    return proc


def pid_of(pids: list[int], module: str) -> int:
    return next(p for p in pids if module.encode() in Path(f"/proc/{p}/cmdline").read_bytes())


def pid_on_port(launcher_pid: int, port: int) -> int:
    """The pid of the launcher's child started with PORT=port (a service)."""
    wanted = f"PORT={port}".encode()
    for kid in children(launcher_pid):
        with contextlib.suppress(OSError):
            if alive(kid) and wanted in Path(f"/proc/{kid}/environ").read_bytes().split(b"\0"):
                return kid
    raise LookupError(f"no live child of {launcher_pid} with PORT={port}")


def wait_new_pid(launcher_pid: int, port: int, old: int, within_s: float = 60.0) -> int:
    """Until a live child other than `old` serves `port` (a restarted one)."""
    deadline = time.monotonic() + within_s
    while True:
        with contextlib.suppress(LookupError):
            pid = pid_on_port(launcher_pid, port)
            if pid != old:
                return pid
        assert time.monotonic() < deadline, f"no new process on port {port}"
        time.sleep(0.02)


def assert_all_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "orphaned processes after shutdown"


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a launcher that is still running and every process group below it."""
    if proc.poll() is not None:
        return
    for kid in descendants(proc.pid):  # services and Envoy lead their own groups
        with contextlib.suppress(ProcessLookupError):
            os.killpg(kid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(kid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)  # it leads its own group too
    proc.wait()
