"""Deleting location history (real Redis, standalone and Cluster, and real
Postgres): exactly the range goes, stored rows and buffered entries alike,
and a deletion racing the history writer never lets a deleted entry land.

Both interleavings of the race are forced, with the writer's own code:
- the writer has read entries from the buffer, the deletion runs, then the
  writer commits what it read;
- the writer is inside its commit (held up by a table lock the test takes)
  when the deletion starts: the deletion waits for it, then deletes the
  committed rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from location_svc.app import LocationApp
from location_svc.cache import Report
from location_svc.erase import Eraser
from location_svc.history import HistoryWriter
from mesh import keys
from mesh.clock import now_ms
from mesh.settings import Settings
from tests.support.fanout import until
from tests.support.services import running
from tests.support.traces import pg_traces, redis_traces

T0 = now_ms() - 3_600_000
"""Report times: T0 + i seconds (an hour ago)."""


def at(i: int) -> dt.datetime:
    return dt.datetime.fromtimestamp((T0 + i * 1000) / 1000, dt.UTC)


def same_shard(user: str, prefix: str) -> str:
    """An id whose history shard is `user`'s (their entries share a stream)."""
    shard = keys.shard_of(user, keys.HISTORY_SHARDS)
    return next(
        f"{prefix}{i}"
        for i in range(10_000)
        if keys.shard_of(f"{prefix}{i}", keys.HISTORY_SHARDS) == shard
    )


async def stored(url: str, user: str) -> list[int]:
    """The report indexes (see `at`) of a user's rows in location_history."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT recorded_at FROM location_history WHERE user_id = %s ORDER BY 1", (user,)
        )
        return [round((r[0] - at(0)).total_seconds()) for r in await cur.fetchall()]


async def waiting_locks(url: str, locktype: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = %s AND NOT granted", (locktype,)
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def until_waiting(url: str, locktype: str) -> None:
    """Until a session waits for a lock of that type (polls pg_locks)."""
    await until(lambda: waiting_locks(url, locktype))


@pytest.fixture
async def app(engine_settings: Settings) -> AsyncIterator[LocationApp]:
    """location_svc without its own writer: the test drives one itself."""
    loc = LocationApp(engine_settings.replace(min_report_interval_s=0.0), history_writer=False)
    async with running(loc):
        yield loc


@pytest.fixture
async def writer(app: LocationApp) -> AsyncIterator[HistoryWriter]:
    s = app.settings
    w = HistoryWriter(
        s.redis_url, s.database_url, batch_size=1000, claim_idle_s=60, cluster=s.redis_cluster
    )
    await w.engine.open()
    try:
        yield w
    finally:
        await w.engine.aclose()


async def record(app: LocationApp, user: str, indexes: range) -> None:
    await app.ingest.record([Report(user, 48.85, 2.35 + i / 1000, T0 + i * 1000) for i in indexes])


async def test_history_deletion_takes_exactly_the_range_even_from_a_writers_hands(
    app: LocationApp, writer: HistoryWriter, engine_client: Any
) -> None:
    url = app.settings.database_url
    alice = "alice-hist"
    bob = same_shard(alice, "bob-hist")
    stream = keys.history_stream_of(alice)
    eraser = Eraser(app.pool, app.redis)
    await record(app, alice, range(10))
    await record(app, bob, range(10))

    # 1. The writer has read all 20 entries; the deletion runs; the writer commits.
    held, seen = await writer._read(stream, [])
    assert len(held) == 20
    assert await eraser.delete_history(alice, at(3), at(7)) == 4  # buffered: [3, 7)
    conn = await writer._write(stream, held, None, seen)
    assert await stored(url, alice) == [0, 1, 2, 7, 8, 9]
    assert await stored(url, bob) == list(range(10))

    # 2. The writer is committing (held up inside its transaction) when the
    #    deletion starts: the deletion waits, then deletes the committed rows.
    await record(app, alice, range(10, 13))
    held, seen = await writer._read(stream, [])
    assert len(held) == 3
    async with await psycopg.AsyncConnection.connect(url) as blocker:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE location_history IN SHARE MODE")
            commit = asyncio.create_task(writer._write(stream, held, conn, seen))
            await until_waiting(url, "relation")  # the writer holds the shard lock, waits
            deletion = asyncio.create_task(eraser.delete_history(alice, at(10), None))
            await until_waiting(url, "advisory")  # the deletion waits for the writer
            assert not commit.done() and not deletion.done()
        await commit
        # still buffered (not acknowledged) and stored: each counts once
        assert await deletion == 3
    assert await stored(url, alice) == [0, 1, 2, 7, 8, 9]

    # 3. Bounds on stored rows: start inclusive, end exclusive, either open.
    assert await eraser.delete_history(alice, at(8), None) == 2
    assert await eraser.delete_history(alice, None, at(1)) == 1
    assert await eraser.delete_history(alice, at(3), at(7)) == 0
    assert await stored(url, alice) == [1, 2, 7]
    assert await stored(url, bob) == list(range(10))

    # 4. Everything of a user (history, cache, presence index), nothing of others.
    await record(app, bob, range(20, 22))  # buffered, not written
    assert await eraser.delete_user(bob) == 12 + 2  # history, cache key, index entry
    assert await redis_traces(engine_client, bob) == {}
    assert await pg_traces(url, bob) == {}
    assert await stored(url, alice) == [1, 2, 7]
    assert (await redis_traces(engine_client, alice)).get(keys.location(alice).encode())
    with contextlib.suppress(psycopg.Error):
        await conn.close()


async def test_a_reclaimed_entry_deleted_meanwhile_is_not_written(
    app: LocationApp, writer: HistoryWriter
) -> None:
    """Entries a dead writer left pending are reclaimed by another: one deleted
    in between is not written by the one that reclaims it."""
    url = app.settings.database_url
    carol = "carol-hist"
    stream = keys.history_stream_of(carol)
    await record(app, carol, range(4))
    dead = HistoryWriter(
        app.settings.redis_url,
        url,
        batch_size=1000,
        claim_idle_s=0.001,
        cluster=app.settings.redis_cluster,
    )
    await dead.engine.open()
    try:
        held, _ = await dead._read(stream, [])  # read, never acknowledged
    finally:
        await dead.engine.aclose()
    assert len(held) == 4
    assert await Eraser(app.pool, app.redis).delete_history(carol, at(2), at(3)) == 1
    writer.claim_idle_ms = 1
    await asyncio.sleep(0.01)
    conn = await writer._reclaim(stream, None)
    assert await stored(url, carol) == [0, 1, 3]
    if conn is not None:
        await conn.close()
