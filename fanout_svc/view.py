"""What one user knows of their friends, and what their client is owed.

Pure state, no gRPC and no asyncio: the stream (session.py) feeds it the
hub's callbacks, the user's own moves and the friend list it loads, and takes
what is owed when it writes. Rules:

- Hysteresis: a friend enters at distance <= radius and leaves only beyond
  radius + hysteresis; inside the band, whoever was in the list stays in it.
- Own moves: friends with known positions enter or leave without moving.
- Out-of-order guard: a fix older than the one held is ignored.
- Offline, hidden: the friend's position is forgotten at once (it must not
  come back when the user moves), and a friend in the list gets FriendGone.
- Loading (connect, resync): positions are recorded but nothing is owed; the
  snapshot that follows replaces everything the client had.
- What is owed coalesces by friend (`owed`: friend id -> newest event), so it
  holds at most one entry per friend; a replaced entry is a drop.
- Privacy (mesh/sharing.py): each friend has an access level, from their
  sharing policy, for this user. NONE until the policy is known and while it
  says so: nothing of the friend is kept (their position is forgotten) and a
  friend in the list gets FriendGone(NOT_SHARED). APPROXIMATE: the position
  is snapped to its cell on arrival, so only the cell centre and a rounded
  distance are ever held, compared or written out. A policy with a version
  older than the one held is ignored; `review_ms` is the next time a rule of
  a held policy ends (the stream calls `review`).

The view tells its owner (the stream) through the `Owner` callbacks: the
queue went from empty to not empty, an entry was replaced, the queue grew
past `queue_max` (once: the client fell behind).
"""

from __future__ import annotations

from typing import Protocol

from nearby.v1 import nearby_service_pb2 as pb

from fanout_svc.nearby import Entry, Page, page_of
from mesh.geo import distance_m
from mesh.sharing import APPROXIMATE, NONE, PRECISE, Policy, coarse, coarse_distance

OUT_OF_RANGE = pb.FRIEND_GONE_REASON_OUT_OF_RANGE
UNFRIENDED = pb.FRIEND_GONE_REASON_UNFRIENDED
NOT_SHARED = pb.FRIEND_GONE_REASON_NOT_SHARED


class Owner(Protocol):
    """Who is told about changes of the queue (all synchronous)."""

    def owed(self) -> None:
        """The queue was empty and now holds something."""
        ...

    def dropped(self) -> None:
        """A queued event was replaced by a newer one of the same friend."""
        ...

    def overflowed(self) -> None:
        """The queue holds more than queue_max friends (called once)."""
        ...


class Friend:
    """A friend as this user knows them; lat is None while the position is
    unknown. For an APPROXIMATE friend, (lat, lng) is the cell centre and
    dist the rounded distance to it."""

    __slots__ = ("access", "dist", "inside", "lat", "lng", "name", "policy", "t_ms")

    def __init__(self, name: str) -> None:
        self.name = name
        self.lat: float | None = None
        self.lng = 0.0
        self.t_ms = 0
        self.dist = 0.0
        self.inside = False
        self.access = NONE
        self.policy: Policy | None = None


class FriendView:
    """One user's friends, their nearby list and the events owed to the client.

    `owed` values: >= 0 a FriendUpdate (the LocationEvent's published_at_ms, 0
    when no pub/sub event caused it), < 0 a FriendGone (minus its reason).
    """

    __slots__ = (
        "friends",
        "lat",
        "leave_m",
        "lng",
        "loading",
        "overflowed",
        "owed",
        "owner",
        "queue_max",
        "radius_m",
        "review_ms",
        "user_id",
    )

    def __init__(
        self,
        user_id: str,
        owner: Owner,
        *,
        radius_m: float,
        hysteresis_m: float,
        queue_max: int,
    ) -> None:
        self.user_id = user_id
        self.owner = owner
        self.radius_m = radius_m
        self.leave_m = radius_m + hysteresis_m
        self.queue_max = queue_max
        self.lat = 0.0
        self.lng = 0.0
        self.friends: dict[str, Friend] = {}
        self.owed: dict[str, int] = {}
        self.loading = True
        self.overflowed = False
        self.review_ms = 0

    # --- friends' events (the hub calls these once per message) -----------
    def on_moved(self, user_id: str, lat: float, lng: float, t_ms: int, pub_ms: int) -> None:
        f = self.friends.get(user_id)
        if f is None or (f.lat is not None and t_ms < f.t_ms):
            return
        access = f.access
        if access == PRECISE:
            d = distance_m(self.lat, self.lng, lat, lng)
        elif access == APPROXIMATE:
            lat, lng = coarse(lat, lng)
            d = coarse_distance(distance_m(self.lat, self.lng, lat, lng))
        else:
            return  # not shared with this user: nothing of them is kept
        f.lat, f.lng, f.t_ms = lat, lng, t_ms
        f.dist = d
        if self.loading:
            return
        if d <= self.radius_m or (f.inside and d <= self.leave_m):
            f.inside = True
            self._owe(user_id, pub_ms)
        elif f.inside:
            f.inside = False
            self._owe(user_id, -OUT_OF_RANGE)

    def on_gone(self, user_id: str, reason: int) -> None:
        """reason: a FriendGoneReason (OFFLINE, HIDDEN). The position is forgotten."""
        f = self.friends.get(user_id)
        if f is None:
            return
        f.lat = None
        if f.inside:
            f.inside = False
            if not self.loading:
                self._owe(user_id, -reason)

    # --- the user's own moves -----------------------------------------------
    def on_my_move(self, lat: float, lng: float) -> None:
        """Friends with known positions may enter or leave without moving."""
        self.lat, self.lng = lat, lng
        if self.loading:
            return
        radius, leave = self.radius_m, self.leave_m
        for fid, f in self.friends.items():
            if f.lat is None:
                continue
            d = distance_m(lat, lng, f.lat, f.lng)
            if f.access == APPROXIMATE:
                d = coarse_distance(d)
            f.dist = d
            if f.inside:
                if d > leave:
                    f.inside = False
                    self._owe(fid, -OUT_OF_RANGE)
            elif d <= radius:
                f.inside = True
                self._owe(fid, 0)

    # --- friends' sharing policies -------------------------------------------
    def set_policy(self, fid: str, policy: Policy, now_ms: int) -> bool:
        """A friend's (new) policy. True when the caller must fetch the friend's
        cached location: access was gained, or raised to PRECISE (only the
        cell is held). A policy older than the one held is ignored."""
        f = self.friends.get(fid)
        if f is None:
            return False
        held = f.policy
        if held is not None and policy.version < held.version:
            return False
        f.policy = policy
        level, until = policy.access(self.user_id, now_ms)
        if until and (not self.review_ms or until < self.review_ms):
            self.review_ms = until
        return self._set_access(fid, f, level)

    def review(self, now_ms: int) -> list[str]:
        """Rules of held policies may have ended: recompute every friend's
        access; returns the friends to fetch (see set_policy)."""
        self.review_ms = 0
        fetch = []
        for fid, f in self.friends.items():
            policy = f.policy
            if policy is None:
                continue
            level, until = policy.access(self.user_id, now_ms)
            if until and (not self.review_ms or until < self.review_ms):
                self.review_ms = until
            if self._set_access(fid, f, level):
                fetch.append(fid)
        return fetch

    def _set_access(self, fid: str, f: Friend, level: int) -> bool:
        old = f.access
        if level == old:
            return False
        f.access = level
        if level == NONE:
            f.lat = None
            if f.inside:
                f.inside = False
                if not self.loading:
                    self._owe(fid, -NOT_SHARED)
            return False
        if old == NONE:
            return not self.loading
        if level == APPROXIMATE and f.lat is not None:
            # PRECISE -> APPROXIMATE: the exact position is dropped for its cell
            f.lat, f.lng = coarse(f.lat, f.lng)
            f.dist = coarse_distance(distance_m(self.lat, self.lng, f.lat, f.lng))
            if f.inside and not self.loading:
                if f.dist <= self.leave_m:
                    self._owe(fid, 0)
                else:
                    f.inside = False
                    self._owe(fid, -OUT_OF_RANGE)
            return False
        # APPROXIMATE -> PRECISE: the cell stays until the exact position is read
        return not self.loading

    # --- the friend list ------------------------------------------------------
    def add_friend(self, fid: str, name: str) -> bool:
        """True when fid is a new friend (the caller subscribes and fetches them)."""
        if fid == self.user_id or not fid:
            return False
        f = self.friends.get(fid)
        if f is not None:
            f.name = name
            return False
        self.friends[fid] = Friend(name)
        return True

    def remove_friend(self, fid: str) -> bool:
        """True when fid was a friend; a client that knew of them is owed UNFRIENDED."""
        f = self.friends.pop(fid, None)
        if f is None:
            return False
        if f.inside or fid in self.owed:
            self._owe(fid, -UNFRIENDED)
        return True

    def begin_load(self) -> None:
        """A (re)load starts: positions keep arriving, nothing is owed until finish_load."""
        self.loading = True

    def set_friends(self, wanted: dict[str, str]) -> tuple[list[str], list[str]]:
        """Replace the friend list (id -> display name); returns (added, removed).

        Known positions are forgotten: the caller reads them again."""
        friends = self.friends
        removed = [fid for fid in friends if fid not in wanted]
        for fid in removed:
            del friends[fid]
        added = []
        for fid, name in wanted.items():
            if fid == self.user_id:
                continue
            f = friends.get(fid)
            if f is None:
                friends[fid] = Friend(name)
                added.append(fid)
            else:
                f.name = name
                f.lat = None
        return added, removed

    def finish_load(self) -> None:
        """Fresh inside flags (plain radius) and an empty queue: a snapshot follows."""
        self.loading = False
        radius = self.radius_m
        for f in self.friends.values():
            if f.lat is None:
                f.inside = False
            else:
                d = distance_m(self.lat, self.lng, f.lat, f.lng)
                f.dist = coarse_distance(d) if f.access == APPROXIMATE else d
                f.inside = f.dist <= radius
        self.owed.clear()

    # --- reading ----------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """The nearby list, in no particular order."""
        return [
            Entry(f.dist, fid, f.name, f.lat, f.lng, f.t_ms, f.access == APPROXIMATE)
            for fid, f in self.friends.items()
            if f.inside and f.lat is not None and f.access
        ]

    def page(self, token: str, size: int) -> Page:
        return page_of(self.entries(), token, size)

    def take_owed(self) -> dict[str, int]:
        """Everything owed, in the order it was first queued; the queue is empty after."""
        owed, self.owed = self.owed, {}
        return owed

    def clear(self) -> None:
        """The stream is over: hold nothing."""
        self.friends.clear()
        self.owed.clear()

    # --- the queue ----------------------------------------------------------------
    def _owe(self, fid: str, code: int) -> None:
        owed = self.owed
        if fid in owed:
            owed[fid] = code
            self.owner.dropped()
            return
        owed[fid] = code
        n = len(owed)
        if n == 1:
            self.owner.owed()
        elif n > self.queue_max and not self.overflowed:
            self.overflowed = True
            self.owner.overflowed()
