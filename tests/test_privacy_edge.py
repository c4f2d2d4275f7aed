"""Privacy controls through the real Envoy, real Redis (standalone and
Cluster) and Postgres: audience, precision, per-friend timed rules and timed
ghost mode, checked on every path (Connect snapshots, live pushes, pages,
ListNearbyFriends) and on EVERY message each receiver got: a friend outside
the audience never receives the owner, an approximate friend never receives a
position finer than the H3 cell; timers end on time, also across a restart of
presence_svc and a loss of Redis' data; bad input changes nothing.

One stack per Redis engine is shared by the module's tests (fresh user ids).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import h3
import pytest
import redis.asyncio as aioredis
from google.protobuf import duration_pb2
from nearby import NearbyClient, NearbyError, Snapshot
from nearby.v1 import friend_service_pb2 as fpb
from nearby.v1 import friend_service_pb2_grpc as fpb_grpc
from nearby.v1 import geo_pb2
from nearby.v1 import location_service_pb2 as lpb
from nearby.v1 import location_service_pb2_grpc as lpb_grpc
from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc
from nearby.v1 import presence_service_pb2 as ppb
from nearby.v1 import presence_service_pb2_grpc as ppb_grpc
from nearby.v1 import sharing_pb2 as spb
from rich.console import Console

from mesh.geo import distance_m
from mesh.server import Runner
from mesh.settings import Settings
from mesh.sharing import DISTANCE_STEP_M, H3_RESOLUTION
from presence_svc.app import PresenceApp
from stack import infra, watch
from tests.support.edge_stack import EdgeStack, edge_stack
from tests.support.fanout import Stream, offset, until
from tests.support.redis import CLUSTER, STANDALONE

HOME = (52.52, 13.405)
NOT_SHARED = pb.FRIEND_GONE_REASON_NOT_SHARED
HIDDEN = pb.FRIEND_GONE_REASON_HIDDEN
APPROX = spb.PRECISION_APPROXIMATE
PRECISE = spb.PRECISION_PRECISE


@pytest.fixture(scope="module", params=[STANDALONE, CLUSTER])
def privacy_settings(
    request: pytest.FixtureRequest, redis_server: infra.RedisServer, pg_admin_url: str
) -> Iterator[Settings]:
    name = f"nearby_privacy_{uuid.uuid4().hex[:12]}"
    infra.create_database(pg_admin_url, name)
    db = infra.database_url(pg_admin_url, name)
    if request.param == CLUSTER:
        cluster: infra.RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        s = Settings(redis_url=cluster.url, redis_cluster=True, database_url=db)
    else:
        s = Settings(redis_url=redis_server.url, database_url=db)
    yield s.replace(min_report_interval_s=0.0, drain_s=1.0, presence_sweep_interval_s=0.2)
    infra.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
async def stack(privacy_settings: Settings) -> AsyncIterator[EdgeStack]:
    async with edge_stack(privacy_settings) as s:
        yield s


@dataclass
class World:
    """Users, friendships, streams and the privacy RPCs, through Envoy."""

    stack: EdgeStack
    ch: grpc.aio.Channel

    def __post_init__(self) -> None:
        self.friends = fpb_grpc.FriendServiceStub(self.ch)
        self.locations = lpb_grpc.LocationServiceStub(self.ch)
        self.presence = ppb_grpc.PresenceServiceStub(self.ch)
        self.nearby = pb_grpc.NearbyServiceStub(self.ch)
        self.pos: dict[str, tuple[float, float]] = {}
        self.streams: list[Stream] = []

    def auth(self, user: str) -> list[tuple[str, str]]:
        return self.stack.auth(user)

    async def users(self, *names: str) -> list[str]:
        ids = [f"{n}-{uuid.uuid4().hex[:8]}" for n in names]
        admin = self.stack.auth("operator", admin=True)
        for u in ids:
            await self.friends.CreateUser(
                fpb.CreateUserRequest(user_id=u, display_name=u), metadata=admin
            )
        return ids

    async def befriend(self, a: str, *others: str) -> None:
        for b in others:
            await self.friends.SendFriendRequest(
                fpb.SendFriendRequestRequest(to_user_id=b), metadata=self.auth(a)
            )
            await self.friends.AcceptFriendRequest(
                fpb.AcceptFriendRequestRequest(from_user_id=a), metadata=self.auth(b)
            )

    async def report(self, user: str, north_m: float, east_m: float = 0.0) -> None:
        self.pos[user] = lat, lng = offset(*HOME, north_m, east_m)
        await self.locations.ReportLocation(
            lpb.ReportLocationRequest(position=geo_pb2.LatLng(latitude=lat, longitude=lng)),
            metadata=self.auth(user),
        )

    async def connect(self, user: str, north_m: float) -> Stream:
        self.pos[user] = offset(*HOME, north_m)
        st = Stream(self.nearby, user, metadata=self.auth(user))
        await st.open(*self.pos[user])
        await st.wait_for(lambda s: s.snapshots())
        self.streams.append(st)
        return st

    async def listed(self, user: str) -> list[pb.NearbyFriend]:
        resp = await self.nearby.ListNearbyFriends(
            pb.ListNearbyFriendsRequest(page_size=100), metadata=self.auth(user)
        )
        return list(resp.friends)

    async def settings(self, user: str) -> spb.SharingSettings:
        resp = await self.presence.GetSharingSettings(
            ppb.GetSharingSettingsRequest(), metadata=self.auth(user)
        )
        return resp.settings

    async def audience(self, user: str, audience: int, *ids: str) -> spb.SharingSettings:
        resp = await self.presence.SetAudience(
            ppb.SetAudienceRequest(audience=audience, user_ids=ids),  # type: ignore[arg-type]
            metadata=self.auth(user),
        )
        return resp.settings

    async def default(self, user: str, precision: int) -> None:
        await self.presence.SetDefaultPrecision(
            ppb.SetDefaultPrecisionRequest(precision=precision),  # type: ignore[arg-type]
            metadata=self.auth(user),
        )

    async def rule(self, user: str, friend: str, precision: int, ttl_s: float) -> float:
        """A timed rule; returns its end (epoch seconds) as the server set it."""
        resp = await self.presence.SetFriendPrecision(
            ppb.SetFriendPrecisionRequest(
                friend_id=friend,
                precision=precision,  # type: ignore[arg-type]
                ttl=duration_pb2.Duration(seconds=int(ttl_s), nanos=int(ttl_s % 1 * 1e9)),
            ),
            metadata=self.auth(user),
        )
        (r,) = [r for r in resp.settings.friend_precisions if r.friend_id == friend]
        return r.expire_time.ToMilliseconds() / 1000.0

    async def close(self) -> None:
        for st in self.streams:
            await st.close()
        await self.ch.close()


@pytest.fixture
async def world(stack: EdgeStack) -> AsyncIterator[World]:
    w = World(stack, stack.channel())
    yield w
    await w.close()


# --- what a receiver got of an owner, in every message ------------------------------


def seen(msgs: list[pb.ConnectResponse], owner: str) -> Iterator[pb.NearbyFriend]:
    """Every NearbyFriend of `owner` in snapshots, pages and updates."""
    for m in msgs:
        kind = m.WhichOneof("kind")
        if kind == "snapshot":
            yield from (f for f in m.snapshot.friends if f.user_id == owner)
        elif kind == "page":
            yield from (f for f in m.page.friends if f.user_id == owner)
        elif kind == "events":
            for e in m.events.events:
                if (
                    e.WhichOneof("kind") == "friend_update"
                    and e.friend_update.friend.user_id == owner
                ):
                    yield e.friend_update.friend


def is_coarse(f: pb.NearbyFriend) -> bool:
    """The position is an H3 cell centre and the distance a multiple of the step."""
    lat, lng = f.position.latitude, f.position.longitude
    clat, clng = h3.cell_to_latlng(h3.latlng_to_cell(lat, lng, H3_RESOLUTION))
    return (
        abs(clat - lat) < 1e-9
        and abs(clng - lng) < 1e-9
        and f.distance_meters % DISTANCE_STEP_M == 0
        and f.precision == APPROX
    )


def assert_never(msgs: list[pb.ConnectResponse], owner: str) -> None:
    got = list(seen(msgs, owner))
    assert not got, f"{owner} was sent to a friend outside the audience: {got[0]}"


def assert_coarse(msgs: list[pb.ConnectResponse], owner: str, true: tuple[float, float]) -> int:
    n = 0
    for f in seen(msgs, owner):
        assert is_coarse(f), f"finer than the cell: {f}"
        assert (f.position.latitude, f.position.longitude) != true
        n += 1
    return n


def assert_precise(w: World, msgs: list[pb.ConnectResponse], owner: str, me: str) -> int:
    n = 0
    for f in seen(msgs, owner):
        assert f.precision == PRECISE
        d = distance_m(*w.pos[me], f.position.latitude, f.position.longitude)
        assert f.distance_meters == pytest.approx(d, abs=1.0)
        n += 1
    return n


def latest(st: Stream, owner: str) -> pb.NearbyFriend | None:
    got = list(seen(st.messages, owner))
    return got[-1] if got else None


def gone(st: Stream, owner: str, reason: int, since: int = 0) -> bool:
    return any(
        e.WhichOneof("kind") == "friend_gone"
        and e.friend_gone.user_id == owner
        and e.friend_gone.reason == reason
        for m in st.messages[since:]
        if m.WhichOneof("kind") == "events"
        for e in m.events.events
    )


async def test_audience_and_precision_on_every_path(world: World) -> None:
    w = world
    a, b, c, d = await w.users("a", "b", "c", "d")
    await w.befriend(a, b, c, d)
    await w.report(a, 0, 1000)
    sb, sc, sd = [await w.connect(u, n) for u, n in ((b, 500), (c, 900), (d, 1500))]
    for st in (sb, sc, sd):  # everyone sees a precisely by default
        assert [f.user_id for f in st.snapshots()[0].friends] == [a]
        assert assert_precise(w, st.messages, a, st.user) == 1

    # only b: c and d lose a at once, with the reason
    marks = {st.user: len(st.messages) for st in (sb, sc, sd)}
    out = await w.audience(a, spb.AUDIENCE_ONLY, b)
    assert out.audience == spb.AUDIENCE_ONLY and list(out.audience_user_ids) == [b]
    await until(lambda: gone(sc, a, NOT_SHARED) and gone(sd, a, NOT_SHARED))
    for step in (1, 2):
        await w.report(a, 100 * step, 1000)
        await sb.wait_for(lambda s, n=step: len(list(seen(s.messages, a))) > n)
    assert assert_precise(w, sb.messages, a, b) == 3
    assert [f.user_id for f in await w.listed(b)] == [a]
    assert await w.listed(c) == [] and await w.listed(d) == []
    sc2 = await w.connect(c, 900)  # a fresh stream: a is not in its snapshot
    assert sc2.snapshots()[0].total_size == 0
    await sc2.page("")
    await sc2.wait_for(lambda s: s.pages())
    only_b = {c: len(sc.messages), d: len(sd.messages)}

    # approximate for all but c: b and d see the cell at once, c still nothing
    await w.default(a, APPROX)
    await w.audience(a, spb.AUDIENCE_ALL_EXCEPT, c)
    await sb.wait_for(lambda s: (f := latest(s, a)) is not None and is_coarse(f))
    await sd.wait_for(lambda s: len(list(seen(s.messages[only_b[d] :], a))) >= 1)
    await w.report(a, 2500, 1000)  # a moves: approximate updates only
    await sd.wait_for(lambda s: latest(s, a).position.latitude != 0)  # type: ignore[union-attr]
    listed_d = await w.listed(d)
    assert [f.user_id for f in listed_d] == [a] and is_coarse(listed_d[0])
    sd2 = await w.connect(d, 1500)
    assert is_coarse(sd2.snapshots()[0].friends[0])
    await sd2.page("")
    await sd2.wait_for(lambda s: s.pages())
    await asyncio.sleep(0.3)  # anything stray would arrive now

    # every message of every receiver, over the whole test
    assert_never(sc.messages[marks[c] :], a)
    assert_never(sc2.messages, a)
    assert_never(sd.messages[marks[d] : only_b[d]], a)
    assert assert_coarse(sd.messages[only_b[d] :], a, w.pos[a]) >= 1
    assert assert_coarse(sd2.messages, a, w.pos[a]) == 2  # the snapshot and the page
    of_a = list(seen(sb.messages, a))  # b: 3 precise, then only cells
    assert all(f.precision == PRECISE for f in of_a[:3])
    assert len(of_a) > 3 and all(is_coarse(f) for f in of_a[3:])
    assert await w.listed(c) == []
    assert all(st.error is None for st in (sb, sc, sd, sc2, sd2))


async def test_timed_rules_and_ghost_timer_end_on_time(world: World) -> None:
    w = world
    a, b, c = await w.users("a", "b", "c")
    await w.befriend(a, b, c)
    await w.report(a, 0, 1200)
    await w.audience(a, spb.AUDIENCE_ONLY, b)
    await w.default(a, APPROX)
    sb, sc = await w.connect(b, 300), await w.connect(c, 600)
    assert is_coarse(sb.snapshots()[0].friends[0]) and sc.snapshots()[0].total_size == 0

    # b: precise for 2 s; c (outside the audience): approximate for 2 s
    end_b = await w.rule(a, b, PRECISE, 2.0)
    end_c = await w.rule(a, c, APPROX, 2.0)
    await sb.wait_for(lambda s: latest(s, a).precision == PRECISE)  # type: ignore[union-attr]
    await sc.wait_for(lambda s: latest(s, a) is not None)
    before_b, before_c = len(sb.messages), len(sc.messages)
    assert [r.friend_id for r in (await w.settings(a)).friend_precisions] == sorted((b, c))
    await sb.wait_for(lambda s: latest(s, a).precision == APPROX, within=8)  # type: ignore[union-attr]
    ended_b = time.time()
    await sc.wait_for(lambda s: gone(s, a, NOT_SHARED, before_c), within=8)
    ended_c = time.time()
    assert end_b - 0.05 <= ended_b <= end_b + 3.0
    assert end_c - 0.05 <= ended_c <= end_c + 3.0
    assert assert_coarse(sb.messages[before_b:], a, w.pos[a]) >= 1
    await w.report(a, 50, 1200)
    await sb.wait_for(lambda s: len(list(seen(s.messages[before_b:], a))) >= 2)
    assert assert_coarse(sb.messages[before_b:], a, w.pos[a]) >= 2
    assert_never([m for m in sc.messages[before_c:]], a)
    await until(lambda: _no_rules(w, a), within=5)  # Postgres too, by the timers

    # ghost mode for 2 s: b gets HIDDEN, then a is back on the next report
    mark = len(sb.messages)
    resp = await w.presence.SetVisibility(
        ppb.SetVisibilityRequest(
            visibility=ppb.VISIBILITY_HIDDEN, ttl=duration_pb2.Duration(seconds=2)
        ),
        metadata=w.auth(a),
    )
    end_ghost = resp.expire_time.ToMilliseconds() / 1000.0
    assert (await w.settings(a)).hidden
    await sb.wait_for(lambda s: gone(s, a, HIDDEN, mark))
    await until(lambda: _visible(w, a), within=8)
    assert time.time() >= end_ghost - 0.05
    assert time.time() <= end_ghost + 3.0
    await w.report(a, 80, 1200)
    await sb.wait_for(lambda s: len(list(seen(s.messages[mark:], a))) >= 1)
    assert assert_coarse(sb.messages[mark:], a, w.pos[a]) == 1


async def _no_rules(w: World, user: str) -> bool:
    return not (await w.settings(user)).friend_precisions


async def _visible(w: World, user: str) -> bool:
    resp = await w.presence.GetVisibility(ppb.GetVisibilityRequest(), metadata=w.auth(user))
    return resp.visibility == ppb.VISIBILITY_VISIBLE


async def test_timers_survive_a_presence_restart_and_redis_losing_its_data(
    world: World, stack: EdgeStack
) -> None:
    w = world
    a, b, c = await w.users("a", "b", "c")
    await w.befriend(a, b, c)
    await w.report(a, 0, 800)
    await w.audience(a, spb.AUDIENCE_ALL_EXCEPT, c)
    await w.default(a, APPROX)
    sb = await w.connect(b, 200)
    end = await w.rule(a, b, PRECISE, 2.0)
    await sb.wait_for(lambda s: latest(s, a).precision == PRECISE)  # type: ignore[union-attr]

    # presence is down when the rule ends: the fan-out ends it by itself
    port = int(stack.backends["presence_svc"][0].rsplit(":", 1)[1])
    await stack.runners["presence_svc"][0].stop()
    await sb.wait_for(lambda s: latest(s, a).precision == APPROX, within=8)  # type: ignore[union-attr]
    assert time.time() <= end + 3.0
    runner = Runner(PresenceApp(stack.settings), "127.0.0.1", port, grace_s=2.0)
    await runner.start()
    stack.runners["presence_svc"][0] = runner
    await stack.wait_hosts("presence_svc", healthy=True)
    await until(lambda: _no_rules(w, a), within=10)  # and Postgres, once presence is back

    # Redis loses everything: no stream is built on a missing policy
    await _flush(stack.settings)
    for user, north in ((a, 10.0), (b, 200.0), (c, 400.0)):
        await w.report(user, north, 800 if user == a else 0)
    for _ in range(100):  # UNAVAILABLE until presence has reloaded the policies
        try:
            resp = await w.listed(c)
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("the policies were not reloaded")
    assert resp == []
    # b's stream, open all along, kept a's policy: a's next move reaches it as a cell
    mark = len(sb.messages)
    await w.report(a, 30, 800)
    await sb.wait_for(lambda s: len(list(seen(s.messages[mark:], a))) >= 1)
    assert assert_coarse(sb.messages[mark:], a, w.pos[a]) >= 1
    sc = await w.connect(c, 400)
    listed_b = await w.listed(b)
    assert [f.user_id for f in listed_b] == [a] and is_coarse(listed_b[0])
    await asyncio.sleep(0.3)
    assert_never(sc.messages, a)


async def _flush(settings: Settings) -> None:
    if settings.redis_cluster:
        cluster = aioredis.RedisCluster.from_url(settings.redis_url)
        try:
            await cluster.flushall(target_nodes=aioredis.RedisCluster.PRIMARIES)
        finally:
            await cluster.aclose()
    else:
        r = aioredis.Redis.from_url(settings.redis_url)
        try:
            await r.flushall()
        finally:
            await r.aclose()


async def test_bad_input_changes_nothing(world: World, stack: EdgeStack) -> None:
    w = world
    a, b, stranger = await w.users("a", "b", "stranger")
    await w.befriend(a, b)
    await w.audience(a, spb.AUDIENCE_ONLY, b)
    before = await w.settings(a)

    async def code(call: object) -> tuple[grpc.StatusCode, str]:
        try:
            await call  # type: ignore[misc]
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        raise AssertionError("accepted")

    md = w.auth(a)
    got = await code(
        w.presence.SetAudience(
            ppb.SetAudienceRequest(audience=spb.AUDIENCE_ONLY, user_ids=[b, stranger, "nobody"]),
            metadata=md,
        )
    )
    assert got[0] == grpc.StatusCode.NOT_FOUND and stranger in got[1] and "nobody" in got[1]
    assert b not in got[1].split("not your friends:")[1]
    too_many = [f"u{i}" for i in range(stack.settings.friend_cap + 1)]
    got = await code(
        w.presence.SetAudience(
            ppb.SetAudienceRequest(audience=spb.AUDIENCE_ALL_EXCEPT, user_ids=too_many),
            metadata=md,
        )
    )
    assert got[0] == grpc.StatusCode.INVALID_ARGUMENT and "friend cap" in got[1]
    past = ppb.SetFriendPrecisionRequest(friend_id=b, precision=PRECISE)
    past.expire_time.FromSeconds(int(time.time()) - 60)
    got = await code(w.presence.SetFriendPrecision(past, metadata=md))
    assert got[0] == grpc.StatusCode.INVALID_ARGUMENT and got[1].startswith("expire_time")
    long = ppb.SetFriendPrecisionRequest(
        friend_id=b, precision=PRECISE, ttl=duration_pb2.Duration(seconds=8 * 86400)
    )
    got = await code(w.presence.SetFriendPrecision(long, metadata=md))
    assert got[0] == grpc.StatusCode.INVALID_ARGUMENT and "7 days" in got[1]
    got = await code(
        w.presence.SetFriendPrecision(
            ppb.SetFriendPrecisionRequest(friend_id=stranger, precision=PRECISE), metadata=md
        )
    )
    assert got[0] == grpc.StatusCode.NOT_FOUND and stranger in got[1]
    got = await code(
        w.presence.SetVisibility(
            ppb.SetVisibilityRequest(
                visibility=ppb.VISIBILITY_HIDDEN, ttl=duration_pb2.Duration(seconds=-5)
            ),
            metadata=md,
        )
    )
    assert got[0] == grpc.StatusCode.INVALID_ARGUMENT and got[1].startswith("ttl")
    got = await code(
        w.presence.SetVisibility(
            ppb.SetVisibilityRequest(
                visibility=ppb.VISIBILITY_VISIBLE, ttl=duration_pb2.Duration(seconds=60)
            ),
            metadata=md,
        )
    )
    assert got[0] == grpc.StatusCode.INVALID_ARGUMENT
    got = await code(w.presence.SetDefaultPrecision(ppb.SetDefaultPrecisionRequest(), metadata=md))
    assert got[0] == grpc.StatusCode.INVALID_ARGUMENT and got[1].startswith("precision")
    got = await code(
        w.presence.SetAudience(
            ppb.SetAudienceRequest(audience=spb.AUDIENCE_ALL_FRIENDS, user_ids=[b]), metadata=md
        )
    )
    assert got[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert await w.settings(a) == before
    vis = await w.presence.GetVisibility(ppb.GetVisibilityRequest(), metadata=md)
    assert vis.visibility == ppb.VISIBILITY_VISIBLE


async def test_sdk_and_watch_show_the_controls(world: World, stack: EdgeStack) -> None:
    """The Python SDK sets and reads the controls, its session marks an
    approximate friend (and keeps only cells of them), and `nearby watch`
    shows the owner's settings and the approximate distance."""
    w = world
    a, b, stranger = await w.users("a", "b", "stranger")
    await w.befriend(a, b)
    await w.report(a, 0, 1800)
    async with (
        NearbyClient(stack.envoy_addr, stack.token(a), secure=False) as ca,
        NearbyClient(stack.envoy_addr, stack.token(b), secure=False) as cb,
    ):
        got = await ca.set_audience("ONLY", [b])
        assert (got.audience, got.audience_user_ids) == ("ONLY", (b,))
        got = await ca.set_default_precision("APPROXIMATE")
        got = await ca.set_friend_precision(b, "APPROXIMATE", ttl=timedelta(hours=1))
        (rule,) = got.friend_precisions
        assert rule.friend_id == b and rule.expires_at is not None
        assert timedelta(minutes=59) < rule.expires_at - datetime.now(UTC) <= timedelta(hours=1)
        with pytest.raises(NearbyError) as info:
            await ca.set_audience("ALL_EXCEPT", [stranger])
        assert info.value.code == grpc.StatusCode.NOT_FOUND and stranger in info.value.message
        assert await ca.get_sharing_settings() == got

        session = cb.connect(*offset(*HOME, 300))
        events = aiter(session)
        snap = await asyncio.wait_for(anext(events), 10)
        assert isinstance(snap, Snapshot)
        (fa,) = session.nearby
        assert fa.approximate and fa.distance_meters % DISTANCE_STEP_M == 0
        await session.update_location(*offset(*HOME, 900))  # the SDK re-centres
        await asyncio.sleep(0.2)
        (fa,) = session.nearby
        assert fa.approximate and fa.distance_meters % DISTANCE_STEP_M == 0
        state = watch.WatchState(a, stack.envoy_addr, session)
        state.sharing = await ca.get_sharing_settings()
        console = Console(record=True, width=160, color_system=None)
        console.print(watch.render(state))
        text = console.export_text()
        await session.close()
    assert f"sharing with only 1 ({b}), approximate; approximate for {b} until" in text
    assert f"~{watch.format_distance(fa.distance_meters)}" in text
