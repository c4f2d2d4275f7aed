"""Test-owned infrastructure: a private Redis, a fresh Postgres database per
test (on the local server when reachable, otherwise on a private cluster),
(helpers that run services in-process live in tests/support/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis

from mesh.redis import RedisEngine
from mesh.settings import Settings
from stack import infra
from tests.support import nearby_run
from tests.support.redis import CLUSTER, STANDALONE, RedisTarget
from tests.support.web_stack import WebStack
from tests.support.web_stack import web_stack as web_stack_of

SYSTEM_PG = os.environ.get(
    "NEARBY_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="nearby-tests-") as tmp:
        # a private Postgres runs as the `postgres` user when we are root: it
        # must be able to reach its data folder below this one
        os.chmod(tmp, 0o755)
        yield Path(tmp)


@pytest.fixture(scope="session")
def redis_server(tmp_root: Path) -> Iterator[infra.RedisServer]:
    server = infra.RedisServer(tmp_root / "redis").start()
    yield server
    server.stop()


@pytest.fixture
async def redis_url(redis_server: infra.RedisServer) -> AsyncIterator[str]:
    """A clean Redis for each test (the private server, flushed)."""
    r = aioredis.Redis.from_url(redis_server.url)
    await r.flushall()
    await r.aclose()
    yield redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_url)
    yield r
    await r.aclose()


def _system_pg_reachable() -> bool:
    try:
        with psycopg.connect(SYSTEM_PG, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_admin_url(tmp_root: Path) -> Iterator[str]:
    """An admin URL of a Postgres server the tests may create databases on."""
    if _system_pg_reachable():
        yield SYSTEM_PG
        return
    server = infra.PostgresServer(tmp_root / "pg", fast=True).start()
    yield server.url
    server.stop()


@pytest.fixture
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    name = f"nearby_test_{uuid.uuid4().hex[:12]}"
    infra.create_database(pg_admin_url, name)
    yield infra.database_url(pg_admin_url, name)
    infra.drop_database(pg_admin_url, name)


@pytest.fixture
def settings(redis_url: str, database_url: str) -> Settings:
    return Settings(redis_url=redis_url, database_url=database_url)


@pytest.fixture(scope="session")
def redis_cluster(tmp_root: Path) -> Iterator[infra.RedisCluster]:
    """A private Redis Cluster, 3 masters + 3 replicas, shared by the session.

    Tests that kill or reshard nodes start their own `infra.RedisCluster`.
    """
    cluster = infra.RedisCluster(tmp_root / "redis-cluster", masters=3, replicas=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def private_pg() -> Iterator[infra.PostgresServer]:
    """A Postgres server of this test alone, that it may stop and start."""
    root = Path(tempfile.mkdtemp(prefix="nearby-pg-"))
    os.chmod(root, 0o755)  # the server may run as the postgres user
    server = infra.PostgresServer(root / "pg", fast=True).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=[STANDALONE, CLUSTER])
async def redis_target(
    request: pytest.FixtureRequest, redis_server: infra.RedisServer
) -> AsyncIterator[RedisTarget]:
    """Each engine in turn, clean: the private Redis, then the shared cluster
    (flushed on every master)."""
    if request.param == CLUSTER:
        cluster: infra.RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        yield RedisTarget(cluster.url, True)
        return
    r = aioredis.Redis.from_url(redis_server.url)
    await r.flushall()
    await r.aclose()
    yield RedisTarget(redis_server.url, False)


@pytest.fixture
def engine_settings(redis_target: RedisTarget, database_url: str) -> Settings:
    """`settings` on each engine in turn."""
    return Settings(
        redis_url=redis_target.url, redis_cluster=redis_target.cluster, database_url=database_url
    )


@pytest.fixture
async def engine_client(redis_target: RedisTarget) -> AsyncIterator[Any]:
    """A plain client of `redis_target` (a RedisCluster on the cluster)."""
    client = redis_target.client()
    if redis_target.cluster:
        await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
async def engine(redis_target: RedisTarget) -> AsyncIterator[RedisEngine]:
    """An open RedisEngine on `redis_target`."""
    opened = redis_target.engine()
    await opened.open()
    yield opened
    await opened.aclose()


@pytest.fixture
def launched() -> Iterator[list[subprocess.Popen[bytes]]]:
    """`nearby run`s started by a test; killed (by pid) if the test did not stop them."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        nearby_run.kill_tree(proc)


@pytest.fixture(scope="session")
def web_stack(pg_admin_url: str, tmp_root: Path) -> Iterator[WebStack]:
    """`nearby run --dev` (the map page, the dev login), shared by the browser
    and the TypeScript SDK tests (tests/support/web_stack.py)."""
    with web_stack_of(pg_admin_url, tmp_root / "web-stack") as stack:
        yield stack
