"""`nearby run`: the whole stack as subprocesses behind Envoy, stopped cleanly;
start-up problems reported as one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
import redis
from nearby.v1 import (
    friend_service_pb2,
    friend_service_pb2_grpc,
    geo_pb2,
    nearby_service_pb2,
    nearby_service_pb2_grpc,
)

from mesh.settings import Settings
from stack import launcher
from stack.signals import SignalBurst, Verdict
from tests.support import browser
from tests.support.edge_stack import grpcurl_binary
from tests.support.nearby_run import (
    ROOT,
    assert_all_gone,
    children,
    descendants,
    free_block,
    pid_of,
    run,
    run_env,
    small_stack,
    start,
    token,
    wait_running,
)


def test_nearby_run_serves_through_envoy_and_stops_cleanly(
    redis_url: str,
    database_url: str,
    tmp_path: Path,
    launched: list[subprocess.Popen[bytes]],
) -> None:
    env = run_env(redis_url, database_url, tmp_path / "home")
    port, admin = free_block(1), free_block(1)
    out = tmp_path / "out.txt"
    proc = run(
        [
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            "--fanout-replicas",
            "2",
            "--listen",
            "127.0.0.1",
            "--dev",
        ],
        env,
        out,
    )
    launched.append(proc)
    wait_running(proc, out)
    banner = out.read_text()
    assert f"localhost:{port}" in banner
    assert f"http://127.0.0.1:{admin}/" in banner
    assert banner.count("/metrics") == 5  # friend, location, presence, 2 fan-out
    kids = children(proc.pid)
    assert len(kids) == 6  # the five services and Envoy

    def grpcurl(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        auth = ["-H", f"authorization: Bearer {token}"] if token else []
        return subprocess.run(
            [grpcurl_binary(), "-plaintext", *auth, *args[:-1], f"127.0.0.1:{port}", args[-1]],
            capture_output=True,
            text=True,
            timeout=30,
        )

    listed = grpcurl("list")
    assert listed.returncode == 0, listed.stderr
    for service in ("FriendService", "LocationService", "PresenceService", "NearbyService"):
        assert f"nearby.v1.{service}" in listed.stdout
    body = json.dumps({"user_id": "alice", "display_name": "Alice"})
    created = grpcurl(
        "-d", body, "nearby.v1.FriendService/CreateUser", token=token(env, ROOT, "ops", "--admin")
    )
    assert created.returncode == 0, created.stderr
    me = grpcurl("-d", "{}", "nearby.v1.FriendService/GetUser", token=token(env, ROOT, "alice"))
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout)["user"]["user_id"] == "alice"
    denied = grpcurl("-d", "{}", "nearby.v1.FriendService/GetUser")
    assert "Unauthenticated" in denied.stderr
    # dev mode: the dev login through Envoy creates a user and mints its token
    assert f"POST http://localhost:{port}/dev/token" in banner
    reply, doc = browser.post_json(f"127.0.0.1:{port}", "/dev/token", {"user_id": "bob"})
    assert reply.status == 200 and doc["created"] is True, reply.body
    bob = grpcurl("-d", "{}", "nearby.v1.FriendService/GetUser", token=str(doc["token"]))
    assert json.loads(bob.stdout)["user"]["user_id"] == "bob", bob.stderr

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, out.read_text()
    assert "stopping Envoy" in out.read_text()
    assert_all_gone(kids)


def _one_line_failure(
    args: list[str], env: dict[str, str], tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> str:
    out = tmp_path / "fail.txt"
    proc = run(args, env, out)
    launched.append(proc)
    assert proc.wait(60) == 2
    lines = [line for line in out.read_text().splitlines() if line.startswith("nearby run:")]
    assert len(lines) == 1, out.read_text()
    assert not children(proc.pid)
    return lines[0]


def test_port_in_use_is_one_clear_line(
    redis_url: str, database_url: str, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    env = run_env(redis_url, database_url, tmp_path / "home")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _one_line_failure(
            ["--port", str(port), "--admin-port", str(free_block(1)), "--listen", "127.0.0.1"],
            env,
            tmp_path,
            launched,
        )
    assert f"port {port} (Envoy gRPC listener) is already in use" in line
    assert "--port" in line


def test_dev_mode_next_to_a_real_issuer_is_one_clear_line(
    redis_url: str, database_url: str, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    env = run_env(redis_url, database_url, tmp_path / "home")
    env["JWKS_PATH"] = str(tmp_path / "issuer-jwks.json")
    line = _one_line_failure(
        ["--port", str(free_block(1)), "--admin-port", str(free_block(1)), "--dev"],
        env,
        tmp_path,
        launched,
    )
    assert "dev mode" in line and "JWKS_PATH" in line


def test_unreachable_database_is_one_clear_line(
    redis_url: str, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    closed = free_block(1)
    env = run_env(redis_url, f"postgresql://postgres@127.0.0.1:{closed}/nearby", tmp_path / "home")
    line = _one_line_failure(
        [
            "--port",
            str(free_block(1)),
            "--admin-port",
            str(free_block(1)),
            "--fanout-replicas",
            "1",
        ],
        env,
        tmp_path,
        launched,
    )
    assert "DATABASE_URL=" in line
    assert "not reachable" in line


def test_private_redis_and_postgres_when_the_defaults_are_unreachable(tmp_path: Path) -> None:
    """A fresh machine: nothing on the default ports, no variables set."""
    home = Path(tempfile.mkdtemp(prefix="nearby-home-"))
    home.chmod(0o755)  # as root, Postgres runs as `postgres` and must reach its folder
    closed = free_block(1)
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{closed}/0",
        database_url=f"postgresql://postgres@127.0.0.1:{closed}/nearby",
    )
    stack = launcher.Stack()
    said: list[str] = []
    try:
        redis_url = launcher.resolve_redis(settings, home, False, stack, said.append)
        database_url = launcher.resolve_postgres(settings, home, False, stack, said.append)
        assert stack.redis_server is not None and stack.postgres_server is not None
        assert redis.Redis.from_url(redis_url).ping()
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT current_database()").fetchone()
        assert row is not None and row[0] == "nearby"
        assert (home / "postgres" / "PG_VERSION").exists()
        assert any("private Postgres" in line for line in said)
    finally:
        stack.stop(settings, said.append)
        shutil.rmtree(home, ignore_errors=True)
    with pytest.raises(launcher.StartError, match=r"REDIS_URL=.* is not reachable"):
        launcher.resolve_redis(settings, home, True, launcher.Stack(), said.append)


class _Stream:
    """One NearbyService.Connect through Envoy, kept open until close()."""

    def __init__(self, port: int, token: str) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._done = threading.Event()
        stub = nearby_service_pb2_grpc.NearbyServiceStub(self.channel)
        self.responses = stub.Connect(
            self._requests(), metadata=(("authorization", f"Bearer {token}"),), timeout=120
        )

    def _requests(self) -> Iterator[nearby_service_pb2.ConnectRequest]:
        yield nearby_service_pb2.ConnectRequest(
            location=nearby_service_pb2.LocationUpdate(
                position=geo_pb2.LatLng(latitude=52.52, longitude=13.405)
            )
        )
        self._done.wait(120)

    def kinds(self) -> Iterator[str]:
        """The kind of each message until the stream ends (its status is not raised)."""
        with contextlib.suppress(grpc.RpcError):
            for response in self.responses:
                yield str(response.WhichOneof("kind"))

    def close(self) -> None:
        self._done.set()
        self.channel.close()


def _create_user(port: int, admin_token: str, user: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        friend_service_pb2_grpc.FriendServiceStub(channel).CreateUser(
            friend_service_pb2.CreateUserRequest(user_id=user, display_name=user.title()),
            metadata=(("authorization", f"Bearer {admin_token}"),),
            timeout=30,
        )


def test_one_ctrl_c_to_the_process_group_of_make_run_drains_the_fanout(
    redis_url: str, database_url: str, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    """A terminal's Ctrl-C reaches make and the launcher, and copies of it may
    follow a moment later: still one graceful stop, the fan-out drained."""
    env = run_env(redis_url, database_url, tmp_path / "home")
    port, admin = free_block(1), free_block(1)
    venv = Path(sys.executable).parent.parent
    args = f"--port {port} --admin-port {admin} --fanout-replicas 1 --listen 127.0.0.1"
    out = tmp_path / "out.txt"
    # -o: never reinstall from inside a test, even if pyproject.toml is newer
    make_run = ["make", "run", f"VENV={venv}", "-o", f"{venv}/.installed-stamp", f"ARGS={args}"]
    make = start(make_run, env, out)
    launched.append(make)
    wait_running(make, out)
    (launcher_pid,) = [
        k for k in children(make.pid) if b"run" in Path(f"/proc/{k}/cmdline").read_bytes()
    ]
    kids = descendants(make.pid)
    _create_user(port, token(env, ROOT, "ops", "--admin"), "gina")
    stream = _Stream(port, token(env, ROOT, "gina"))
    try:
        kinds = stream.kinds()
        assert next(kinds) == "snapshot"
        os.killpg(make.pid, signal.SIGINT)  # what the terminal does
        time.sleep(0.3)
        os.kill(launcher_pid, signal.SIGINT)  # the same stop, delivered again
        rest = list(kinds)
    finally:
        stream.close()
    assert "reconnect" in rest, (rest, out.read_text())
    make.wait(90)
    text = out.read_text()
    assert "stopping now" not in text, text
    assert "nearby: stopped; every process exited cleanly" in text, text
    assert "draining 1 streams" in (tmp_path / "home" / "logs" / "fanout_svc-0.log").read_text()
    assert_all_gone(kids)


def test_nearby_run_and_token_work_from_any_folder_of_the_checkout(
    redis_url: str, database_url: str, launched: list[subprocess.Popen[bytes]]
) -> None:
    """A relative NEARBY_HOME is the checkout's, whichever folder a command runs in."""
    relative_home = f".nearby/test-{uuid.uuid4().hex[:8]}"
    home = ROOT / relative_home
    env = run_env(redis_url, database_url, Path(relative_home))
    port, admin = free_block(1), free_block(1)
    out = home.parent / f"{home.name}.out"
    flags = ["--port", str(port), "--admin-port", str(admin), "--fanout-replicas", "1"]
    flags += ["--listen", "127.0.0.1"]
    home.parent.mkdir(exist_ok=True)
    try:
        nearby = str(Path(sys.executable).parent / "nearby")
        proc = start([nearby, "run", *flags], env, out, cwd=ROOT / "docs")
        launched.append(proc)
        wait_running(proc, out)
        assert (home / "logs" / "fanout_svc-0.log").is_file()
        assert not (ROOT / "docs" / ".nearby").exists()
        # minted in another folder, with the same key
        _create_user(port, token(env, ROOT / "sdk" / "nearby", "ops", "--admin"), "hal")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0, out.read_text()
        assert "every process exited cleanly" in out.read_text()
    finally:
        shutil.rmtree(home, ignore_errors=True)
        out.unlink(missing_ok=True)


def test_copies_of_one_signal_are_one_stop_and_a_later_signal_stops_now() -> None:
    at = [0.0]
    burst = SignalBurst(window_s=1.0, clock=lambda: at[0])
    verdicts = []
    for t in (100.0, 100.01, 100.3, 101.0, 101.2, 103.0):
        at[0] = t
        verdicts.append(burst.receive())
    assert verdicts == [Verdict.GRACEFUL] + [Verdict.REPEAT] * 3 + [Verdict.NOW] * 2


def test_a_second_signal_a_moment_later_skips_the_grace(
    redis_url: str, database_url: str, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    env = run_env(redis_url, database_url, tmp_path / "home")
    env["SHUTDOWN_GRACE_S"] = "60"  # presence, frozen below, would hold the stop for 65 s
    out = tmp_path / "out.txt"
    proc = small_stack(env, out, launched)
    kids = children(proc.pid)
    presence = pid_of(kids, "presence_svc")
    os.kill(presence, signal.SIGSTOP)  # a service that does not stop by itself
    first = time.monotonic()
    proc.send_signal(signal.SIGINT)
    deadline = first + 60
    while "stopping presence_svc" not in out.read_text():
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.1)
    time.sleep(max(0.0, first + 1.5 - time.monotonic()))  # clearly a second request
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 1, out.read_text()
    assert "stopping now (second signal)" in out.read_text()
    assert_all_gone(kids)
