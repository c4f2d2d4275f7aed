"""The mesh's service processes: spawn `python -m <svc>`, wait until healthy, stop.

Each child runs in its own session (process group), so a Ctrl-C in the
terminal reaches only the launcher (and `make` above it), which then stops the
children in order;
stopping a child signals its whole group, so nothing it started survives.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh import tls as mesh_tls
from mesh.settings import Settings


@dataclass(frozen=True)
class ServiceSpec:
    """A service of the mesh: its module and the gRPC service Envoy health-checks."""

    module: str
    health_service: str


SERVICES: dict[str, ServiceSpec] = {
    "friend_svc": ServiceSpec("friend_svc", "nearby.v1.FriendService"),
    "location_svc": ServiceSpec("location_svc", "nearby.v1.LocationService"),
    "presence_svc": ServiceSpec("presence_svc", "nearby.v1.PresenceService"),
    "fanout_svc": ServiceSpec("fanout_svc", "nearby.v1.NearbyService"),
}


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that gives a child process exactly these settings."""
    env = dict(os.environ if base is None else base)
    for f in dataclasses.fields(Settings):
        env[f.metadata["env"]] = str(getattr(settings, f.name))
    return env


def signal_group(pid: int, sig: int) -> None:
    """Signal a child's process group (the child leads it: start_new_session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGTERM this child if its parent dies (PR_SET_PDEATHSIG). Only
    a fallback where `setpriv` is missing: Python code between fork and exec
    in a process with other threads (grpc's) can crash or hang the child."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_SETPRIV = shutil.which("setpriv")


def dying_with_parent(argv: Sequence[str]) -> tuple[list[str], Callable[[], None] | None]:
    """(argv, preexec_fn) of a child that gets SIGTERM if its parent dies
    (even by SIGKILL), so a killed launcher or test run leaves no server
    behind. util-linux's `setpriv --pdeathsig` sets it just before exec'ing
    the program; without setpriv a preexec_fn does.

    The kernel fires it when the *thread* that started the child ends, so
    start such children from the main thread (or one that outlives them)."""
    if _SETPRIV:
        return [_SETPRIV, "--pdeathsig", "TERM", *argv], None
    return list(argv), parent_death_signal


@dataclass
class Child:
    """One service process; `respawn()` starts it again in the same place."""

    name: str
    spec: ServiceSpec
    port: int
    metrics_port: int
    log_path: Path | None
    proc: subprocess.Popen[bytes]
    #: starts the process (again), with the same command, environment and
    #: log; without it the child cannot be restarted
    launch: Callable[[], subprocess.Popen[bytes]] | None = field(default=None, repr=False)
    #: mTLS for its health checks when the mesh uses it (MESH_TLS, mesh/tls.py)
    credentials: grpc.ChannelCredentials | None = field(default=None, repr=False)
    _group_killed: bool = field(default=False, init=False, repr=False)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def exit_code(self) -> int | None:
        """None while running. The first time an exit is seen, anything the
        process left in its group is killed too, right after the reap (long
        before its pid could come round again as another group's id)."""
        code = self.proc.poll()
        if code is not None and not self._group_killed:
            self._group_killed = True
            signal_group(self.proc.pid, signal.SIGKILL)
        return code

    def ready(self) -> bool:
        return self.proc.poll() is None and check_health(
            self.addr, self.spec.health_service, timeout=0.5, credentials=self.credentials
        )

    def respawn(self) -> None:
        """A fresh process for one that exited (its log goes on in the same file)."""
        if self.exit_code() is None:
            raise RuntimeError(f"{self.name} is still running")
        if self.launch is None:
            raise RuntimeError(f"{self.name} was started without a way to start it again")
        self.proc, self._group_killed = self.launch(), False

    def log_tail(self, lines: int = 5) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return "\n  ".join(tail)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            signal_group(self.proc.pid, sig)

    def stop(self, timeout: float) -> None:
        """SIGTERM (graceful: drain), SIGKILL the group after `timeout`; reaps."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()


def spawn(
    name: str,
    spec: ServiceSpec,
    settings: Settings,
    port: int,
    metrics_port: int,
    *,
    log_path: Path | None = None,
    die_with_parent: bool = False,
    cwd: Path | None = None,
) -> Child:
    env = settings_env(settings)
    env["PORT"] = str(port)
    env["METRICS_PORT"] = str(metrics_port)
    argv = [sys.executable, "-m", spec.module]
    launch = functools.partial(start, argv, env, log_path, die_with_parent=die_with_parent, cwd=cwd)
    creds = mesh_tls.channel_credentials(settings)
    return Child(name, spec, port, metrics_port, log_path, launch(), launch, creds)


def start(
    argv: list[str],
    env: Mapping[str, str],
    log_path: Path | None = None,
    *,
    die_with_parent: bool = False,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start any child the way services are started: its own session
    (process group), no stdin, stdout and stderr appended to `log_path`."""
    log = None
    out: int | object = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        out = log
    preexec: Callable[[], None] | None = None
    if die_with_parent:
        argv, preexec = dying_with_parent(argv)
    try:
        return subprocess.Popen(
            argv,
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=cwd,
            stdout=out,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=preexec,
        )
    finally:
        if log is not None:
            log.close()


def check_health(
    addr: str,
    service: str,
    timeout: float = 1.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> bool:
    """One grpc.health.v1 Check: True when SERVING."""
    with (
        grpc.secure_channel(addr, credentials)
        if credentials is not None
        else grpc.insecure_channel(addr)
    ) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs' types lack Check
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def wait_healthy(
    children: list[Child], timeout: float, cancelled: Callable[[], bool] = lambda: False
) -> None:
    """Until every child is SERVING (or `cancelled()`); raises naming the first
    one that died or hung."""
    pending = list(children)
    deadline = time.monotonic() + timeout
    while pending and not cancelled():
        for child in list(pending):
            code = child.exit_code()
            if code is not None:
                tail = child.log_tail()
                raise ChildFailed(
                    child,
                    f"{child.name} exited with code {code} while starting"
                    + (f":\n  {tail}" if tail else ""),
                )
            if child.ready():
                pending.remove(child)
        if pending and time.monotonic() > deadline:
            raise ChildFailed(
                pending[0], f"{pending[0].name} was not healthy within {timeout:.0f}s"
            )
        if pending:
            time.sleep(0.1)


class ChildFailed(RuntimeError):
    def __init__(self, child: Child, message: str) -> None:
        super().__init__(message)
        self.child = child
