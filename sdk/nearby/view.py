"""The client-side nearby list, kept current from stream events.

Pure logic (no I/O): a session feeds it every snapshot, page and event in
arrival order, and reads the sorted list back.
"""

from __future__ import annotations

import math
from dataclasses import replace

from nearby.events import FriendLeft, FriendMoved, NearbyFriend, Page, Snapshot

__all__ = ["NearbyView", "distance_m"]

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG), as the server uses


def distance_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle (haversine) distance between two points, in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


class NearbyView:
    """Nearby friends by id, sorted on demand by (distance, user id).

    ``total_size`` follows the server's count. The snapshot carries only the
    first page: a friend update for someone not yet seen counts as a newcomer
    only when the whole list is known (otherwise it may be a friend on a page
    not fetched yet); a departure always lowers the count, since the server
    only reports departures of friends that were inside the radius.
    """

    def __init__(self) -> None:
        self._friends: dict[str, NearbyFriend] = {}
        self._sorted: list[NearbyFriend] | None = []
        self._total = 0
        self.radius_meters = 0.0
        self.next_page_token = ""

    @property
    def friends(self) -> list[NearbyFriend]:
        """The known nearby friends, nearest first (ties by user id). A copy."""
        if self._sorted is None:
            self._sorted = sorted(self._friends.values(), key=lambda f: f.sort_key)
        return list(self._sorted)

    @property
    def total_size(self) -> int:
        """How many friends are nearby in all (at least as many as are known)."""
        return max(self._total, len(self._friends))

    @property
    def complete(self) -> bool:
        """True when every nearby friend is in :attr:`friends`."""
        return len(self._friends) >= self._total

    def __len__(self) -> int:
        return len(self._friends)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._friends

    def get(self, user_id: str) -> NearbyFriend | None:
        """The friend with this id, if nearby and known."""
        return self._friends.get(user_id)

    def clear(self) -> None:
        """Forgets everything (the session is closed)."""
        self._friends.clear()
        self._sorted = []
        self._total = 0
        self.next_page_token = ""

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replaces the whole view with the snapshot."""
        self._friends = {f.user_id: f for f in snapshot.friends}
        self._sorted = None
        self._total = snapshot.total_size
        self.radius_meters = snapshot.radius_meters
        self.next_page_token = snapshot.next_page_token

    def apply_page(self, page: Page) -> None:
        """Adds a further page (the server's count is the fresher one)."""
        for f in page.friends:
            self._friends[f.user_id] = f
        self._sorted = None
        self._total = page.total_size
        self.next_page_token = page.next_page_token

    def apply_moved(self, friend: NearbyFriend) -> bool:
        """Adds or updates a friend; True when the friend was not known."""
        was_complete = self.complete
        is_new = friend.user_id not in self._friends
        self._friends[friend.user_id] = friend
        self._sorted = None
        if is_new and was_complete:
            self._total += 1
        return is_new

    def apply_left(self, user_id: str) -> bool:
        """Removes a friend; True when the friend was known."""
        was_complete = self.complete
        known = self._friends.pop(user_id, None) is not None
        self._sorted = None
        if known or not was_complete:
            self._total = max(0, self._total - 1)
        return known

    def apply(self, event: Snapshot | Page | FriendMoved | FriendLeft) -> None:
        """Applies any view-changing event."""
        if isinstance(event, Snapshot):
            self.apply_snapshot(event)
        elif isinstance(event, Page):
            self.apply_page(event)
        elif isinstance(event, FriendMoved):
            self.apply_moved(event.friend)
        else:
            self.apply_left(event.user_id)

    def recenter(self, latitude: float, longitude: float) -> None:
        """Recomputes distances from a new own position (the server reports
        enter/leave; this keeps the distances and the order of those who
        stay accurate until their next update)."""
        self._friends = {
            uid: replace(f, distance_meters=_distance(latitude, longitude, f))
            for uid, f in self._friends.items()
        }
        self._sorted = None


APPROXIMATE_STEP_M = 500.0
"""The server rounds an approximate friend's distance up to this step."""


def _distance(latitude: float, longitude: float, f: NearbyFriend) -> float:
    """The distance to a friend as the server would give it (approximate
    friends: to their cell centre, rounded up to the step)."""
    d = distance_m(latitude, longitude, f.latitude, f.longitude)
    if f.approximate:
        d = max(APPROXIMATE_STEP_M, math.ceil(d / APPROXIMATE_STEP_M) * APPROXIMATE_STEP_M)
    return d
