"""presence_svc: BatchGetPresence and the inactivity sweeper (offline events)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import grpc
import pytest

from location_svc.app import LocationApp
from mesh import keys
from mesh.internal.v1 import (
    events_pb2,
    location_ingest_service_pb2,
    location_ingest_service_pb2_grpc,
    presence_query_service_pb2,
    presence_query_service_pb2_grpc,
)
from mesh.redis import RedisEngine
from mesh.settings import Settings
from presence_svc.app import PresenceApp
from presence_svc.sweeper import Sweeper
from tests.support.redis import subscription
from tests.support.services import running

TIMEOUT_S = 1.0


def report(users: list[str]) -> location_ingest_service_pb2.ReportLocationsRequest:
    return location_ingest_service_pb2.ReportLocationsRequest(
        reports=[
            location_ingest_service_pb2.LocationReport(
                user_id=u, fix=events_pb2.PositionFix(latitude=1.0, longitude=2.0)
            )
            for u in users
        ]
    )


def short(engine_settings: Settings) -> Settings:
    return engine_settings.replace(
        inactivity_timeout_s=TIMEOUT_S, presence_sweep_interval_s=0.1, min_report_interval_s=0.0
    )


async def offline_events(sub: Any, until: float) -> list[tuple[float, events_pb2.LocationEvent]]:
    """(arrival time, event) of the offline events received before `until`."""
    out = []
    while time.monotonic() < until:
        msg = await sub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if msg is not None:
            event = events_pb2.LocationEvent.FromString(msg["data"])
            if event.WhichOneof("kind") == "offline":
                out.append((time.monotonic(), event))
    return out


async def test_batch_get_presence(engine_settings: Settings, engine_client: Any) -> None:
    s = engine_settings.replace(inactivity_timeout_s=TIMEOUT_S)
    async with (
        running(PresenceApp(s, sweeper=False)) as paddr,
        running(LocationApp(s, history_writer=False)) as laddr,
        grpc.aio.insecure_channel(paddr) as pch,
        grpc.aio.insecure_channel(laddr) as lch,
    ):
        ingest = location_ingest_service_pb2_grpc.LocationIngestServiceStub(lch)
        query = presence_query_service_pb2_grpc.PresenceQueryServiceStub(pch)
        await ingest.ReportLocations(report(["old"]))
        await asyncio.sleep(TIMEOUT_S + 0.2)
        before = time.time_ns() // 1_000_000
        await ingest.ReportLocations(report(["fresh", "shy"]))
        await engine_client.set(keys.hidden("shy"), b"1")
        resp = await query.BatchGetPresence(
            presence_query_service_pb2.BatchGetPresenceRequest(
                user_ids=["fresh", "old", "never", "shy"]
            )
        )
        got = {p.user_id: p for p in resp.presences}
        assert [p.user_id for p in resp.presences] == ["fresh", "old", "never", "shy"]
        assert got["fresh"].active and got["fresh"].last_active_ms >= before
        assert not got["fresh"].hidden
        assert not got["old"].active and got["old"].last_active_ms == 0
        assert not got["never"].active and got["never"].last_active_ms == 0
        assert got["shy"].active and got["shy"].hidden
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await query.BatchGetPresence(
                presence_query_service_pb2.BatchGetPresenceRequest(user_ids=["x"] * 5001)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_offline_event_after_the_timeout_and_not_before(
    engine_settings: Settings, engine_client: Any
) -> None:
    s = short(engine_settings)
    async with (
        running(PresenceApp(s)),
        running(LocationApp(s, history_writer=False)) as laddr,
        grpc.aio.insecure_channel(laddr) as lch,
    ):
        ingest = location_ingest_service_pb2_grpc.LocationIngestServiceStub(lch)
        sub: Any = subscription(engine_client)
        await sub.subscribe(keys.location_channel("walker"), keys.location_channel("sitter"))
        sitter_last = time.monotonic()
        await ingest.ReportLocations(report(["sitter"]))
        got: list[tuple[float, events_pb2.LocationEvent]] = []
        # walker keeps reporting for 2.5 timeouts: never reported offline meanwhile
        while time.monotonic() - sitter_last < 2.5 * TIMEOUT_S:
            last_report = time.monotonic()
            await ingest.ReportLocations(report(["walker"]))
            got += await offline_events(sub, time.monotonic() + 0.3)
        assert all(e.user_id == "sitter" for _, e in got)
        got += await offline_events(sub, last_report + TIMEOUT_S + 4.0)
        by_user = Counter(e.user_id for _, e in got)
        assert by_user["walker"] >= 1 and by_user["sitter"] >= 1
        walker_at = min(t for t, e in got if e.user_id == "walker")
        assert last_report + TIMEOUT_S - 0.1 <= walker_at <= last_report + TIMEOUT_S + 3.0
        sitter_at = min(t for t, e in got if e.user_id == "sitter")
        assert sitter_last + TIMEOUT_S - 0.1 <= sitter_at <= sitter_last + TIMEOUT_S + 3.0
        event = next(e for _, e in got if e.user_id == "walker")
        assert event.offline.last_active_ms > 0
        assert await engine_client.zcard(keys.presence_index_of("walker")) == 0
        await sub.aclose()


async def test_two_sweepers_miss_nobody(engine_settings: Settings, engine_client: Any) -> None:
    s = short(engine_settings)
    users = [f"user{i}" for i in range(300)]
    async with (
        running(PresenceApp(s)),
        running(PresenceApp(s)),
        running(LocationApp(s, history_writer=False)) as laddr,
        grpc.aio.insecure_channel(laddr) as lch,
    ):
        ingest = location_ingest_service_pb2_grpc.LocationIngestServiceStub(lch)
        sub: Any = subscription(engine_client)
        await sub.subscribe(*[keys.location_channel(u) for u in users])
        await ingest.ReportLocations(report(users))
        reported = time.monotonic()
        seen: set[str] = set()
        deadline = reported + TIMEOUT_S + 5.0
        while len(seen) < len(users) and time.monotonic() < deadline:
            got = await offline_events(sub, time.monotonic() + 0.2)
            for t, e in got:
                assert t >= reported + TIMEOUT_S - 0.1
                seen.add(e.user_id)
        assert seen == set(users)
        total = sum(
            [await engine_client.zcard(keys.presence_index(k)) for k in range(keys.PRESENCE_SHARDS)]
        )
        assert total == 0
        await sub.aclose()


async def test_crash_between_publish_and_remove_repeats_the_event(
    engine: RedisEngine, engine_client: Any
) -> None:
    """The user stays in the index until removed, so the next sweep publishes again."""
    sweeper = Sweeper(engine, TIMEOUT_S, 0.1)
    stale = time.time_ns() // 1_000_000 - 5_000
    await engine_client.zadd(keys.presence_index_of("pat"), {"pat": stale})
    sub: Any = subscription(engine_client)
    await sub.subscribe(keys.location_channel("pat"))

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("sweeper died")

    real_remove = sweeper._remove_published
    sweeper._remove_published = crash  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await sweeper.sweep()
    assert await engine_client.zscore(keys.presence_index_of("pat"), "pat") == stale
    sweeper._remove_published = real_remove  # type: ignore[method-assign]
    assert await sweeper.sweep() == 1
    got = await offline_events(sub, time.monotonic() + 0.5)
    assert [e.user_id for _, e in got] == ["pat", "pat"]
    assert await engine_client.zscore(keys.presence_index_of("pat"), "pat") is None
    await sub.aclose()
