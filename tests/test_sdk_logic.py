"""SDK pure logic: the nearby view and the reconnect backoff (no server)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from nearby import (
    Backoff,
    BackoffPolicy,
    FriendLeft,
    FriendMoved,
    NearbyFriend,
    NearbyView,
    Page,
    Snapshot,
    distance_m,
)
from nearby.v1 import geo_pb2
from nearby.v1 import nearby_service_pb2 as pb

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def friend(uid: str, distance: float, lat: float = 0.0, lng: float = 0.0) -> NearbyFriend:
    return NearbyFriend(uid, uid.upper(), lat, lng, distance, T0)


def snapshot(*friends: NearbyFriend, total: int | None = None, token: str = "") -> Snapshot:
    return Snapshot(tuple(friends), len(friends) if total is None else total, token, 8047.0)


def ids(view: NearbyView) -> list[str]:
    return [f.user_id for f in view.friends]


# -- the view ---------------------------------------------------------------


def test_snapshot_then_events_in_order_keep_the_list_sorted() -> None:
    view = NearbyView()
    view.apply(snapshot(friend("b", 200), friend("a", 500)))
    assert ids(view) == ["b", "a"]
    view.apply(FriendMoved(friend("c", 100)))  # newcomer, nearest
    view.apply(FriendMoved(friend("b", 900)))  # moved away, still inside
    assert ids(view) == ["c", "a", "b"]
    assert view.total_size == 3
    view.apply(FriendLeft("a", "OUT_OF_RANGE"))
    assert ids(view) == ["c", "b"]
    assert view.total_size == 2
    assert view.get("b") == friend("b", 900)


def test_equal_distances_are_ordered_by_user_id() -> None:
    view = NearbyView()
    view.apply(snapshot(friend("z", 10), friend("m", 10), friend("a", 10)))
    view.apply(FriendMoved(friend("b", 10)))
    assert ids(view) == ["a", "b", "m", "z"]


def test_a_new_snapshot_replaces_everything() -> None:
    view = NearbyView()
    view.apply(snapshot(friend("a", 1), friend("b", 2)))
    view.apply(FriendMoved(friend("c", 3)))
    view.apply(snapshot(friend("d", 4), total=7, token="t2"))
    assert ids(view) == ["d"]
    assert view.total_size == 7
    assert view.next_page_token == "t2"


def test_pages_extend_the_view_and_unknown_updates_do_not_inflate_the_count() -> None:
    view = NearbyView()
    view.apply(snapshot(friend("a", 1), friend("b", 2), total=4, token="p2"))
    assert not view.complete
    # An update of someone not yet paged in may be one of the 4: count unchanged.
    view.apply(FriendMoved(friend("d", 9)))
    assert view.total_size == 4
    view.apply(Page((friend("c", 3), friend("d", 4)), 4, ""))
    assert ids(view) == ["a", "b", "c", "d"]
    assert view.complete and view.total_size == 4 and view.next_page_token == ""
    # Now the list is complete: a new id is a newcomer.
    view.apply(FriendMoved(friend("e", 5)))
    assert view.total_size == 5


def test_departure_of_an_unpaged_friend_lowers_the_count() -> None:
    view = NearbyView()
    view.apply(snapshot(friend("a", 1), total=3, token="p2"))
    view.apply(FriendLeft("x", "OFFLINE"))
    assert view.total_size == 2 and ids(view) == ["a"]
    # Once complete, a departure of an unknown id changes nothing.
    view.apply(FriendLeft("y", "OFFLINE"))
    view.apply(FriendLeft("z", "OFFLINE"))
    assert view.total_size == 1


def test_leaving_twice_or_unknown_is_harmless() -> None:
    view = NearbyView()
    view.apply(snapshot(friend("a", 1)))
    assert view.apply_left("a") is True
    assert view.apply_left("a") is False
    assert view.friends == [] and view.total_size == 0


def test_recenter_recomputes_distances_and_order() -> None:
    view = NearbyView()
    # Two friends on the equator, 0.01° (~1.1 km) east and west of the origin.
    view.apply(snapshot(friend("e", 1112, 0.0, 0.01), friend("w", 1112, 0.0, -0.01)))
    view.recenter(0.0, 0.009)  # walk east, next to "e"
    assert ids(view) == ["e", "w"]
    e, w = view.friends
    assert e.distance_meters == pytest.approx(distance_m(0, 0.009, 0, 0.01))
    assert e.distance_meters < 120 < 2000 < w.distance_meters


def test_friend_conversion_from_proto() -> None:
    msg = pb.NearbyFriend(
        user_id="bob",
        display_name="Bob",
        position=geo_pb2.LatLng(latitude=52.5, longitude=13.4),
        distance_meters=1234.5,
    )
    msg.update_time.FromDatetime(T0)
    f = NearbyFriend.from_proto(msg)
    assert f == NearbyFriend("bob", "Bob", 52.5, 13.4, 1234.5, T0)
    assert f.updated_at.tzinfo is not None
    gone = FriendLeft.from_proto(
        pb.FriendGone(user_id="bob", reason=pb.FRIEND_GONE_REASON_UNFRIENDED)
    )
    assert (gone.user_id, gone.reason) == ("bob", "UNFRIENDED")


def test_haversine_matches_a_known_distance() -> None:
    # One degree of latitude is about 111.2 km on the mean sphere.
    assert distance_m(0, 0, 1, 0) == pytest.approx(111_195, rel=1e-4)
    assert distance_m(52.52, 13.405, 52.52, 13.405) == 0


# -- the backoff ------------------------------------------------------------


def test_backoff_ceiling_grows_geometrically_up_to_the_cap() -> None:
    policy = BackoffPolicy(initial_s=1.0, multiplier=2.0, max_s=30.0)
    assert [policy.ceiling(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert policy.ceiling(10_000) == 30  # no overflow


def test_backoff_delays_are_fully_jittered_within_bounds() -> None:
    policy = BackoffPolicy(initial_s=0.5, multiplier=1.6, max_s=5.0)
    backoff = Backoff(policy, random.Random(7))
    for attempt in range(1, 40):
        delays = []
        for _ in range(200):
            backoff.attempt = attempt - 1
            delays.append(backoff.next_delay())
        ceiling = policy.ceiling(attempt)
        assert all(0.0 <= d <= ceiling for d in delays)
        # Full jitter: spread over the whole [0, ceiling] range, not clustered
        # near the ceiling as with "equal" or proportional jitter.
        assert min(delays) < 0.1 * ceiling
        assert max(delays) > 0.9 * ceiling


def test_backoff_counts_attempts_resets_and_gives_up() -> None:
    backoff = Backoff(BackoffPolicy(max_attempts=3), random.Random(1))
    for expected in (1, 2, 3):
        assert not backoff.exhausted()
        backoff.next_delay()
        assert backoff.attempt == expected
    assert backoff.exhausted()
    backoff.reset()
    assert backoff.attempt == 0 and not backoff.exhausted()
    assert not Backoff(BackoffPolicy()).exhausted()


@pytest.mark.parametrize(
    "kwargs",
    [{"initial_s": 0}, {"multiplier": 0.5}, {"initial_s": 5, "max_s": 1}, {"max_attempts": 0}],
)
def test_backoff_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)  # type: ignore[arg-type]
