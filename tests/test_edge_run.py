"""`nearby run`: the whole stack as subprocesses behind Envoy, stopped cleanly;
start-up problems reported as one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from mesh.settings import Settings
from stack import infra, launcher
from tests.support.edge_stack import grpcurl_binary

ROOT = Path(__file__).resolve().parent.parent


_HANDED_OUT: set[int] = set()


def _free_block(width: int) -> int:
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


def _env(redis_url: str, database_url: str, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        NEARBY_HOME=str(home),
        JWKS_PATH="",
        FRIEND_PORT=str(_free_block(1)),
        LOCATION_PORT=str(_free_block(1)),
        PRESENCE_PORT=str(_free_block(1)),
        FANOUT_PORT=str(_free_block(2)),
        SHUTDOWN_GRACE_S="2",
        DRAIN_S="1",
    )
    return env


def _children(pid: int) -> list[int]:
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


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _run(args: list[str], env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "stack", "run", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture
def launched() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Launchers started by a test; killed (by pid) if the test did not stop them."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            for kid in _children(proc.pid):
                os.killpg(kid, signal.SIGKILL)
            proc.kill()
            proc.wait()


def test_nearby_run_serves_through_envoy_and_stops_cleanly(
    redis_url: str,
    database_url: str,
    tmp_path: Path,
    launched: list[subprocess.Popen[bytes]],
) -> None:
    env = _env(redis_url, database_url, tmp_path / "home")
    port, admin = _free_block(1), _free_block(1)
    out = tmp_path / "out.txt"
    proc = _run(
        [
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            "--fanout-replicas",
            "2",
            "--listen",
            "127.0.0.1",
        ],
        env,
        out,
    )
    launched.append(proc)
    deadline = time.monotonic() + 90
    while "nearby is running" not in out.read_text():
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.2)
    banner = out.read_text()
    assert f"localhost:{port}" in banner
    assert f"http://127.0.0.1:{admin}/" in banner
    assert banner.count("/metrics") == 5  # friend, location, presence, 2 fan-out
    kids = _children(proc.pid)
    assert len(kids) == 6  # the five services and Envoy

    def grpcurl(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        auth = ["-H", f"authorization: Bearer {token}"] if token else []
        return subprocess.run(
            [grpcurl_binary(), "-plaintext", *auth, *args[:-1], f"127.0.0.1:{port}", args[-1]],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def token(user: str, *flags: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "stack", "token", user, *flags],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()

    listed = grpcurl("list")
    assert listed.returncode == 0, listed.stderr
    for service in ("FriendService", "LocationService", "PresenceService", "NearbyService"):
        assert f"nearby.v1.{service}" in listed.stdout
    body = json.dumps({"user_id": "alice", "display_name": "Alice"})
    created = grpcurl(
        "-d", body, "nearby.v1.FriendService/CreateUser", token=token("ops", "--admin")
    )
    assert created.returncode == 0, created.stderr
    me = grpcurl("-d", "{}", "nearby.v1.FriendService/GetUser", token=token("alice"))
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout)["user"]["user_id"] == "alice"
    denied = grpcurl("-d", "{}", "nearby.v1.FriendService/GetUser")
    assert "Unauthenticated" in denied.stderr

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, out.read_text()
    assert "stopping Envoy" in out.read_text()
    deadline = time.monotonic() + 10
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "orphaned processes after shutdown"


def _one_line_failure(
    args: list[str], env: dict[str, str], tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> str:
    out = tmp_path / "fail.txt"
    proc = _run(args, env, out)
    launched.append(proc)
    assert proc.wait(60) == 2
    lines = [line for line in out.read_text().splitlines() if line.startswith("nearby run:")]
    assert len(lines) == 1, out.read_text()
    assert not _children(proc.pid)
    return lines[0]


def test_port_in_use_is_one_clear_line(
    redis_url: str, database_url: str, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    env = _env(redis_url, database_url, tmp_path / "home")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _one_line_failure(
            ["--port", str(port), "--admin-port", str(_free_block(1)), "--listen", "127.0.0.1"],
            env,
            tmp_path,
            launched,
        )
    assert f"port {port} (Envoy gRPC listener) is already in use" in line
    assert "--port" in line


def test_unreachable_database_is_one_clear_line(
    redis_url: str, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    closed = _free_block(1)
    env = _env(redis_url, f"postgresql://postgres@127.0.0.1:{closed}/nearby", tmp_path / "home")
    line = _one_line_failure(
        [
            "--port",
            str(_free_block(1)),
            "--admin-port",
            str(_free_block(1)),
            "--fanout-replicas",
            "1",
        ],
        env,
        tmp_path,
        launched,
    )
    assert "DATABASE_URL=" in line
    assert "not reachable" in line


def test_a_dying_service_is_named_and_everything_stops(
    redis_url: str, database_url: str, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    env = _env(redis_url, database_url, tmp_path / "home")
    out = tmp_path / "out.txt"
    args = ["--port", str(_free_block(1)), "--admin-port", str(_free_block(1))]
    proc = _run([*args, "--fanout-replicas", "1", "--listen", "127.0.0.1"], env, out)
    launched.append(proc)
    deadline = time.monotonic() + 90
    while "nearby is running" not in out.read_text():
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.2)
    kids = _children(proc.pid)
    presence = next(k for k in kids if b"presence_svc" in Path(f"/proc/{k}/cmdline").read_bytes())
    os.kill(presence, signal.SIGKILL)
    assert proc.wait(60) == 1, out.read_text()
    assert "presence_svc was killed by signal 9; stopping everything" in out.read_text()
    deadline = time.monotonic() + 10
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "orphaned processes"


def test_private_redis_and_postgres_when_the_defaults_are_unreachable(tmp_path: Path) -> None:
    """A fresh machine: nothing on the default ports, no variables set."""
    home = Path(tempfile.mkdtemp(prefix="nearby-home-"))
    home.chmod(0o755)  # as root, Postgres runs as `postgres` and must reach its folder
    closed = _free_block(1)
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
