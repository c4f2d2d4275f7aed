"""The SDK against the real mesh behind a real Envoy (real Redis and Postgres):
the unary helpers, error mapping, authentication failures, the live session
(snapshot, updates, pages) and reconnection when a fan-out replica drains."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import math
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from nearby import (
    AuthError,
    BackoffPolicy,
    Event,
    FriendLeft,
    FriendMoved,
    NearbyClient,
    NearbyError,
    NearbySession,
    Page,
    Reconnecting,
    Snapshot,
)
from nearby.v1 import location_service_pb2_grpc as lpb_grpc
from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc
from rich.console import Console

from mesh.geo import EARTH_RADIUS_M
from mesh.settings import Settings
from stack import infra, watch
from tests.support.edge_stack import EdgeStack, edge_stack
from tests.support.fanout import WatchStream
from tests.support.fanout import until as poll_until
from tests.support.redis import CLUSTER, STANDALONE

FAST = BackoffPolicy(initial_s=0.05, multiplier=2, max_s=0.5)
HOME = (52.52, 13.405)


def east(meters: float) -> tuple[float, float]:
    """A point `meters` east of HOME."""
    lat, lng = HOME
    return lat, lng + math.degrees(meters / (EARTH_RADIUS_M * math.cos(math.radians(lat))))


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module", params=[STANDALONE, CLUSTER])
def sdk_settings(
    request: pytest.FixtureRequest, redis_server: infra.RedisServer, pg_admin_url: str
) -> Iterator[Settings]:
    """One database for the module's stack (tests use fresh user ids), on each
    Redis engine in turn: the private Redis, then the shared Redis Cluster."""
    name = f"nearby_sdk_{uuid.uuid4().hex[:12]}"
    infra.create_database(pg_admin_url, name)
    database_url = infra.database_url(pg_admin_url, name)
    if request.param == CLUSTER:
        cluster: infra.RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        yield Settings(redis_url=cluster.url, redis_cluster=True, database_url=database_url)
    else:
        yield Settings(redis_url=redis_server.url, database_url=database_url)
    infra.drop_database(pg_admin_url, name)


def fast(settings: Settings) -> Settings:
    """Every report shared at once; short drains and sweeps."""
    return settings.replace(min_report_interval_s=0.0, drain_s=1.0, presence_sweep_interval_s=0.2)


@pytest.fixture(scope="module")
async def stack(sdk_settings: Settings) -> AsyncIterator[EdgeStack]:
    async with edge_stack(fast(sdk_settings)) as s:
        yield s


def client(stack: EdgeStack, user_id: str, *, admin: bool = False) -> NearbyClient:
    return NearbyClient(
        stack.envoy_addr, stack.token(user_id, admin=admin), secure=False, backoff=FAST
    )


async def users(stack: EdgeStack, *prefixes: str) -> list[str]:
    ids = [uid(p) for p in prefixes]
    async with client(stack, "operator", admin=True) as admin:
        for user_id in ids:
            created = await admin.create_user(user_id.title(), user_id)
            assert created.user_id == user_id
    return ids


async def test_friend_management_helpers(stack: EdgeStack) -> None:
    alice, bob, carol = await users(stack, "alice", "bob", "carol")
    async with (
        client(stack, alice) as a,
        client(stack, bob) as b,
        client(stack, carol) as c,
    ):
        me = await a.get_user()
        assert (me.user_id, me.display_name) == (alice, alice.title())
        assert me.create_time.tzinfo is not None

        sent = await a.send_friend_request(bob)
        assert (sent.from_user.user_id, sent.to_user.user_id) == (alice, bob)
        await c.send_friend_request(bob)
        incoming = [r.from_user.user_id async for r in b.list_friend_requests(page_size=1)]
        assert sorted(incoming) == sorted([alice, carol])  # all pages walked
        outgoing = [r.to_user.user_id async for r in a.list_friend_requests("outgoing")]
        assert outgoing == [bob]

        friend = await b.accept_friend_request(alice)
        assert friend.user.user_id == alice
        await b.decline_friend_request(carol)
        assert [r async for r in b.list_friend_requests()] == []
        assert [f.user.user_id async for f in a.list_friends()] == [bob]
        assert [f.user.user_id async for f in b.list_friends()] == [alice]

        await a.remove_friend(bob)
        assert [f async for f in b.list_friends()] == []


async def test_errors_carry_code_message_and_reason(stack: EdgeStack) -> None:
    (alice,) = await users(stack, "alice")
    async with client(stack, alice) as a:
        with pytest.raises(NearbyError) as info:
            await a.send_friend_request(uid("nobody"))
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert info.value.message
        assert info.value.reason  # the ErrorInfo detail made it through Envoy
        assert not isinstance(info.value, AuthError)

        # A user token cannot create users: PERMISSION_DENIED is an AuthError.
        with pytest.raises(AuthError) as denied:
            await a.create_user("Mallory", uid("mallory"))
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED


async def test_report_location_and_history(stack: EdgeStack) -> None:
    (alice,) = await users(stack, "alice")
    async with client(stack, alice) as a:
        t0 = datetime.now(UTC) - timedelta(seconds=30)
        first = await a.report_location(52.52, 13.405, recorded_at=t0)
        assert first.disposition == "ACCEPTED"
        assert first.location.user_id == alice
        assert (first.location.latitude, first.location.longitude) == (52.52, 13.405)
        with pytest.raises(ValueError):
            await a.report_location(95.0, 0.0)
        # History is written behind a durable buffer: poll with a deadline.
        async with asyncio.timeout(30):
            while True:
                history = [h async for h in a.list_location_history(page_size=1)]
                if history:
                    break
                await asyncio.sleep(0.1)
        assert [(h.latitude, h.longitude) for h in history] == [(52.52, 13.405)]
        assert abs((history[0].recorded_at - t0).total_seconds()) < 0.001


async def test_bad_token_raises_auth_error_without_retrying(stack: EdgeStack) -> None:
    async with NearbyClient(stack.envoy_addr, "not-a-jwt", secure=False, backoff=FAST) as bad:
        with pytest.raises(AuthError) as info:
            await bad.get_user()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED

        session = bad.connect(52.52, 13.405)
        with pytest.raises(AuthError) as stream_info:
            async with asyncio.timeout(20):
                async for event in session:
                    # Envoy refuses the stream as the first location is being
                    # written; grpc.aio can then report INTERNAL instead of the
                    # real status (grpc/grpc#36066), which is retried like any
                    # INTERNAL. Nothing but that may ever arrive.
                    assert isinstance(event, Reconnecting), event
                    assert "Internal error from Core" in event.cause
        assert stream_info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert stream_info.value.message
        assert session.connects <= 3  # refused, not retried
        assert session.closed

    # An expired token is refused the same way.
    expired = stack.token("alice", ttl_s=60, now=datetime.now(UTC).timestamp() - 3600)
    async with NearbyClient(stack.envoy_addr, expired, secure=False) as old:
        with pytest.raises(AuthError):
            await old.get_user()


async def befriend(stack: EdgeStack, a: str, b: str) -> None:
    async with client(stack, a) as ca, client(stack, b) as cb:
        await ca.send_friend_request(b)
        await cb.accept_friend_request(a)


async def next_event(session: NearbySession, within: float = 20.0) -> Event:
    async with asyncio.timeout(within):
        return await anext(aiter(session))


async def until(session: NearbySession, kind: type, within: float = 20.0) -> list[Event]:
    """Events up to and including the first of `kind`."""
    seen: list[Event] = []
    async with asyncio.timeout(within):
        async for event in session:
            seen.append(event)
            if isinstance(event, kind):
                return seen
    raise AssertionError(f"the session ended before a {kind.__name__}: {seen}")


async def test_session_snapshot_updates_and_my_moves(stack: EdgeStack) -> None:
    alice, bob = await users(stack, "alice", "bob")
    await befriend(stack, alice, bob)
    async with client(stack, alice) as a, client(stack, bob) as b:
        await b.report_location(*east(2000))
        session = a.connect(*HOME)
        snap = await next_event(session)
        assert isinstance(snap, Snapshot)
        assert [f.user_id for f in snap.friends] == [bob]
        assert snap.friends[0].display_name == bob.title()
        assert snap.friends[0].distance_meters == pytest.approx(2000, abs=5)
        assert snap.total_size == 1 and snap.radius_meters == pytest.approx(8047)
        assert session.nearby == list(snap.friends) and session.state == "connected"

        # Bob walks closer: a FriendMoved, and the live view follows.
        await b.report_location(*east(500))
        moved = (await until(session, FriendMoved))[-1]
        assert isinstance(moved, FriendMoved) and not moved.is_new
        assert moved.friend.distance_meters == pytest.approx(500, abs=5)
        assert [(f.user_id, round(f.distance_meters)) for f in session.nearby] == [(bob, 500)]

        # Bob walks 20 km away: he leaves the list.
        await b.report_location(*east(20_000))
        left = (await until(session, FriendLeft))[-1]
        assert isinstance(left, FriendLeft)
        assert (left.user_id, left.reason) == (bob, "OUT_OF_RANGE")
        assert session.nearby == [] and session.total_size == 0

        # Alice walks next to Bob: he appears without moving.
        await session.update_location(*east(19_000))
        back = (await until(session, FriendMoved))[-1]
        assert isinstance(back, FriendMoved) and back.is_new
        assert back.friend.distance_meters == pytest.approx(1000, abs=5)
        assert [f.user_id for f in session.nearby] == [bob]

        # The unary call agrees with the stream (it uses the last location).
        page = await a.list_nearby_friends()
        assert [f.user_id for f in page.friends] == [bob] and page.total_size == 1
        await session.close()


async def test_ghost_mode_and_unfriending_through_the_helpers(stack: EdgeStack) -> None:
    alice, bob = await users(stack, "alice", "bob")
    await befriend(stack, alice, bob)
    async with client(stack, alice) as a, client(stack, bob) as b:
        await b.report_location(*east(1000))
        session = a.connect(*HOME)
        snap = await next_event(session)
        assert isinstance(snap, Snapshot) and [f.user_id for f in snap.friends] == [bob]

        assert await b.get_visibility() is True
        assert await b.set_visibility(False) is False
        assert await b.get_visibility() is False
        hidden = (await until(session, FriendLeft))[-1]
        assert isinstance(hidden, FriendLeft) and (hidden.user_id, hidden.reason) == (bob, "HIDDEN")
        assert session.nearby == []

        assert await b.set_visibility(True) is True
        await b.report_location(*east(900))
        back = (await until(session, FriendMoved))[-1]
        assert isinstance(back, FriendMoved) and back.friend.user_id == bob and back.is_new

        await a.remove_friend(bob)
        gone = (await until(session, FriendLeft))[-1]
        assert isinstance(gone, FriendLeft) and (gone.user_id, gone.reason) == (bob, "UNFRIENDED")
        assert session.nearby == [] and session.total_size == 0
        await session.close()


async def test_a_watch_stream_sees_what_an_sdk_session_sees(stack: EdgeStack) -> None:
    """Alice on Connect (the SDK), Carol on Watch moved by ReportLocation (a
    browser's way), both at HOME: the same snapshot, Bob's move and ghost mode."""
    alice, bob, carol = await users(stack, "alice", "bob", "carol")
    await befriend(stack, alice, bob)
    await befriend(stack, carol, bob)
    ch = stack.channel()
    watch_stream = WatchStream(
        pb_grpc.NearbyServiceStub(ch),
        carol,
        stack.auth(carol),
        locations=lpb_grpc.LocationServiceStub(ch),
    )
    try:
        async with client(stack, alice) as a, client(stack, bob) as b:
            await b.report_location(*east(2000))
            session = a.connect(*HOME)
            await watch_stream.open(*HOME)
            snap = await next_event(session)
            assert isinstance(snap, Snapshot)
            (wsnap,) = await watch_stream.wait_for(lambda s: s.snapshots(), within=20)
            assert [(f.user_id, round(f.distance_meters)) for f in wsnap.friends] == [
                (f.user_id, round(f.distance_meters)) for f in snap.friends
            ]
            await b.report_location(*east(500))
            moved = (await until(session, FriendMoved))[-1]
            assert isinstance(moved, FriendMoved)
            (upd,) = await watch_stream.wait_for(lambda s: s.updates(bob), within=20)
            assert upd.distance_meters == pytest.approx(moved.friend.distance_meters, abs=0.01)
            assert upd.update_time.ToMilliseconds() == int(
                moved.friend.updated_at.timestamp() * 1000
            )
            await b.set_visibility(False)
            left = (await until(session, FriendLeft))[-1]
            assert isinstance(left, FriendLeft) and left.reason == "HIDDEN"
            (gone,) = await watch_stream.wait_for(lambda s: s.gones(bob), within=20)
            assert gone.reason == pb.FRIEND_GONE_REASON_HIDDEN
            await session.close()
    finally:
        await watch_stream.close()
        await ch.close()


async def test_session_pages_fill_the_view_in_distance_order(stack: EdgeStack) -> None:
    me, *friends = await users(stack, "me", *[f"f{i}" for i in range(23)])
    for i, f in enumerate(friends):
        await befriend(stack, me, f)
        async with client(stack, f) as cf:
            await cf.report_location(*east(100 + 200 * i))
    async with client(stack, me) as c:
        session = c.connect(*HOME)
        snap = await next_event(session)
        assert isinstance(snap, Snapshot)
        assert len(snap.friends) == 20 and snap.total_size == 23 and snap.next_page_token
        assert len(session.nearby) == 20 and session.total_size == 23
        await session.request_page(session.next_page_token)
        page = (await until(session, Page))[-1]
        assert isinstance(page, Page) and len(page.friends) == 3 and page.next_page_token == ""
        assert [f.user_id for f in session.nearby] == friends
        distances = [f.distance_meters for f in session.nearby]
        assert distances == sorted(distances)
        # ListNearbyFriends gives the same list.
        first = await c.list_nearby_friends(page_size=20)
        rest = await c.list_nearby_friends(first.next_page_token, page_size=20)
        assert [f.user_id for f in (*first.friends, *rest.friends)] == friends
        await session.close()


async def test_session_moves_to_the_other_replica_when_its_replica_drains(
    sdk_settings: Settings,
) -> None:
    async with edge_stack(fast(sdk_settings), fanout_replicas=2) as two:
        alice, bob, carol = await users(two, "alice", "bob", "carol")
        await befriend(two, alice, bob)
        await befriend(two, alice, carol)
        async with client(two, alice) as a, client(two, bob) as b, client(two, carol) as c:
            await b.report_location(*east(2000))
            await c.report_location(*east(30_000))
            session = a.connect(*HOME)
            snap = await next_event(session)
            assert isinstance(snap, Snapshot) and [f.user_id for f in snap.friends] == [bob]

            fanouts = two.runners["fanout_svc"]
            serving = [i for i, r in enumerate(fanouts) if r.app.streams.sessions]  # type: ignore[attr-defined]
            assert len(serving) == 1
            stopping = asyncio.create_task(two.stop_fanout(serving[0]))
            try:
                # While the stream moves, Bob leaves and Carol comes closer:
                # nothing of that is pushed, the fresh snapshot carries it.
                events = await until(session, Reconnecting)
                reconnecting = events[-1]
                assert isinstance(reconnecting, Reconnecting)
                assert "draining" in reconnecting.cause.lower()
                await b.report_location(*east(40_000))
                await c.report_location(*east(3000))
                events = await until(session, Snapshot, within=30)
                fresh = events[-1]
                assert isinstance(fresh, Snapshot)
                assert all(isinstance(e, Reconnecting) for e in events[:-1])
            finally:
                await stopping
            assert [f.user_id for f in fresh.friends] == [carol]
            assert [f.user_id for f in session.nearby] == [carol]
            assert session.nearby[0].distance_meters == pytest.approx(3000, abs=5)
            assert session.connects >= 2 and session.state == "connected"
            other = fanouts[1 - serving[0]]
            assert len(other.app.streams.sessions) == 1  # type: ignore[attr-defined]

            # The new stream is live: Carol's next move arrives.
            await c.report_location(*east(2500))
            moved = (await until(session, FriendMoved))[-1]
            assert isinstance(moved, FriendMoved) and moved.friend.user_id == carol
            await session.close()


def watch_args(stack: EdgeStack, token: str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    watch.add_arguments(parser)
    lat, lng = HOME
    common = ["--token", token, "--target", stack.envoy_addr, "--lat", str(lat), "--lng", str(lng)]
    return parser.parse_args([*common, *extra])


async def test_nearby_watch_shows_the_live_list(stack: EdgeStack) -> None:
    alice, bob = await users(stack, "alice", "bob")
    await befriend(stack, alice, bob)
    async with client(stack, bob) as b:
        await b.report_location(*east(1500))
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False, color_system=None)
    args = watch_args(stack, stack.token(alice), "--duration", "2", "--walk", "--walk-every", "0.5")
    assert await watch.watch(args, console) == 0
    screen = out.getvalue()
    assert f"Nearby friends of {alice}: 1" in screen
    assert "● connected" in screen
    assert bob.title() in screen and " km │ " in screen and " s ago │" in screen
    assert "snapshot: 1 nearby within 8.05 km" in screen
    assert "at 52.52000, 13.40500" not in screen  # --walk moved Alice


async def test_nearby_watch_refused_token(stack: EdgeStack) -> None:
    console = Console(file=io.StringIO(), force_terminal=False)
    with pytest.raises(AuthError):
        await watch.watch(watch_args(stack, "not-a-jwt", "--duration", "20"), console)


async def test_nearby_watch_exits_cleanly_on_ctrl_c(stack: EdgeStack) -> None:
    alice, bob = await users(stack, "alice", "bob")
    await befriend(stack, alice, bob)
    async with client(stack, bob) as b:
        await b.report_location(*east(800))
    streams = stack.runners["fanout_svc"][0].app.streams  # type: ignore[attr-defined]
    before = len(streams.sessions)
    lat, lng = HOME
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stack",
        "watch",
        "--token",
        stack.token(alice),
        "--target",
        stack.envoy_addr,
        "--lat",
        str(lat),
        "--lng",
        str(lng),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            while True:  # until its stream is open
                if len(streams.sessions) > before:
                    break
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert f"Nearby friends of {alice}" in out.decode()


async def test_sigterm_on_a_replica_moves_every_sdk_session_to_the_other(
    sdk_settings: Settings,
) -> None:
    """Real processes: SIGTERM one of two fan-out replicas; its SDK sessions
    reconnect through Envoy to the other, get a fresh snapshot and stay live."""
    settings = fast(sdk_settings).replace(drain_s=0.5)
    async with edge_stack(settings, fanout_replicas=2, processes=True) as two:
        bob, *watchers = await users(two, "bob", *[f"w{i}" for i in range(6)])
        for w in watchers:
            await befriend(two, w, bob)
        async with client(two, bob) as b:
            await b.report_location(*east(1000))
            clients = [client(two, w) for w in watchers]
            sessions = [c.connect(*HOME) for c in clients]
            seen: list[list[Event]] = [[] for _ in sessions]

            async def consume(i: int) -> None:
                async for event in sessions[i]:
                    seen[i].append(event)

            tasks = [asyncio.create_task(consume(i)) for i in range(len(sessions))]
            try:
                async with asyncio.timeout(30):
                    while True:
                        if all(any(isinstance(e, Snapshot) for e in s) for s in seen):
                            break
                        await asyncio.sleep(0.05)

                await two.stop_fanout(0)  # SIGTERM, drain, exit

                # the stopped replica's sessions say so (the end of a stream
                # can reach a client a moment after the process is gone)
                def reconnecting() -> list[list[Event]]:
                    return [s for s in seen if any(isinstance(e, Reconnecting) for e in s)]

                with contextlib.suppress(TimeoutError):
                    await poll_until(reconnecting, within=10)
                moved = reconnecting()
                assert moved, "no session was on the stopped replica"
                async with asyncio.timeout(30):
                    while True:  # every moved session has its fresh snapshot
                        if all(isinstance(s[-1], Snapshot) for s in moved):
                            break
                        await asyncio.sleep(0.05)
                for s in moved:
                    fresh = s[-1]
                    assert isinstance(fresh, Snapshot) and [f.user_id for f in fresh.friends] == [
                        bob
                    ]
                    causes = [e.cause for e in s if isinstance(e, Reconnecting)]
                    assert "draining" in causes[0].lower()

                # No stream is left hanging: every session sees Bob's next move.
                await b.report_location(*east(700))
                async with asyncio.timeout(30):
                    while True:
                        if all(
                            any(
                                isinstance(e, FriendMoved)
                                and e.friend.distance_meters == pytest.approx(700, abs=5)
                                for e in s
                            )
                            for s in seen
                        ):
                            break
                        await asyncio.sleep(0.05)
                assert all(s.state == "connected" for s in sessions)
                assert all(s.nearby[0].user_id == bob for s in sessions)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for c in clients:
                    await c.close()
