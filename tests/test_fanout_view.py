"""The friend view on its own (no gRPC, no asyncio, no Redis): hysteresis at
the band edges, own moves, the out-of-order guard, offline/hidden forgetting
the position, unfriend, resync, paging and the coalescing queue."""

from __future__ import annotations

import pytest
from nearby.v1 import nearby_service_pb2 as pb

from fanout_svc.view import FriendView
from mesh.geo import distance_m
from mesh.sharing import DEFAULT
from tests.support.fanout import ORIGIN, offset

RADIUS = 8047.0
HYSTERESIS = 200.0
OUT_OF_RANGE = -pb.FRIEND_GONE_REASON_OUT_OF_RANGE
OFFLINE = pb.FRIEND_GONE_REASON_OFFLINE
HIDDEN = pb.FRIEND_GONE_REASON_HIDDEN
UNFRIENDED = -pb.FRIEND_GONE_REASON_UNFRIENDED


class Owner:
    """Counts the view's callbacks."""

    def __init__(self) -> None:
        self.owed_calls = 0
        self.drops = 0
        self.overflows = 0

    def owed(self) -> None:
        self.owed_calls += 1

    def dropped(self) -> None:
        self.drops += 1

    def overflowed(self) -> None:
        self.overflows += 1


def make(
    friends: dict[str, str] | None = None,
    *,
    radius: float = RADIUS,
    hysteresis: float = HYSTERESIS,
    queue_max: int = 1000,
) -> tuple[FriendView, Owner]:
    owner = Owner()
    view = FriendView("me", owner, radius_m=radius, hysteresis_m=hysteresis, queue_max=queue_max)
    view.on_my_move(*ORIGIN)
    wanted = friends if friends is not None else {"b": "B", "c": "C"}
    view.set_friends(wanted)
    for fid in wanted:  # what the stream does with the friends' policies it read
        view.set_policy(fid, DEFAULT, 0)
    view.finish_load()
    return view, owner


def north(metres: float) -> tuple[float, float]:
    return offset(*ORIGIN, metres)


def at(view: FriendView, fid: str, metres: float, t_ms: int, pub_ms: int = 1) -> None:
    view.on_moved(fid, *north(metres), t_ms, pub_ms)


def listed(view: FriendView) -> list[str]:
    return [e.user_id for e in sorted(view.entries())]


def test_enter_at_exactly_the_radius_not_beyond() -> None:
    edge = north(5000.0)
    exact = distance_m(*ORIGIN, *edge)
    view, _ = make(radius=exact)
    view.on_moved("c", *north(5000.01), 1, 1)  # 1 cm outside: does not enter
    assert view.take_owed() == {} and listed(view) == []
    view.on_moved("b", *edge, 1, 1)  # exactly the radius: enters
    assert view.take_owed() == {"b": 1}
    assert listed(view) == ["b"]


def test_inside_the_band_stays_and_leaves_only_beyond_radius_plus_hysteresis() -> None:
    view, _ = make()
    at(view, "b", 100, 1)
    assert view.take_owed() == {"b": 1}
    leave = RADIUS + HYSTERESIS
    for t, d in enumerate((RADIUS + 1, leave - 0.01, RADIUS - 1, leave - 0.01), start=2):
        at(view, "b", d, t, pub_ms=t)
        assert view.take_owed() == {"b": t}, d  # an update: still in the list
        assert listed(view) == ["b"]
    at(view, "b", leave + 0.01, 9)
    assert view.take_owed() == {"b": OUT_OF_RANGE}
    assert listed(view) == []
    # outside again, a friend inside the band does not enter
    at(view, "b", leave - 0.01, 10)
    at(view, "b", RADIUS + 0.01, 11)
    assert view.take_owed() == {} and listed(view) == []
    at(view, "b", RADIUS - 0.01, 12, pub_ms=12)
    assert view.take_owed() == {"b": 12}


def test_own_moves_bring_friends_in_and_out_without_them_moving() -> None:
    view, _ = make()
    at(view, "b", 20_000, 1)  # 20 km north: outside
    at(view, "c", 1_000, 1)  # inside
    view.take_owed()
    view.on_my_move(*north(19_000))  # now b is 1 km away, c 18 km
    assert view.take_owed() == {"b": 0, "c": OUT_OF_RANGE}
    assert listed(view) == ["b"]
    b = view.friends["b"]
    assert b.dist == pytest.approx(1_000, abs=1)
    # moving within the band keeps b; beyond it b leaves
    view.on_my_move(*north(20_000 - RADIUS - HYSTERESIS / 2))
    assert view.take_owed() == {} and listed(view) == ["b"]
    view.on_my_move(*north(20_000 - RADIUS - HYSTERESIS - 1))
    assert view.take_owed() == {"b": OUT_OF_RANGE}
    # b is now in the band but out of the list: my move within the band does not bring b in
    view.on_my_move(*north(20_000 - RADIUS - HYSTERESIS / 2))
    assert view.take_owed() == {} and listed(view) == []
    view.on_my_move(*north(20_000 - RADIUS + 1))
    assert view.take_owed() == {"b": 0}


def test_an_older_fix_after_a_newer_one_is_ignored() -> None:
    view, _ = make()
    at(view, "b", 500, t_ms=2_000)
    view.take_owed()
    at(view, "b", 7_000, t_ms=1_000)  # older, arriving late
    assert view.take_owed() == {}
    assert view.friends["b"].t_ms == 2_000
    assert view.friends["b"].dist == pytest.approx(500, abs=1)
    at(view, "b", 9_000, t_ms=1_500)  # older too, would move b out of range
    assert view.take_owed() == {} and listed(view) == ["b"]
    at(view, "b", 600, t_ms=2_000)  # same time: taken
    assert view.take_owed() == {"b": 1}


@pytest.mark.parametrize("reason", [OFFLINE, HIDDEN])
def test_offline_or_hidden_friend_never_comes_back_with_the_old_position(reason: int) -> None:
    view, _ = make()
    at(view, "b", 500, 1)  # in the list
    at(view, "c", 12_000, 1)  # known, outside the list
    view.take_owed()
    view.on_gone("b", reason)
    view.on_gone("c", reason)
    assert view.take_owed() == {"b": -reason}  # only the one the client had
    # the viewer moves next to where both were: neither reappears
    view.on_my_move(*north(12_000))
    view.on_my_move(*north(400))
    assert view.take_owed() == {}
    assert listed(view) == [] and view.page("", 20).total == 0
    # their next report brings them back
    at(view, "c", 300, 2, pub_ms=7)
    assert view.take_owed() == {"c": 7}


def test_gone_replaces_a_queued_update_and_nothing_leaks_at_write_time() -> None:
    view, owner = make()
    at(view, "b", 500, 1, pub_ms=5)
    view.on_gone("b", HIDDEN)
    assert view.take_owed() == {"b": -HIDDEN}
    assert owner.drops == 1
    assert view.friends["b"].lat is None


def test_unfriend_owes_unfriended_and_ignores_them_afterwards() -> None:
    view, _ = make()
    at(view, "b", 500, 1)
    at(view, "c", 30_000, 1)
    view.take_owed()
    assert view.remove_friend("b") is True
    assert view.remove_friend("c") is True  # not in the list: nothing owed
    assert view.remove_friend("nobody") is False
    assert view.take_owed() == {"b": UNFRIENDED}
    at(view, "b", 10, 5)
    view.on_gone("b", OFFLINE)
    view.on_my_move(*north(20))
    assert view.take_owed() == {} and listed(view) == []
    # a queued event of a friend removed before the write becomes UNFRIENDED
    assert view.add_friend("b", "B") is True
    assert view.set_policy("b", DEFAULT, 0) is True  # the stream fetches b
    at(view, "b", 10, 6)
    view.remove_friend("b")
    assert view.take_owed() == {"b": UNFRIENDED}
    view.add_friend("b", "B")
    view.set_policy("b", DEFAULT, 0)
    at(view, "b", 10, 7)
    view.take_owed()
    at(view, "b", 30_000, 8)  # queued: OUT_OF_RANGE
    view.remove_friend("b")
    assert view.take_owed() == {"b": UNFRIENDED}


def test_add_friend_ignores_self_and_known_friends() -> None:
    view, _ = make()
    assert view.add_friend("me", "Me") is False
    assert view.add_friend("", "") is False
    assert view.add_friend("b", "Bee") is False
    assert view.friends["b"].name == "Bee"
    assert view.add_friend("d", "D") is True


def test_resync_replaces_everything() -> None:
    view, _ = make({"b": "B", "c": "C", "d": "D", "f": "F"})
    for fid in ("b", "c", "d", "f"):
        at(view, fid, 500, 1)
    view.begin_load()
    # during the load: positions are recorded, nothing is owed
    at(view, "b", 900, 2)
    view.on_gone("c", OFFLINE)
    view.on_my_move(*north(100))
    added, removed = view.set_friends({"b": "B2", "c": "C", "e": "E", "f": "F", "me": "Me"})
    assert added == ["e"] and removed == ["d"]
    # positions are read again; c, e and f (no longer active) have none in the cache
    at(view, "b", 700, 3)
    view.finish_load()
    assert view.take_owed() == {}
    assert listed(view) == ["b"]
    (b,) = view.entries()
    assert b.display_name == "B2" and b.distance == pytest.approx(600, abs=1)
    assert set(view.friends) == {"b", "c", "e", "f"}


def test_pages_follow_distance_then_id() -> None:
    view, _ = make({f"f{i}": f"F{i}" for i in range(5)})
    for i, d in enumerate((300, 100, 200, 100, 400)):
        at(view, f"f{i}", d, 1)
    first = view.page("", 2)
    assert [e.user_id for e in first.entries] == ["f1", "f3"]
    assert first.total == 5 and first.next_token
    second = view.page(first.next_token, 2)
    assert [e.user_id for e in second.entries] == ["f2", "f0"]
    last = view.page(second.next_token, 2)
    assert [e.user_id for e in last.entries] == ["f4"] and last.next_token == ""


def test_queue_coalesces_by_friend_and_counts_drops() -> None:
    view, owner = make()
    at(view, "b", 100, 1, pub_ms=11)
    at(view, "b", 200, 2, pub_ms=12)
    at(view, "c", 300, 1, pub_ms=13)
    at(view, "b", 300, 3, pub_ms=14)
    assert owner.owed_calls == 1  # told once: the queue went from empty to not empty
    assert owner.drops == 2
    assert view.take_owed() == {"b": 14, "c": 13}
    assert view.friends["b"].t_ms == 3
    at(view, "c", 310, 2, pub_ms=15)
    assert owner.owed_calls == 2
    assert view.take_owed() == {"c": 15}


def test_queue_overflow_is_reported_once() -> None:
    view, owner = make({f"f{i}": "F" for i in range(6)}, queue_max=3)
    for i in range(3):
        at(view, f"f{i}", 100, 1)
    assert owner.overflows == 0
    at(view, "f0", 150, 2)  # replacing is not growing
    assert owner.overflows == 0
    at(view, "f3", 100, 1)
    at(view, "f4", 100, 1)
    assert owner.overflows == 1
    assert len(view.owed) == 5  # bounded by the friend count anyway


def test_loading_owes_nothing_and_clear_forgets_all() -> None:
    owner = Owner()
    view = FriendView("me", owner, radius_m=RADIUS, hysteresis_m=HYSTERESIS, queue_max=10)
    view.on_my_move(*ORIGIN)
    view.set_friends({"b": "B"})
    assert view.set_policy("b", DEFAULT, 0) is False  # loading: the load reads b
    at(view, "b", 100, 1)
    view.on_gone("b", OFFLINE)
    at(view, "b", 100, 2)
    assert view.owed == {} and owner.owed_calls == 0
    view.finish_load()
    assert listed(view) == ["b"]
    view.clear()
    assert view.friends == {} and view.owed == {}
