"""The history pipeline: every kept report reaches location_history exactly
once, through Postgres outages and writer crashes; partitions and retention;
the buffer bound; ListLocationHistory."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import timestamp_pb2
from nearby.v1 import location_service_pb2, location_service_pb2_grpc
from prometheus_client import REGISTRY

from location_svc import store
from location_svc.app import LocationApp
from mesh import keys
from mesh.clock import now_ms
from mesh.internal.v1 import (
    events_pb2,
    location_ingest_service_pb2,
    location_ingest_service_pb2_grpc,
)
from mesh.settings import Settings
from stack import infra
from tests.support.history import batch, buffered, count_rows, fast, wait_rows
from tests.support.services import running

DAY = dt.timedelta(days=1)


async def test_n_updates_make_exactly_n_rows(engine_settings: Settings, engine_client: Any) -> None:
    users = [f"walker{i}" for i in range(40)]
    t0 = now_ms() - 60_000
    async with (
        running(LocationApp(fast(engine_settings))) as addr,
        grpc.aio.insecure_channel(addr) as ch,
    ):
        stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)
        for k in range(5):
            resp = await stub.ReportLocations(batch(users, t0 + k * 100, 25))
            assert all(r.disposition for r in resp.results)
        assert await wait_rows(engine_settings.database_url, 5000) == (5000, 5000)
        deadline = time.monotonic() + 5
        while await buffered(engine_client):  # acknowledged entries are deleted
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert await count_rows(engine_settings.database_url) == (5000, 5000)


async def test_two_writer_replicas_share_the_work_without_double_writes(
    engine_settings: Settings,
) -> None:
    s = engine_settings.replace(min_report_interval_s=0.0, history_batch_size=100)
    merges = REGISTRY.get_sample_value("location_history_batches_total", {"path": "merge"}) or 0
    users = [f"rower{i}" for i in range(50)]
    t0 = now_ms() - 60_000
    async with (
        running(LocationApp(s)) as addr,
        running(LocationApp(s)),
        grpc.aio.insecure_channel(addr) as ch,
    ):
        stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)
        for k in range(4):
            await stub.ReportLocations(batch(users, t0 + k * 100, 10))
        assert await wait_rows(engine_settings.database_url, 2000) == (2000, 2000)
    after = REGISTRY.get_sample_value("location_history_batches_total", {"path": "merge"}) or 0
    assert after == merges  # no entry was delivered to both writers


async def test_postgres_outage_loses_nothing_and_duplicates_nothing(
    engine_settings: Settings, engine_client: Any, private_pg: infra.PostgresServer
) -> None:
    s = fast(engine_settings, database_url=private_pg.url)
    users = [f"runner{i}" for i in range(20)]
    t0 = now_ms() - 600_000
    sent = 0
    async with running(LocationApp(s)) as addr, grpc.aio.insecure_channel(addr) as ch:
        stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)

        async def send(rounds: int) -> None:
            nonlocal sent
            for _ in range(rounds):
                resp = await stub.ReportLocations(batch(users, t0 + sent, 5))
                assert not any(r.HasField("rejection") for r in resp.results)
                sent += 5  # 5 timestamps per user and round
                await asyncio.sleep(0.02)

        await send(10)
        await asyncio.to_thread(private_pg.stop)
        await send(20)  # reports keep succeeding while Postgres is down
        assert await buffered(engine_client) > 0
        await asyncio.sleep(1.0)  # the writers retry meanwhile
        await asyncio.to_thread(private_pg.start)
        await send(10)
        expected = len(users) * sent
        assert expected == 4000
        assert await wait_rows(private_pg.url, expected) == (expected, expected)
        await asyncio.sleep(0.5)
    assert await count_rows(private_pg.url) == (expected, expected)


async def test_crash_before_ack_is_recovered_without_duplicates(
    engine_settings: Settings, engine_client: Any
) -> None:
    users = [f"biker{i}" for i in range(10)]
    t0 = now_ms() - 60_000
    # Reports buffered while no writer runs.
    async with (
        running(LocationApp(fast(engine_settings), history_writer=False)) as addr,
        grpc.aio.insecure_channel(addr) as ch,
    ):
        stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)
        await stub.ReportLocations(batch(users, t0, 30))
    assert await buffered(engine_client) == 300
    # A writer reads everything, commits a part of it, and dies before acknowledging.
    read = []
    for stream in keys.history_streams():  # one stream per call: they are in different slots
        res: Any = await engine_client.xreadgroup(
            keys.HISTORY_GROUP, "dead-writer", {stream: ">"}, count=1000
        )
        read += [fields[b"r"] for _, entries in res for _, fields in entries]
    assert len(read) == 300
    async with await psycopg.AsyncConnection.connect(engine_settings.database_url) as conn:
        assert await store.write_batch(conn, read[:120]) == 120
        await conn.commit()
    # A live writer takes the dead writer's entries over.
    async with running(LocationApp(fast(engine_settings))):
        assert await wait_rows(engine_settings.database_url, 300) == (300, 300)
        deadline = time.monotonic() + 5
        while await buffered(engine_client):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        for stream in keys.history_streams():
            pending = await engine_client.xpending(stream, keys.HISTORY_GROUP)
            assert pending["pending"] == 0
    assert await count_rows(engine_settings.database_url) == (300, 300)


async def test_writer_cancelled_mid_batch_then_restarted(
    engine_settings: Settings, engine_client: Any
) -> None:
    users = [f"skier{i}" for i in range(50)]
    t0 = now_ms() - 60_000
    s = fast(engine_settings, history_batch_size=50)
    app = LocationApp(s)
    async with running(app) as addr, grpc.aio.insecure_channel(addr) as ch:
        stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)
        await stub.ReportLocations(batch(users, t0, 40))
        assert app.writer is not None
        await app.writer.stop()  # cancels the writer tasks wherever they are
        app.writer = None
    async with running(LocationApp(s)):
        assert await wait_rows(engine_settings.database_url, 2000) == (2000, 2000)


async def test_partitions_are_created_ahead_and_dropped_after_retention(
    settings: Settings,
) -> None:
    app = LocationApp(settings.replace(history_retention_days=30), history_writer=False)
    today = dt.datetime.now(dt.UTC).date()
    async with running(app):
        assert app.pool is not None
        async with app.pool.connection() as conn:
            parts = await store.partitions(conn)
            for offset in range(-1, 4):
                assert today + offset * DAY in parts
            old = today - 40 * DAY
            await store.ensure_partition(conn, old)
            rows = [
                ("old", dt.datetime.combine(old, dt.time(12), dt.UTC)),  # its own partition
                ("older", dt.datetime.combine(today - 35 * DAY, dt.time(1), dt.UTC)),  # default
                ("kept", dt.datetime.combine(today - 10 * DAY, dt.time(1), dt.UTC)),  # default
                ("early", dt.datetime.combine(today + 10 * DAY, dt.time(1), dt.UTC)),  # default
            ]
            for user, at in rows:
                await conn.execute(
                    "INSERT INTO location_history VALUES (%s, %s, 1.0, 2.0)", (user, at)
                )
            await conn.commit()
        await app.maintain_partitions()
        async with app.pool.connection() as conn:
            assert old not in await store.partitions(conn)
            cur = await conn.execute(
                "SELECT user_id, tableoid::regclass::text FROM location_history ORDER BY user_id"
            )
            assert await cur.fetchall() == [
                ("early", "location_history_default"),
                ("kept", "location_history_default"),
            ]
        # Days later: the partition of "early" is created; its row moves there.
        await app.maintain_partitions(today + 8 * DAY)
        async with app.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT tableoid::regclass::text FROM location_history WHERE user_id = 'early'"
            )
            assert await cur.fetchall() == [(store.partition_name(today + 10 * DAY),)]


async def test_full_buffer_drops_history_but_reports_succeed(
    engine_settings: Settings, engine_client: Any
) -> None:
    app = LocationApp(fast(engine_settings, history_buffer_max=5), history_writer=False)
    before = REGISTRY.get_sample_value("location_history_dropped_total") or 0.0
    async with running(app) as addr, grpc.aio.insecure_channel(addr) as ch:
        stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)
        await stub.ReportLocations(batch(["a", "b", "c", "d", "e"], now_ms() - 1000, 1))
        await app.buffer.refresh()
        assert not app.buffer.accepting
        resp = await stub.ReportLocations(batch(["f", "g"], now_ms() - 1000, 1))
        assert not any(r.HasField("rejection") for r in resp.results)
        assert await buffered(engine_client) == 5
        assert await engine_client.exists(keys.location("g"))
    after = REGISTRY.get_sample_value("location_history_dropped_total") or 0.0
    assert after - before == 2


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromMilliseconds(ms)
    return t


@pytest.fixture
async def history_of_ann(settings: Settings) -> AsyncIterator[tuple[str, int]]:
    """location_svc serving, with 10 history rows of ann 1 s apart (t0 .. t0+9 s)."""
    t0 = now_ms() - 3_600_000
    async with running(LocationApp(fast(settings))) as addr, grpc.aio.insecure_channel(addr) as ch:
        stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)
        req = location_ingest_service_pb2.ReportLocationsRequest(
            reports=[
                location_ingest_service_pb2.LocationReport(
                    user_id="ann",
                    fix=events_pb2.PositionFix(
                        latitude=float(i), longitude=1.0, recorded_at_ms=t0 + i * 1000
                    ),
                )
                for i in range(10)
            ]
        )
        await stub.ReportLocations(req)
        req.reports[0].user_id = "ben"
        await stub.ReportLocations(
            location_ingest_service_pb2.ReportLocationsRequest(reports=req.reports[:1])
        )
        assert await wait_rows(settings.database_url, 11) == (11, 11)
        yield addr, t0


async def test_list_history_pages_newest_first(history_of_ann: tuple[str, int]) -> None:
    addr, t0 = history_of_ann
    md = (("x-nearby-user-id", "ann"),)
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = location_service_pb2_grpc.LocationServiceStub(ch)
        seen: list[float] = []
        token = ""
        pages = 0
        while True:
            resp = await stub.ListLocationHistory(
                location_service_pb2.ListLocationHistoryRequest(page_size=3, page_token=token),
                metadata=md,
            )
            pages += 1
            seen += [loc.position.latitude for loc in resp.locations]
            assert all(loc.user_id == "ann" for loc in resp.locations)
            token = resp.next_page_token
            if not token:
                break
        assert seen == [float(i) for i in range(9, -1, -1)]
        assert pages == 4
        ranged = await stub.ListLocationHistory(
            location_service_pb2.ListLocationHistoryRequest(
                start_time=_ts(t0 + 2000), end_time=_ts(t0 + 5000), page_size=2
            ),
            metadata=md,
        )
        assert [loc.position.latitude for loc in ranged.locations] == [4.0, 3.0]
        assert ranged.locations[0].recorded_at.ToMilliseconds() == t0 + 4000
        rest = await stub.ListLocationHistory(
            location_service_pb2.ListLocationHistoryRequest(
                start_time=_ts(t0 + 2000),
                end_time=_ts(t0 + 5000),
                page_size=2,
                page_token=ranged.next_page_token,
            ),
            metadata=md,
        )
        assert [loc.position.latitude for loc in rest.locations] == [2.0]
        assert rest.next_page_token == ""
        for bad in (
            location_service_pb2.ListLocationHistoryRequest(page_size=-1),
            location_service_pb2.ListLocationHistoryRequest(page_token="garbage"),
            location_service_pb2.ListLocationHistoryRequest(page_token=ranged.next_page_token),
            location_service_pb2.ListLocationHistoryRequest(
                start_time=_ts(t0 + 5000), end_time=_ts(t0)
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListLocationHistory(bad, metadata=md)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
