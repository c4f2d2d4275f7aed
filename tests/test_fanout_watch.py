"""NearbyService.Watch on the real mesh (in-process, real Redis and Postgres),
called directly with the identity header: the same list as Connect, driven by
unary ReportLocation calls; no location first; a Redis loss; heartbeats; drain;
the client going away."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis
from nearby.v1 import location_service_pb2_grpc as lpb_grpc
from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc

from fanout_svc.app import FanoutApp
from fanout_svc.hub import loc_channel
from mesh.server import Runner
from mesh.settings import Settings
from tests.support.fanout import (
    ORIGIN,
    Mesh,
    WatchStream,
    fast_settings,
    mesh,
    offset,
    until,
)


@pytest.fixture
def settings(engine_settings: Settings) -> Settings:
    """Every test runs on both Redis engines (standalone, then the shared cluster)."""
    return engine_settings


@pytest.fixture
async def m(settings: Settings) -> AsyncIterator[Mesh]:
    async with mesh(fast_settings(settings, heartbeat_s=0.5)) as value:
        yield value


async def test_watch_follows_friends_and_my_own_reports(m: Mesh) -> None:
    a, b, c = await m.users("a", "b", "c")
    await m.befriend(a, b)
    await m.befriend(a, c)
    sb = await m.connect(b, *offset(*ORIGIN, 2000))  # friends on Connect or Watch alike
    sc = await m.watch(c, *offset(*ORIGIN, 20000))
    sa = await m.watch(a, *ORIGIN)
    snap = (await sa.wait_for(lambda s: s.snapshots()))[0]
    assert [f.user_id for f in snap.friends] == [b]
    assert snap.total_size == 1 and snap.radius_meters == pytest.approx(8047.0)
    assert snap.friends[0].distance_meters == pytest.approx(2000, abs=5)
    assert snap.friends[0].display_name == b.title()

    await sc.move(*offset(*ORIGIN, 3000))  # a Watch user's report reaches its friends
    upd = await sa.wait_for(lambda s: s.updates(c))
    assert upd[-1].distance_meters == pytest.approx(3000, abs=5)
    await sb.move(*offset(*ORIGIN, 9000))
    gone = await sa.wait_for(lambda s: s.gones(b))
    assert gone[-1].reason == pb.FRIEND_GONE_REASON_OUT_OF_RANGE

    # A reports a position next to B: B enters A's list without moving
    n = len(sa.updates(b))
    await sa.move(*offset(*ORIGIN, 8500))
    upd = await sa.wait_for(lambda s: s.updates(b)[n:])
    assert upd[0].distance_meters == pytest.approx(500, abs=5)
    # and C (5.5 km from A now) is still inside: no event for it
    assert not sa.gones(c)
    # ghost mode of a friend: gone HIDDEN, as on Connect
    await m.set_hidden(b, True)
    gone = await sa.wait_for(lambda s: s.gones(b)[1:])
    assert gone[-1].reason == pb.FRIEND_GONE_REASON_HIDDEN
    kinds = {msg.WhichOneof("kind") for msg in sa.messages}
    assert kinds <= {"snapshot", "events", "heartbeat"}
    for s in (sa, sb, sc):
        await s.close()
    await until(lambda: not m.fanout_app.streams.sessions)
    await until(lambda: m.fanout_app.hub.channel_count() == 0)


async def test_watch_without_a_location_is_failed_precondition(m: Mesh) -> None:
    (a,) = await m.users("a")
    s = WatchStream(m.nearby_stub(), a, locations=None)
    await s.open(math.nan, math.nan)
    await s.done.wait()
    assert s.error is not None and s.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ReportLocation" in (s.error.details() or "")
    assert m.fanout_app.hub.channel_count() == 0  # nothing left behind
    # no identity
    s = WatchStream(m.nearby_stub(), a, metadata=[], locations=None)
    await s.open(math.nan, math.nan)
    await s.done.wait()
    assert s.error is not None and s.error.code() == grpc.StatusCode.UNAUTHENTICATED
    # once reported, the same call works
    await m.report({a: ORIGIN})
    s = WatchStream(m.nearby_stub(), a, locations=None)
    await s.open(math.nan, math.nan)
    snap = (await s.wait_for(lambda s: s.snapshots()))[0]
    assert snap.total_size == 0
    # an idle Watch stream gets heartbeats
    beats = await s.wait_for(
        lambda s: [x for x in s.messages if x.WhichOneof("kind") == "heartbeat"][1:]
    )
    assert beats[0].heartbeat.server_time.seconds > 0
    await s.close()


async def test_watch_resyncs_my_position_after_a_redis_loss(
    redis_url: str, database_url: str, redis_client: aioredis.Redis
) -> None:
    """Standalone Redis only: it kills the hub's pub/sub connection."""
    base = Settings(redis_url=redis_url, database_url=database_url)
    async with mesh(fast_settings(base)) as m:
        a, b = await m.users("a", "b")
        await m.befriend(a, b)
        sb = await m.connect(b, *offset(*ORIGIN, 12000))
        sa = await m.watch(a, *ORIGIN)
        await sa.wait_for(lambda s: s.snapshots())
        hub = m.fanout_app.hub
        assert hub.refcount(loc_channel(a)) == 2  # B watches A, and so does A (its own moves)
        reconnects = hub.reconnects
        assert await redis_client.client_kill_filter(_type="pubsub") >= 1
        await sa.move(*offset(*ORIGIN, 11000))  # may be published while the hub is away
        await until(lambda: hub.reconnects == reconnects + 1)
        # the re-read own position brings B (1 km away now) in
        await sa.wait_for(
            lambda s: (
                any(f.user_id == b for f in s.snapshots()[-1].friends)
                or any(abs(u.distance_meters - 1000) < 3 for u in s.updates(b))
            )
        )
        for s in (sa, sb):
            await s.close()


async def test_watch_drain_sends_reconnect_then_unavailable(m: Mesh) -> None:
    settings = m.settings.replace(drain_s=0.5)
    runner = Runner(FanoutApp(settings), "127.0.0.1", 0, grace_s=2.0)
    port = await runner.start()
    try:
        (a,) = await m.users("a")
        stub = pb_grpc.NearbyServiceStub(m.channel(f"127.0.0.1:{port}"))
        locations = lpb_grpc.LocationServiceStub(m.channel(m.location))
        s = WatchStream(stub, a, locations=locations)
        await s.open(*ORIGIN)
        await s.wait_for(lambda s: s.snapshots())
        await runner.stop()
        await s.done.wait()
        assert s.messages[-1].WhichOneof("kind") == "reconnect"
        assert s.messages[-1].reconnect.retry_after.ToTimedelta().total_seconds() >= 0
        assert s.error is not None and s.error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await runner.stop()


async def test_watch_too_far_behind_gets_reconnect(settings: Settings) -> None:
    """The slow-client rule of Connect (FANOUT_QUEUE_MAX), on a Watch stream."""
    async with mesh(fast_settings(settings, fanout_queue_max=5)) as m:
        me, *friends = await m.users("me", *[f"f{i}" for i in range(8)])
        for f in friends:
            await m.befriend(me, f)
        s = await m.watch(me, *ORIGIN)
        await s.wait_for(lambda s: s.snapshots())
        # eight friends appear within one flush window: more than the queue allows
        await m.report({f: offset(*ORIGIN, 100 + i) for i, f in enumerate(friends)})
        await s.done.wait()
        assert s.messages[-1].WhichOneof("kind") == "reconnect"
        assert s.error is not None and s.error.code() == grpc.StatusCode.UNAVAILABLE
        assert "fell behind" in (s.error.details() or "")
        await until(lambda: not m.fanout_app.streams.sessions)


async def test_watch_follows_my_moves_in_ghost_mode(m: Mesh) -> None:
    """Nothing of a hidden caller is published, yet their own list follows them
    (hidden while Watch is open, and hidden before it opened); friends see nothing."""
    a, b, c = await m.users("a", "b", "c")
    await m.befriend(a, b)
    await m.befriend(c, b)
    sb = await m.connect(b, *offset(*ORIGIN, 12000))
    sa = await m.watch(a, *ORIGIN)
    await sa.wait_for(lambda s: s.snapshots())
    await m.set_hidden(a, True)
    await sa.move(*offset(*ORIGIN, 11000))  # hidden: not published
    upd = await sa.wait_for(lambda s: s.updates(b), within=15)
    assert upd[0].distance_meters == pytest.approx(1000, abs=5)
    assert sb.updates(a) == []  # B never learns where A is

    await m.set_hidden(c, True)
    sc = await m.watch(c, *offset(*ORIGIN, 11500))
    snap = (await sc.wait_for(lambda s: s.snapshots()))[0]
    assert [f.user_id for f in snap.friends] == [b]
    await sc.move(*ORIGIN)  # 12 km from B: out of range
    gone = await sc.wait_for(lambda s: s.gones(b), within=15)
    assert gone[0].reason == pb.FRIEND_GONE_REASON_OUT_OF_RANGE
    # visible again: the next report is published, and followed as usual
    await m.set_hidden(c, False)
    await sc.move(*offset(*ORIGIN, 11900))
    upd = await sc.wait_for(lambda s: s.updates(b), within=15)
    assert upd[-1].distance_meters == pytest.approx(100, abs=5)
    await sb.wait_for(lambda s: s.updates(c))  # and B sees C again
    assert sb.updates(a) == []
    for s in (sa, sb, sc):
        await s.close()
