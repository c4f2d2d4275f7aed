"""Fan-out robustness: offline friends, slow clients, refcounts, hub resync
after a Redis connection loss, bad input, heartbeats and drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis
from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc
from prometheus_client import generate_latest

from fanout_svc import metrics
from fanout_svc.app import FanoutApp
from fanout_svc.hub import loc_channel
from mesh.server import Runner
from mesh.settings import Settings
from tests.support.fanout import ORIGIN, Mesh, Stream, fast_settings, mesh, offset, until, who


@pytest.fixture
async def m(settings: Settings) -> AsyncIterator[Mesh]:
    async with mesh(fast_settings(settings)) as value:
        yield value


async def _no_streams(m: Mesh) -> None:
    await until(lambda: not m.fanout_app.streams.sessions)


async def test_inactive_friend_is_gone_offline(settings: Settings) -> None:
    async with mesh(fast_settings(settings, inactivity_timeout_s=1.5)) as m:
        a, b = await m.users("a", "b")
        await m.befriend(a, b)
        sb = await m.connect(b, *offset(*ORIGIN, 700))
        sa = await m.connect(a, *ORIGIN)
        snap = (await sa.wait_for(lambda s: s.snapshots()))[0]
        assert [f.user_id for f in snap.friends] == [b]
        gone = await sa.wait_for(lambda s: s.gones(b), within=15)
        assert [g.reason for g in gone] == [pb.FRIEND_GONE_REASON_OFFLINE]
        # back: B reports again and reappears
        await sb.move(*offset(*ORIGIN, 600))
        await sa.wait_for(lambda s: s.updates(b))
        for s in (sa, sb):
            await s.close()


async def test_refcounted_subscriptions_return_to_zero(
    m: Mesh, redis_client: aioredis.Redis
) -> None:
    a, b, c = await m.users("a", "b", "c")
    await m.befriend(a, b)
    await m.befriend(a, c)
    await m.befriend(b, c)
    hub = m.fanout_app.hub
    streams = [await m.connect(u, *offset(*ORIGIN, 100 * i)) for i, u in enumerate((a, b, c))]
    for s in streams:
        await s.wait_for(lambda s: s.snapshots())
    # each of the three is watched by the two others: one Redis subscription each
    for u in (a, b, c):
        assert hub.refcount(loc_channel(u)) == 2
    assert hub.channel_count() == 6  # 3 loc + 3 inbox
    numsub = dict(await redis_client.pubsub_numsub(*(loc_channel(u) for u in (a, b, c))))
    assert set(numsub.values()) == {1}
    for s in streams:
        await s.close()
    await _no_streams(m)
    assert hub.channel_count() == 0

    async def no_channels() -> bool:
        return not await redis_client.pubsub_channels()

    await until(no_channels)


async def test_hub_resyncs_after_redis_connection_kill(
    m: Mesh, redis_client: aioredis.Redis
) -> None:
    a, b = await m.users("a", "b")
    await m.befriend(a, b)
    sb = await m.connect(b, *offset(*ORIGIN, 700))
    sa = await m.connect(a, *ORIGIN)
    await sa.wait_for(lambda s: s.snapshots())
    reconnects = m.fanout_app.hub.reconnects
    killed = await redis_client.client_kill_filter(_type="pubsub")
    assert killed >= 1
    await sb.move(*offset(*ORIGIN, 1500))  # may be published while the hub is away
    snaps = await sa.wait_for(lambda s: s.snapshots()[1:])
    assert m.fanout_app.hub.reconnects == reconnects + 1
    # the fresh snapshot or a later update carries B's new position
    await sa.wait_for(
        lambda s: (
            any(abs(f.distance_meters - 1500) < 3 for f in snaps[-1].friends)
            or any(abs(u.distance_meters - 1500) < 3 for u in s.updates(b))
        )
    )
    # subscriptions are back: live updates flow again
    await sb.move(*offset(*ORIGIN, 2500))
    await sa.wait_for(lambda s: any(abs(u.distance_meters - 2500) < 3 for u in s.updates(b)))
    for s in (sa, sb):
        await s.close()


async def test_slow_client_does_not_delay_others_and_is_ended(settings: Settings) -> None:
    async with mesh(fast_settings(settings, fanout_stall_s=3.0)) as m:
        slow, fast, *movers = await m.users("slow", "fast", *[f"m{i}" for i in range(100)])
        for u in movers:
            await m.befriend(slow, u)
            await m.befriend(fast, u)
        # a client with a fixed 64 KiB receive window (no BDP growth) that never reads
        small = grpc.aio.insecure_channel(m.fanout, options=[("grpc.http2.bdp_probe", 0)])
        m.channels.append(small)
        s_slow = Stream(pb_grpc.NearbyServiceStub(small), slow)
        await s_slow.open(*ORIGIN, read=False)
        s_fast = await m.connect(fast, *ORIGIN)
        await s_fast.wait_for(lambda s: s.snapshots())
        streams = m.fanout_app.streams
        await until(lambda: len(streams.sessions) == 2)
        session = next(s for s in streams.sessions if s.user_id == slow)
        drops_before = metrics.HOT.drops
        stalled_before = metrics.FELL_BEHIND.labels("stalled")._value.get()
        step = 0
        # move everyone until the slow client's writes block
        async with asyncio.timeout(30):
            while not (session.write_started and time.monotonic() - session.write_started > 0.3):
                step += 1
                await m.report({u: offset(*ORIGIN, 100 + step, i) for i, u in enumerate(movers)})
                await asyncio.sleep(0.01)
        blocked_since = session.write_started
        # while it is blocked, the other client still gets every friend's newest position
        step += 1
        await m.report({u: offset(*ORIGIN, 100 + step, i) for i, u in enumerate(movers)})
        last = movers[-1]
        await s_fast.wait_for(
            lambda s: any(
                abs(u.distance_meters - abs(complex(100 + step, 99))) < 2 for u in s.updates(last)
            )
        )
        # the slow stream is still blocked on the same write: the fast one was not held up
        assert session.write_started == blocked_since
        assert len(session.view.owed) <= len(movers)  # bounded: one entry per friend
        for _ in range(3):
            step += 1
            await m.report({u: offset(*ORIGIN, 100 + step, i) for i, u in enumerate(movers)})
        assert metrics.HOT.drops > drops_before
        # after FANOUT_STALL_S the server gives up on it; once it reads, it
        # finds the status telling it to reconnect
        stalled = metrics.FELL_BEHIND.labels("stalled")
        await until(lambda: stalled._value.get() > stalled_before, within=20)
        s_slow.start_reading()
        async with asyncio.timeout(20):
            await s_slow.done.wait()
        assert s_slow.error is not None
        assert s_slow.error.code() == grpc.StatusCode.UNAVAILABLE
        assert "fell behind" in (s_slow.error.details() or "")
        assert not s_fast.done.is_set()
        await s_fast.close()


async def test_queue_over_limit_gets_reconnect(settings: Settings) -> None:
    async with mesh(fast_settings(settings, fanout_queue_max=5)) as m:
        me, *friends = await m.users("me", *[f"f{i}" for i in range(8)])
        for f in friends:
            await m.befriend(me, f)
        s = await m.connect(me, *ORIGIN)
        await s.wait_for(lambda s: s.snapshots())
        # eight friends appear within one flush window: more than the queue allows
        await m.report({f: offset(*ORIGIN, 100 + i) for i, f in enumerate(friends)})
        async with asyncio.timeout(10):
            await s.done.wait()
        assert s.messages[-1].WhichOneof("kind") == "reconnect"
        assert s.messages[-1].reconnect.retry_after.ToTimedelta().total_seconds() > 0
        assert s.error is not None and s.error.code() == grpc.StatusCode.UNAVAILABLE
        assert "reconnect" in (s.error.details() or "")


async def test_bad_input_and_identity(m: Mesh) -> None:
    (a,) = await m.users("a")
    stub = m.nearby_stub()
    # first message must be a location
    call = stub.Connect(metadata=who(a))
    await call.write(pb.ConnectRequest(page_request=pb.PageRequest()))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message" in (err.value.details() or "")
    # bad coordinates name the field
    s = Stream(stub, a)
    await s.open(95.0, 0.0)
    await s.done.wait()
    assert s.error is not None and s.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "location.position.latitude" in (s.error.details() or "")
    # no identity
    s = Stream(stub, a, metadata=[])
    await s.open(*ORIGIN)
    await s.done.wait()
    assert s.error is not None and s.error.code() == grpc.StatusCode.UNAUTHENTICATED
    # a later invalid location ends the stream with INVALID_ARGUMENT
    s = await m.connect(a, *ORIGIN)
    await s.wait_for(lambda s: s.snapshots())
    await s.move(0.0, 200.0)
    await s.done.wait()
    assert s.error is not None and s.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "location.position.longitude" in (s.error.details() or "")
    # unary: no identity, bad page size or token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListNearbyFriends(pb.ListNearbyFriendsRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for bad in (
        pb.ListNearbyFriendsRequest(page_size=-1),
        pb.ListNearbyFriendsRequest(page_token="x!"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListNearbyFriends(bad, metadata=who(a))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_nearby_needs_a_recent_location(m: Mesh) -> None:
    (a,) = await m.users("a")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await m.list_nearby(a)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await m.report({a: ORIGIN})
    assert (await m.list_nearby(a)).total_size == 0


async def test_idle_stream_gets_heartbeats(settings: Settings) -> None:
    async with mesh(fast_settings(settings, heartbeat_s=0.3)) as m:
        (a,) = await m.users("a")
        s = await m.connect(a, *ORIGIN)
        beats = await s.wait_for(
            lambda s: [x for x in s.messages if x.WhichOneof("kind") == "heartbeat"][1:]
        )
        assert beats[0].heartbeat.server_time.seconds > 0
        await s.close()


async def test_drain_sends_reconnect_then_unavailable(m: Mesh) -> None:
    settings = m.settings.replace(drain_s=0.5)
    runner = Runner(FanoutApp(settings), "127.0.0.1", 0, grace_s=2.0)
    port = await runner.start()
    try:
        users = await m.users("a", "b", "c")
        ch = m.channel(f"127.0.0.1:{port}")
        streams = []
        for u in users:
            s = Stream(pb_grpc.NearbyServiceStub(ch), u)
            await s.open(*ORIGIN)
            await s.wait_for(lambda s: s.snapshots())
            streams.append(s)
        await runner.stop()
        for s in streams:
            await s.done.wait()
            assert s.messages[-1].WhichOneof("kind") == "reconnect"
            assert s.error is not None and s.error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await runner.stop()


async def test_connect_storm_batches_subscriptions(m: Mesh) -> None:
    users = await m.users(*[f"u{i}" for i in range(60)])
    for i, u in enumerate(users):  # a ring: everyone has two friends
        await m.befriend(u, users[(i + 1) % len(users)])
    commands = metrics.HUB_COMMANDS._value.get()
    streams = [Stream(m.nearby_stub(), u) for u in users]
    await asyncio.gather(*(s.open(*offset(*ORIGIN, 10 * i)) for i, s in enumerate(streams)))
    for s in streams:
        await s.wait_for(lambda s: s.snapshots())
    # 60 streams x (inbox + two friends) = 180 subscriptions, without batching
    # 120 SUBSCRIBE commands (two steps per stream)
    sent = metrics.HUB_COMMANDS._value.get() - commands
    assert 0 < sent < 60
    assert m.fanout_app.hub.channel_count() == 120
    for s in streams:
        await s.close()
    await until(lambda: m.fanout_app.hub.channel_count() == 0)


async def test_metrics_are_exposed(m: Mesh) -> None:
    a, b = await m.users("a", "b")
    await m.befriend(a, b)
    before = metrics.PUSH_LATENCY.count()
    sa = await m.connect(a, *ORIGIN)
    await sa.wait_for(lambda s: s.snapshots())
    sb = await m.connect(b, *offset(*ORIGIN, 100))
    await sa.wait_for(lambda s: s.updates(b))
    text = generate_latest().decode()
    for name in (
        "nearby_fanout_streams 2.0",
        'nearby_fanout_pushes_total{kind="update"}',
        'nearby_fanout_pushes_total{kind="gone_unfriended"}',
        "nearby_fanout_messages_total",
        "nearby_fanout_drops_total",
        "nearby_fanout_hub_channels",
        'nearby_fanout_batch_events_bucket{le="1.0"}',
        'nearby_fanout_push_latency_seconds_bucket{le="+Inf"}',
        "nearby_fanout_push_latency_seconds_sum",
    ):
        assert name in text, name
    assert metrics.PUSH_LATENCY.count() > before
    for s in (sa, sb):
        await s.close()


async def test_a_client_not_reading_its_pages_is_held_back(settings: Settings) -> None:
    """A client that keeps asking for pages and reads none of the answers does
    not pile them up in the fan-out: past DIRECT_MAX answers waiting, the
    session stops reading its requests (HTTP/2 flow control then holds the
    client), and once the client reads, every request gets its answer."""
    from fanout_svc.session import DIRECT_MAX

    async with mesh(fast_settings(settings, fanout_stall_s=120.0)) as m:
        (a,) = await m.users("a")
        # 20 friends with long names nearby: each page answer is a few KiB
        friends = await m.users(*(f"f{i:02d}" + "x" * 50 for i in range(20)))
        for f in friends:
            await m.befriend(a, f)
        await m.report({f: offset(*ORIGIN, 100 + i) for i, f in enumerate(friends)})
        s = Stream(m.nearby_stub(), a)
        await s.open(*ORIGIN, read=False)
        await until(lambda: any(x.user_id == a for x in m.fanout_app.streams.sessions))
        session = next(x for x in m.fanout_app.streams.sessions if x.user_id == a)
        asked = 12_000  # answers of about 40 MiB: more than every buffer on the way holds
        req = pb.ConnectRequest(page_request=pb.PageRequest(page_size=20))
        peak = 0

        async def flood() -> None:
            for _ in range(asked):
                await s.call.write(req)

        task = asyncio.create_task(flood())
        try:
            async with asyncio.timeout(30):
                # until the reader is held (or the answers pile up: the bug)
                while session.reader_wait is None and peak <= DIRECT_MAX:
                    await asyncio.sleep(0.005)
                    peak = max(peak, len(session.direct))
            for _ in range(100):
                await asyncio.sleep(0.01)
                peak = max(peak, len(session.direct))
            assert peak <= DIRECT_MAX, f"{peak} answers waited for the writer"
            assert session.ending is None  # held back, not ended
            # the client reads again: nothing was dropped
            s.start_reading()

            def pages() -> int:
                return sum(1 for x in s.messages if x.WhichOneof("kind") == "page")

            await until(lambda: pages() == asked, within=60)
            await task
            assert all(
                len(x.page.friends) == 20 for x in s.messages if x.WhichOneof("kind") == "page"
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await s.close()
