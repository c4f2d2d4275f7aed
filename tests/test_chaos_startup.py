"""A service started while Redis or Postgres is down waits for it (one log
line, up to STARTUP_WAIT_S) and serves once it is back; still down after
that, the process exits with code 2 and one line. Under a supervisor a
restart in the middle of a store outage therefore waits instead of burning
the restart cap. The launcher's own refusals at `nearby run` (a store that
is not reachable, a port taken) are tested in test_edge_run.py and stay as
they are."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from friend_svc.app import FriendApp
from mesh.server import Runner
from mesh.settings import Settings
from presence_svc.app import PresenceApp
from stack import infra
from stack.procs import check_health


async def serving(addr: str) -> bool:
    return await asyncio.to_thread(check_health, addr, "", 5.0)


async def test_a_service_waits_for_redis_at_start(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis = infra.RedisServer(tmp_path / "redis")  # not started yet
    s = Settings(redis_url=redis.url, database_url=database_url, startup_wait_s=60)
    runner = Runner(PresenceApp(s), "127.0.0.1", 0, grace_s=1)
    with caplog.at_level(logging.INFO, logger="mesh.startup"):
        starting = asyncio.create_task(runner.start())
        deadline = time.monotonic() + 10
        while not any("waiting up to 60 s for Redis" in r.getMessage() for r in caplog.records):
            assert not starting.done(), starting
            assert time.monotonic() < deadline, "no line says it waits"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(redis.start)
        try:
            port = await asyncio.wait_for(starting, 30)
            assert await serving(f"127.0.0.1:{port}")
            waits = [r for r in caplog.records if "waiting up to" in r.getMessage()]
            assert len(waits) == 1, [r.getMessage() for r in waits]
        finally:
            await runner.stop()
            redis.stop()


async def test_a_service_waits_for_postgres_at_start(
    redis_url: str, private_pg: infra.PostgresServer
) -> None:
    infra.create_database(private_pg.url, "startup")
    url = infra.database_url(private_pg.url, "startup")
    await asyncio.to_thread(private_pg.stop)
    s = Settings(redis_url=redis_url, database_url=url, startup_wait_s=60)
    runner = Runner(FriendApp(s), "127.0.0.1", 0, grace_s=1)
    starting = asyncio.create_task(runner.start())
    await asyncio.sleep(1.0)
    assert not starting.done(), "it did not wait for Postgres"
    await asyncio.to_thread(private_pg.start)
    try:
        port = await asyncio.wait_for(starting, 30)
        assert await serving(f"127.0.0.1:{port}")
    finally:
        await runner.stop()


def test_still_down_after_the_wait_is_one_line_and_exit_2(redis_url: str) -> None:
    closed = infra.free_port()
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/nearby",
        "STARTUP_WAIT_S": "1",
        "PORT": str(infra.free_port()),
        "METRICS_PORT": str(infra.free_port()),
        "PATH": "/usr/bin:/bin",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "friend_svc"], env=env, capture_output=True, text=True, timeout=60
    )
    took = time.monotonic() - started
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() + done.stdout.splitlines() if line]
    waiting = [line for line in lines if "waiting up to 1 s for Postgres" in line]
    failed = [
        line for line in lines if "cannot connect to Postgres at" in line and "waiting" not in line
    ]
    assert len(waiting) == 1, lines
    assert len(failed) == 1, lines
    assert took >= 1.0
