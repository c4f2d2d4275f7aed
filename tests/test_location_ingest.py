"""location_svc hot path: validation, the cache, publishing, the rate cap and
identity rules (called directly, with the identity header Envoy would set)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from nearby.v1 import geo_pb2, location_service_pb2, location_service_pb2_grpc

from location_svc.app import LocationApp
from mesh import keys
from mesh.internal.v1 import (
    events_pb2,
    location_ingest_service_pb2,
    location_ingest_service_pb2_grpc,
)
from mesh.settings import Settings
from tests.support.redis import subscription
from tests.support.services import running, with_accounts

ACCEPTED = location_service_pb2.REPORT_DISPOSITION_ACCEPTED
COALESCED = location_service_pb2.REPORT_DISPOSITION_COALESCED
STALE = location_service_pb2.REPORT_DISPOSITION_STALE


def who(user: str) -> tuple[tuple[str, str], ...]:
    return (("x-nearby-user-id", user),)


def ts(ms: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromMilliseconds(ms)
    return t


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def report(lat: float, lng: float, at_ms: int | None = None) -> Any:
    req = location_service_pb2.ReportLocationRequest(
        position=geo_pb2.LatLng(latitude=lat, longitude=lng)
    )
    if at_ms is not None:
        req.recorded_at.CopyFrom(ts(at_ms))
    return req


USERS = ("alice", "bob", "carol", "dave", "erin", "gina", "hank", "a")
"""Callers of the unary ReportLocation below (each needs an account)."""


@pytest.fixture
async def known(engine_settings: Settings) -> AsyncIterator[Settings]:
    """engine_settings with friend_svc running and holding USERS' accounts."""
    async with with_accounts(engine_settings, *USERS) as s:
        yield s


@pytest.fixture
async def channel(known: Settings) -> AsyncIterator[grpc.aio.Channel]:
    app = LocationApp(
        known.replace(min_report_interval_s=0.0, inactivity_timeout_s=30.0),
        history_writer=False,
    )
    async with running(app) as addr, grpc.aio.insecure_channel(addr) as ch:
        yield ch


async def cached(r: Any, user: str) -> events_pb2.PositionFix | None:
    value: Any = await r.hget(keys.location(user), "v")
    return None if value is None else events_pb2.PositionFix.FromString(value)


async def redis_state(r: Any) -> tuple[list[bytes], list[int]]:
    """Every key and the length of every history stream."""
    streams = [await r.xlen(s) for s in keys.history_streams()]
    names: Any = await r.keys()
    return sorted(names), streams


async def next_event(sub: Any, wait_s: float = 2.0) -> events_pb2.LocationEvent | None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        msg = await sub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is not None:
            return events_pb2.LocationEvent.FromString(msg["data"])
    return None


async def test_report_caches_publishes_and_touches_presence(
    channel: grpc.aio.Channel, engine_client: Any
) -> None:
    stub = location_service_pb2_grpc.LocationServiceStub(channel)
    sub: Any = subscription(engine_client)
    await sub.subscribe(keys.location_channel("alice"))
    before = now_ms()
    resp = await stub.ReportLocation(report(52.52, 13.405), metadata=who("alice"))
    assert resp.disposition == ACCEPTED
    assert resp.location.user_id == "alice"
    assert resp.location.position.latitude == 52.52
    assert resp.location.recorded_at.ToMilliseconds() >= before  # missing = server time
    event = await next_event(sub)
    assert event is not None and event.user_id == "alice"
    assert event.WhichOneof("kind") == "moved"
    assert (event.moved.latitude, event.moved.longitude) == (52.52, 13.405)
    fix = await cached(engine_client, "alice")
    assert fix is not None and fix.recorded_at_ms == resp.location.recorded_at.ToMilliseconds()
    ttl = await engine_client.pttl(keys.location("alice"))
    assert 25_000 < ttl <= 30_000
    score = await engine_client.zscore(keys.presence_index_of("alice"), "alice")
    assert score is not None and score >= before
    await sub.aclose()


@pytest.mark.parametrize(
    ("lat", "lng", "field"),
    [
        (math.nan, 0.0, "position.latitude"),
        (0.0, math.nan, "position.longitude"),
        (math.inf, 0.0, "position.latitude"),
        (0.0, -math.inf, "position.longitude"),
        (90.0001, 0.0, "position.latitude"),
        (-91.0, 0.0, "position.latitude"),
        (0.0, 180.5, "position.longitude"),
        (0.0, -181.0, "position.longitude"),
    ],
)
async def test_bad_coordinates_are_rejected_and_change_nothing(
    channel: grpc.aio.Channel, engine_client: Any, lat: float, lng: float, field: str
) -> None:
    stub = location_service_pb2_grpc.LocationServiceStub(channel)
    before = await redis_state(engine_client)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReportLocation(report(lat, lng), metadata=who("bob"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
    assert await redis_state(engine_client) == before
    assert not await engine_client.exists(keys.location("bob"))


@pytest.mark.parametrize(
    ("offset_ms", "problem"),
    [(60_000, "future"), (-31 * 86_400_000, "retention")],
)
async def test_bad_timestamps_are_rejected_and_change_nothing(
    channel: grpc.aio.Channel, engine_client: Any, offset_ms: int, problem: str
) -> None:
    stub = location_service_pb2_grpc.LocationServiceStub(channel)
    before = await redis_state(engine_client)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReportLocation(report(1.0, 1.0, now_ms() + offset_ms), metadata=who("bob"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert "recorded_at" in details and problem in details
    assert await redis_state(engine_client) == before
    assert not await engine_client.exists(keys.location("bob"))


async def test_small_clock_skew_is_allowed(channel: grpc.aio.Channel) -> None:
    stub = location_service_pb2_grpc.LocationServiceStub(channel)
    resp = await stub.ReportLocation(report(1.0, 1.0, now_ms() + 3_000), metadata=who("bob"))
    assert resp.disposition == ACCEPTED


async def test_missing_position_is_rejected(channel: grpc.aio.Channel) -> None:
    stub = location_service_pb2_grpc.LocationServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReportLocation(location_service_pb2.ReportLocationRequest(), metadata=who("a"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "position" in (err.value.details() or "")


async def test_out_of_order_update_never_overwrites_newer(
    channel: grpc.aio.Channel, engine_client: Any
) -> None:
    stub = location_service_pb2_grpc.LocationServiceStub(channel)
    sub: Any = subscription(engine_client)
    await sub.subscribe(keys.location_channel("carol"))
    t = now_ms()
    first = await stub.ReportLocation(report(10.0, 10.0, t), metadata=who("carol"))
    assert first.disposition == ACCEPTED
    assert await next_event(sub) is not None
    late = await stub.ReportLocation(report(11.0, 11.0, t - 5_000), metadata=who("carol"))
    assert late.disposition == STALE
    fix = await cached(engine_client, "carol")
    assert fix is not None and (fix.latitude, fix.recorded_at_ms) == (10.0, t)
    assert await next_event(sub, wait_s=0.5) is None  # a stale update is not published
    assert await engine_client.xlen(keys.history_stream_of("carol")) == 2  # but kept in history
    await sub.aclose()


async def test_cache_expires_after_the_inactivity_timeout(
    known: Settings, engine_client: Any
) -> None:
    app = LocationApp(known.replace(inactivity_timeout_s=1.0), history_writer=False)
    async with running(app) as addr, grpc.aio.insecure_channel(addr) as ch:
        stub = location_service_pb2_grpc.LocationServiceStub(ch)
        internal = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)
        await stub.ReportLocation(report(1.0, 2.0), metadata=who("dave"))
        got = await internal.BatchGetLocations(
            location_ingest_service_pb2.BatchGetLocationsRequest(user_ids=["dave"])
        )
        assert [loc.user_id for loc in got.locations] == ["dave"]
        deadline = time.monotonic() + 5
        while await engine_client.exists(keys.location("dave")):
            assert time.monotonic() < deadline, "the cache entry did not expire"
            await asyncio.sleep(0.1)
        got = await internal.BatchGetLocations(
            location_ingest_service_pb2.BatchGetLocationsRequest(user_ids=["dave"])
        )
        assert list(got.locations) == []


async def test_rate_cap_coalesces_extra_updates(known: Settings, engine_client: Any) -> None:
    app = LocationApp(known.replace(min_report_interval_s=60.0), history_writer=False)
    async with running(app) as addr, grpc.aio.insecure_channel(addr) as ch:
        stub = location_service_pb2_grpc.LocationServiceStub(ch)
        sub: Any = subscription(engine_client)
        await sub.subscribe(keys.location_channel("erin"))
        t = now_ms()
        dispositions = []
        for i in range(5):
            resp = await stub.ReportLocation(report(1.0 + i, 1.0, t + i), metadata=who("erin"))
            dispositions.append(resp.disposition)
        assert dispositions == [ACCEPTED] + [COALESCED] * 4
        fix = await cached(engine_client, "erin")
        assert fix is not None and fix.latitude == 5.0  # the cache keeps the newest
        published = []
        while (event := await next_event(sub, wait_s=0.5)) is not None:
            published.append(event.moved.latitude)
        assert published == [1.0]
        assert await engine_client.xlen(keys.history_stream_of("erin")) == 1
        await sub.aclose()


async def test_hidden_user_is_cached_but_not_published(
    channel: grpc.aio.Channel, engine_client: Any
) -> None:
    stub = location_service_pb2_grpc.LocationServiceStub(channel)
    await engine_client.set(keys.hidden("gina"), b"1")
    sub: Any = subscription(engine_client)
    await sub.subscribe(keys.location_channel("gina"))
    resp = await stub.ReportLocation(report(3.0, 4.0), metadata=who("gina"))
    assert resp.disposition == ACCEPTED
    assert await next_event(sub, wait_s=0.5) is None
    assert await cached(engine_client, "gina") is not None
    assert await engine_client.xlen(keys.history_stream_of("gina")) == 1
    await sub.aclose()


async def test_report_locations_validates_each_report(
    channel: grpc.aio.Channel, engine_client: Any
) -> None:
    stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(channel)
    t = now_ms()
    req = location_ingest_service_pb2.ReportLocationsRequest(
        reports=[
            location_ingest_service_pb2.LocationReport(
                user_id="u1", fix=events_pb2.PositionFix(latitude=1.0, longitude=2.0)
            ),
            location_ingest_service_pb2.LocationReport(
                user_id="u2", fix=events_pb2.PositionFix(latitude=95.0, longitude=2.0)
            ),
            location_ingest_service_pb2.LocationReport(
                user_id="", fix=events_pb2.PositionFix(latitude=1.0, longitude=2.0)
            ),
            location_ingest_service_pb2.LocationReport(
                user_id="u3",
                fix=events_pb2.PositionFix(latitude=1.0, longitude=2.0, recorded_at_ms=t + 60_000),
            ),
            location_ingest_service_pb2.LocationReport(
                user_id="u4",
                fix=events_pb2.PositionFix(latitude=5.0, longitude=6.0, recorded_at_ms=t),
            ),
        ]
    )
    resp = await stub.ReportLocations(req)
    r = resp.results
    assert [x.disposition for x in r] == [ACCEPTED, 0, 0, 0, ACCEPTED]
    assert not r[0].HasField("rejection") and r[0].fix.recorded_at_ms >= t
    # structured rejections: the field relative to the report, and a description
    # without it (the caller says it in its own client's words)
    rejections = [(x.rejection.field, x.rejection.reason) for x in r[1:4]]
    assert rejections == [
        ("fix.latitude", "INVALID_FIELD"),
        ("user_id", "INVALID_FIELD"),
        ("fix.recorded_at_ms", "INVALID_FIELD"),
    ]
    assert "outside [-90, 90]" in r[1].rejection.description
    assert "in the future" in r[3].rejection.description
    assert "fix" not in r[3].rejection.description
    assert r[4].fix.recorded_at_ms == t
    assert await cached(engine_client, "u2") is None
    assert await cached(engine_client, "u3") is None
    assert await cached(engine_client, "u4") is not None


async def test_scripts_are_reloaded_after_a_script_flush(
    channel: grpc.aio.Channel, engine_client: Any
) -> None:
    stub = location_service_pb2_grpc.LocationServiceStub(channel)
    await stub.ReportLocation(report(1.0, 1.0), metadata=who("hank"))
    await engine_client.script_flush()
    resp = await stub.ReportLocation(report(2.0, 2.0), metadata=who("hank"))
    assert resp.disposition == ACCEPTED


async def test_identity_rules(channel: grpc.aio.Channel) -> None:
    stub = location_service_pb2_grpc.LocationServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReportLocation(report(1.0, 1.0))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListLocationHistory(location_service_pb2.ListLocationHistoryRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListLocationHistory(
            location_service_pb2.ListLocationHistoryRequest(user_id="bob"), metadata=who("alice")
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    own = await stub.ListLocationHistory(
        location_service_pb2.ListLocationHistoryRequest(user_id="alice"), metadata=who("alice")
    )
    assert list(own.locations) == []
