"""The fan-out service through the real Envoy (JWT auth, two fan-out replicas):
200 concurrent streams on a social graph (one in five a Watch stream moved by
unary ReportLocation calls, the browser's way; the others Connect), every push
checked against an independent recomputation; forged identity headers change
nothing."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from nearby.v1 import friend_service_pb2 as fpb
from nearby.v1 import friend_service_pb2_grpc as fpb_grpc
from nearby.v1 import geo_pb2
from nearby.v1 import location_service_pb2 as lpb
from nearby.v1 import location_service_pb2_grpc as lpb_grpc
from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc

from mesh.geo import distance_m
from mesh.settings import Settings
from tests.support.edge_stack import EdgeStack, edge_stack
from tests.support.fanout import Stream, WatchStream, fast_settings, offset, uid, until

USERS = 200
FRIENDS_EACH = 4  # edges added per user (average degree ~8)
ROUNDS = 5
CITIES = [(52.52, 13.405), (52.52, 14.2), (51.9, 13.405)]  # ~54 km and ~69 km apart


@pytest.fixture
def settings(engine_settings: Settings) -> Settings:
    """Every test runs on both Redis engines (standalone, then the shared cluster)."""
    return engine_settings


@dataclass
class Person:
    user_id: str
    city: int
    pos: tuple[float, float]
    friends: set[str] = field(default_factory=set)


def place(rng: random.Random, city: int) -> tuple[float, float]:
    return offset(*CITIES[city], rng.uniform(-9000, 9000), rng.uniform(-9000, 9000))


def graph(rng: random.Random) -> dict[str, Person]:
    people = {}
    for i in range(USERS):
        city = i % len(CITIES)
        u = uid(f"u{i}")
        people[u] = Person(u, city, place(rng, city))
    ids = list(people)
    for u in ids:
        same = [v for v in ids if v != u and people[v].city == people[u].city]
        for _ in range(FRIENDS_EACH):
            v = rng.choice(same) if rng.random() < 0.8 else rng.choice(ids)
            if v != u:
                people[u].friends.add(v)
                people[v].friends.add(u)
    return people


async def _in_chunks(coros: list, size: int = 50) -> None:  # type: ignore[type-arg]
    for i in range(0, len(coros), size):
        await asyncio.gather(*coros[i : i + size])


async def build(stack: EdgeStack, people: dict[str, Person]) -> None:
    ch = stack.channel()
    try:
        friends = fpb_grpc.FriendServiceStub(ch)
        locations = lpb_grpc.LocationServiceStub(ch)
        admin = stack.auth("operator", admin=True)
        await _in_chunks(
            [
                friends.CreateUser(fpb.CreateUserRequest(user_id=u, display_name=u), metadata=admin)
                for u in people
            ]
        )
        edges = {tuple(sorted((u, v))) for u, p in people.items() for v in p.friends}

        async def befriend(a: str, b: str) -> None:
            await friends.SendFriendRequest(
                fpb.SendFriendRequestRequest(to_user_id=b), metadata=stack.auth(a)
            )
            await friends.AcceptFriendRequest(
                fpb.AcceptFriendRequestRequest(from_user_id=a), metadata=stack.auth(b)
            )

        await _in_chunks([befriend(a, b) for a, b in edges])
        await _in_chunks(
            [
                locations.ReportLocation(
                    lpb.ReportLocationRequest(
                        position=geo_pb2.LatLng(latitude=p.pos[0], longitude=p.pos[1])
                    ),
                    metadata=stack.auth(u),
                )
                for u, p in people.items()
            ]
        )
    finally:
        await ch.close()


class Model:
    """The nearby lists as the spec defines them, recomputed from the positions sent."""

    def __init__(self, people: dict[str, Person], radius: float, hysteresis: float) -> None:
        self.people = people
        self.radius, self.leave = radius, radius + hysteresis
        self.inside: dict[str, set[str]] = {
            u: {f for f in p.friends if self.dist(u, f) <= radius} for u, p in people.items()
        }

    def dist(self, a: str, b: str) -> float:
        pa, pb_ = self.people[a].pos, self.people[b].pos
        return distance_m(pa[0], pa[1], pb_[0], pb_[1])

    def move(self, movers: set[str]) -> dict[str, dict[str, tuple[str, float]]]:
        """Apply the moves; the events each user must receive: {user: {friend: (kind, dist)}}."""
        expected: dict[str, dict[str, tuple[str, float]]] = {u: {} for u in self.people}
        for u in self.people:
            inside = self.inside[u]
            for f in self.people[u].friends:
                if u not in movers and f not in movers:
                    continue
                d = self.dist(u, f)
                was = f in inside
                if u in movers:  # my move: only enter/leave events
                    if was and d > self.leave:
                        inside.discard(f)
                        expected[u][f] = ("gone", d)
                    elif not was and d <= self.radius:
                        inside.add(f)
                        expected[u][f] = ("update", d)
                elif d <= self.radius or (was and d <= self.leave):
                    inside.add(f)
                    expected[u][f] = ("update", d)
                elif was:
                    inside.discard(f)
                    expected[u][f] = ("gone", d)
        return expected


def received(stream: Stream, since: int) -> Iterator[tuple[str, str, float, int]]:
    """(friend, kind, distance, reason) of the events after message `since`."""
    for msg in stream.messages[since:]:
        kind = msg.WhichOneof("kind")
        assert kind in ("events", "heartbeat"), f"unexpected {kind} for {stream.user}"
        for e in msg.events.events:
            if e.WhichOneof("kind") == "friend_update":
                f = e.friend_update.friend
                yield f.user_id, "update", f.distance_meters, 0
            else:
                yield e.friend_gone.user_id, "gone", 0.0, e.friend_gone.reason


def check(stream: Stream, since: int, want: dict[str, tuple[str, float]]) -> bool:
    """True when exactly the wanted events arrived; fails on any wrong push."""
    got = list(received(stream, since))
    for friend, kind, dist, reason in got:
        assert friend in want, f"{stream.user} got an unexpected {kind} of {friend}"
        w_kind, w_dist = want[friend]
        assert kind == w_kind, f"{stream.user}: {friend} {kind}, expected {w_kind}"
        if kind == "update":
            assert dist == pytest.approx(w_dist, abs=0.5)
        else:
            assert reason == pb.FRIEND_GONE_REASON_OUT_OF_RANGE
    assert len(got) <= len(want), f"{stream.user}: duplicate events {got}"
    return len(got) == len(want)


def all_arrived(
    streams: dict[str, Stream],
    marks: dict[str, int],
    expected: dict[str, dict[str, tuple[str, float]]],
) -> bool:
    return all(check(streams[u], marks[u], expected[u]) for u in streams)


async def test_200_streams_every_push_correct_and_none_missing(settings: Settings) -> None:
    rng = random.Random(7)
    s = fast_settings(settings)
    async with edge_stack(s, fanout_replicas=2) as stack:
        people = graph(rng)
        await build(stack, people)
        model = Model(people, s.nearby_radius_m, s.nearby_hysteresis_m)
        ch = stack.channel()
        stub = pb_grpc.NearbyServiceStub(ch)
        locations = lpb_grpc.LocationServiceStub(ch)
        streams = {
            u: WatchStream(stub, u, stack.auth(u), locations=locations)
            if i % 5 == 0
            else Stream(stub, u, metadata=stack.auth(u))
            for i, u in enumerate(people)
        }
        try:
            await asyncio.gather(*(streams[u].open(*p.pos) for u, p in people.items()))
            for u, st in streams.items():
                snaps = await st.wait_for(lambda st: st.snapshots(), within=30)
                snap = snaps[0]
                want = sorted((model.dist(u, f), f) for f in model.inside[u])
                assert snap.total_size == len(want)
                assert [f.user_id for f in snap.friends] == [f for _, f in want][:20]
                for got_f, (d, _) in zip(snap.friends, want, strict=False):
                    assert got_f.distance_meters == pytest.approx(d, abs=0.5)
            # both replicas carry streams
            per_replica = [len(r.app.streams.sessions) for r in stack.runners["fanout_svc"]]  # type: ignore[attr-defined]
            assert sum(per_replica) == USERS and min(per_replica) > 0

            pushed = 0
            for _ in range(ROUNDS):
                # movers: no two of them friends, so every list changes deterministically
                movers: set[str] = set()
                for u in rng.sample(list(people), len(people)):
                    if len(movers) < 40 and not (people[u].friends & movers):
                        movers.add(u)
                marks = {u: len(st.messages) for u, st in streams.items()}
                for u in movers:
                    people[u].pos = place(rng, people[u].city)
                expected = model.move(movers)
                await asyncio.gather(*(streams[u].move(*people[u].pos) for u in movers))
                await until(functools.partial(all_arrived, streams, marks, expected), within=30)
                pushed += sum(len(e) for e in expected.values())
            assert pushed > 100  # the rounds really moved lists
            await asyncio.sleep(0.3)  # anything stray would arrive now
            for u, st in streams.items():
                assert check(st, marks[u], expected[u])
                assert st.error is None
        finally:
            for st in streams.values():
                await st.close()
            await ch.close()


async def test_forged_identity_header_is_ignored_through_envoy(settings: Settings) -> None:
    async with edge_stack(fast_settings(settings)) as stack:
        a, b, c, d = (uid(x) for x in "abcd")
        people = {
            a: Person(a, 0, offset(*CITIES[0], 100), {c}),
            b: Person(b, 0, offset(*CITIES[0], 20_000), {d}),
            c: Person(c, 0, offset(*CITIES[0], 300), {a}),
            d: Person(d, 0, offset(*CITIES[0], 150), {b}),
        }
        await build(stack, people)
        ch = stack.channel()
        stub = pb_grpc.NearbyServiceStub(ch)
        try:
            sc = Stream(stub, c, metadata=stack.auth(c))
            sd = Stream(stub, d, metadata=stack.auth(d))
            for st, u in ((sc, c), (sd, d)):
                await st.open(*people[u].pos)
                await st.wait_for(lambda st: st.snapshots())
            # A claims to be B: the stream is A's, its report moves A, never B
            forged = Stream(stub, a, metadata=[*stack.auth(a), ("x-nearby-user-id", b)])
            await forged.open(*offset(*CITIES[0], 200))
            snap = (await forged.wait_for(lambda st: st.snapshots()))[0]
            assert [f.user_id for f in snap.friends] == [c]
            upd = await sc.wait_for(lambda st: st.updates(a))
            assert upd[-1].distance_meters == pytest.approx(100, abs=1)
            resp = await stub.ListNearbyFriends(
                pb.ListNearbyFriendsRequest(), metadata=stack.auth(d)
            )
            assert [f.user_id for f in resp.friends] == []  # B is still 20 km away
            assert b not in str(sd.messages) and a not in str(sd.messages)
            for st in (sc, sd, forged):
                await st.close()
        finally:
            await ch.close()


async def test_idle_stream_outlives_envoys_stream_idle_timeout(settings: Settings) -> None:
    """Heartbeats (HEARTBEAT_S) keep a silent stream alive past stream_idle_timeout."""
    s = fast_settings(settings, heartbeat_s=0.25)
    async with edge_stack(s, stream_idle_timeout_s=1.0) as stack:
        (a,) = (uid("a"),)
        await build(stack, {a: Person(a, 0, CITIES[0])})
        ch = stack.channel()
        try:
            st = Stream(pb_grpc.NearbyServiceStub(ch), a, metadata=stack.auth(a))
            await st.open(*CITIES[0])
            await st.wait_for(lambda st: st.snapshots())
            beats = await st.wait_for(
                lambda st: [m for m in st.messages if m.WhichOneof("kind") == "heartbeat"][11:],
                within=20,
            )
            assert beats  # 12 x 0.25 s: three times the idle timeout, nothing sent by us
            assert not st.done.is_set() and st.error is None
            await st.move(*offset(*CITIES[0], 10))  # and it still works both ways
            await st.close()
        finally:
            await ch.close()
