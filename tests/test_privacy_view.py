"""The privacy model and the friend view's privacy rules on their own (pure,
milliseconds): who gets which access, the coarse cell and rounded distance,
timers, versions, and a randomised run holding the view's invariants (an
approximate friend is only ever held as a cell; a friend without access not
at all)."""

from __future__ import annotations

import datetime as dt
import random

import h3
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from nearby.v1 import nearby_service_pb2 as pb

from fanout_svc.view import FriendView
from mesh.errors import InvalidArgument
from mesh.sharing import (
    ALL_EXCEPT,
    ALL_FRIENDS,
    APPROXIMATE,
    DEFAULT,
    DISTANCE_STEP_M,
    H3_RESOLUTION,
    NONE,
    ONLY,
    PRECISE,
    Policy,
    coarse,
    coarse_distance,
    expiry,
    parse,
)
from tests.support.fanout import ORIGIN, offset

NOT_SHARED = -pb.FRIEND_GONE_REASON_NOT_SHARED
OUT_OF_RANGE = -pb.FRIEND_GONE_REASON_OUT_OF_RANGE


def policy(
    version: int = 1,
    audience: int = ALL_FRIENDS,
    members: tuple[str, ...] = (),
    default: int = PRECISE,
    rules: dict[str, tuple[int, int]] | None = None,
) -> Policy:
    return Policy(version, audience, frozenset(members), default, rules or {})


class Owner:
    def owed(self) -> None: ...

    def dropped(self) -> None: ...

    def overflowed(self) -> None: ...


def view(*friends: str) -> FriendView:
    v = FriendView("me", Owner(), radius_m=8047.0, hysteresis_m=200.0, queue_max=1000)
    v.on_my_move(*ORIGIN)
    v.set_friends({f: f.upper() for f in friends})
    v.finish_load()
    return v


def is_cell_centre(lat: float, lng: float) -> bool:
    clat, clng = h3.cell_to_latlng(h3.latlng_to_cell(lat, lng, H3_RESOLUTION))
    return bool(abs(clat - lat) < 1e-9 and abs(clng - lng) < 1e-9)


def test_access_by_audience_rules_and_expiry() -> None:
    assert DEFAULT.access("x", 0) == (PRECISE, 0)
    only = policy(audience=ONLY, members=("b",), default=APPROXIMATE)
    assert only.access("b", 0) == (APPROXIMATE, 0) and only.access("c", 0) == (NONE, 0)
    but = policy(audience=ALL_EXCEPT, members=("b",))
    assert but.access("b", 0) == (NONE, 0) and but.access("c", 0) == (PRECISE, 0)
    # a rule beats the audience while it lasts, and says when it ends
    ruled = policy(audience=ONLY, members=(), rules={"c": (PRECISE, 1000), "d": (APPROXIMATE, 0)})
    assert ruled.access("c", 999) == (PRECISE, 1000)
    assert ruled.access("c", 1000) == (NONE, 0)
    assert ruled.access("d", 10**15) == (APPROXIMATE, 0)
    # the wire form round-trips
    back = parse(ruled.to_proto().SerializeToString())
    assert (back.version, back.audience, back.members, back.default, back.rules) == (
        1,
        ONLY,
        frozenset(),
        PRECISE,
        ruled.rules,
    )


def test_coarse_position_and_distance() -> None:
    rng = random.Random(1)
    for _ in range(200):
        lat, lng = rng.uniform(-80, 80), rng.uniform(-179, 179)
        c = coarse(lat, lng)
        assert is_cell_centre(*c)
        assert coarse(*c) == pytest.approx(c, abs=1e-12)  # a centre stays itself
        assert coarse(lat, lng) == c  # the memo answers the same
    assert coarse_distance(0) == DISTANCE_STEP_M
    assert coarse_distance(500) == 500 and coarse_distance(500.01) == 1000
    assert coarse_distance(7777) == 8000


def test_timer_limits() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert expiry("", None, None, now) is None
    assert expiry("", None, duration_pb2.Duration(seconds=3 * 3600), now) == now + dt.timedelta(
        hours=3
    )
    past = timestamp_pb2.Timestamp()
    past.FromDatetime(now - dt.timedelta(seconds=1))
    with pytest.raises(InvalidArgument, match=r"^expire_time: must be in the future"):
        expiry("", past, None, now)
    with pytest.raises(InvalidArgument, match=r"^ttl: is more than 7 days"):
        expiry("", None, duration_pb2.Duration(seconds=7 * 86400 + 1), now)
    assert expiry("", None, duration_pb2.Duration(seconds=7 * 86400), now) is not None


def test_unknown_policy_shows_nothing_then_access_comes_and_goes() -> None:
    v = view("b")
    near = offset(*ORIGIN, 1000)
    v.on_moved("b", *near, 1, 1)
    assert v.take_owed() == {} and v.friends["b"].lat is None  # fail closed
    assert v.set_policy("b", policy(1), 0) is True  # gained: the stream fetches b
    v.on_moved("b", *near, 2, 1)
    assert v.take_owed() == {"b": 1} and v.entries()[0].lat == near[0]
    # loses access: FriendGone(NOT_SHARED), the position is forgotten
    assert v.set_policy("b", policy(2, ONLY), 0) is False
    assert v.take_owed() == {"b": NOT_SHARED}
    assert v.friends["b"].lat is None and v.entries() == []
    v.on_moved("b", *near, 3, 1)
    v.on_my_move(*offset(*ORIGIN, 10))
    assert v.take_owed() == {} and v.entries() == []
    # an older policy (a read that lost the race with the event) is ignored
    assert v.set_policy("b", policy(1), 0) is False and v.friends["b"].access == NONE


def test_approximate_holds_only_the_cell() -> None:
    v = view("b")
    v.set_policy("b", policy(1), 0)
    exact = offset(*ORIGIN, 2100, 700)
    v.on_moved("b", *exact, 1, 1)
    v.take_owed()
    # precise -> approximate: the client is sent the cell at once
    v.set_policy("b", policy(2, default=APPROXIMATE), 0)
    assert v.take_owed() == {"b": 0}
    f = v.friends["b"]
    assert f.lat is not None and is_cell_centre(f.lat, f.lng) and (f.lat, f.lng) != exact
    assert f.dist % DISTANCE_STEP_M == 0
    (e,) = v.entries()
    assert e.approximate and e.distance == f.dist
    v.on_moved("b", *offset(*ORIGIN, 2150, 700), 2, 1)
    assert is_cell_centre(v.friends["b"].lat or 0.0, v.friends["b"].lng)
    v.on_my_move(*offset(*ORIGIN, 333))
    assert v.friends["b"].dist % DISTANCE_STEP_M == 0
    # approximate -> precise: the cell stays until the exact position is read
    assert v.set_policy("b", policy(3), 0) is True
    v.take_owed()
    v.on_moved("b", *exact, 2, 1)
    assert (v.friends["b"].lat, v.friends["b"].lng) == exact


def test_precision_drop_can_take_a_friend_out_of_range() -> None:
    v = view("b", "c")
    for fid in ("b", "c"):
        v.set_policy(fid, policy(1), 0)
    # b in the hysteresis band (8.1 km exact; its cell rounds to 8.5 km), c at 7 km
    v.on_moved("b", *offset(*ORIGIN, 8000), 1, 1)
    v.on_moved("b", *offset(*ORIGIN, 8100), 2, 1)
    v.on_moved("c", *offset(*ORIGIN, 7000), 1, 1)
    assert v.friends["b"].inside and v.friends["c"].inside
    v.take_owed()
    for fid in ("b", "c"):
        v.set_policy(fid, policy(2, default=APPROXIMATE), 0)
    assert v.friends["b"].dist == 8500 and v.friends["c"].dist == 7000
    assert v.take_owed() == {"b": OUT_OF_RANGE, "c": 0}
    assert not v.friends["b"].inside and v.friends["c"].inside


def test_review_ends_rules_on_time_and_loading_owes_nothing() -> None:
    v = view("b", "c")
    p = policy(1, ONLY, ("c",), APPROXIMATE, rules={"me": (PRECISE, 5000)})
    assert v.set_policy("b", p, 1000) is True and v.review_ms == 5000
    v.on_moved("b", *offset(*ORIGIN, 100), 1, 1)
    assert v.friends["b"].access == PRECISE
    v.take_owed()
    assert v.review(4999) == [] and v.friends["b"].access == PRECISE and v.review_ms == 5000
    assert v.review(5000) == [] and v.review_ms == 0  # ends: not in the audience
    assert v.take_owed() == {"b": NOT_SHARED} and v.friends["b"].lat is None
    # during a load nothing is owed and nothing is fetched (the load reads)
    v.begin_load()
    assert v.set_policy("c", policy(2), 0) is False
    assert v.owed == {}


def test_random_runs_keep_the_invariants() -> None:
    rng = random.Random(11)
    friends = [f"f{i}" for i in range(12)]
    v = view(*friends)
    version = 0
    for step in range(3000):
        op = rng.random()
        fid = rng.choice(friends)
        if op < 0.15:
            version += 1
            members = tuple(rng.sample([*friends, "me"], rng.randint(0, 5)))
            rules = {"me": (rng.choice((PRECISE, APPROXIMATE)), rng.choice((0, step + 5)))}
            p = policy(
                version if rng.random() < 0.9 else max(0, version - 3),
                rng.choice((ALL_FRIENDS, ONLY, ALL_EXCEPT)),
                members,
                rng.choice((PRECISE, APPROXIMATE)),
                rules if rng.random() < 0.3 else None,
            )
            v.set_policy(fid, p, step)
        elif op < 0.2:
            v.review(step)
        elif op < 0.3:
            v.on_my_move(*offset(*ORIGIN, rng.uniform(-3000, 3000), rng.uniform(-3000, 3000)))
        elif op < 0.33:
            v.on_gone(fid, pb.FRIEND_GONE_REASON_OFFLINE)
        else:
            pos = offset(*ORIGIN, rng.uniform(-9000, 9000), rng.uniform(-9000, 9000))
            v.on_moved(fid, *pos, step, 1)
        if rng.random() < 0.2:
            v.take_owed()
        for f in v.friends.values():
            if f.access == NONE:
                assert f.lat is None and not f.inside
            elif f.access == APPROXIMATE and f.lat is not None:
                assert is_cell_centre(f.lat, f.lng) and f.dist % DISTANCE_STEP_M == 0
        for e in v.entries():
            assert v.friends[e.user_id].access != NONE
