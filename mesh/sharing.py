"""Location sharing: who sees a user and how precisely (the model, pure).

A user's `Policy` (mirrored from presence_svc's Postgres tables into
`sharing:{uid}` and published on `loc:{uid}` when it changes) decides, for
each friend, an access level:

1. a per-friend rule that has not expired: its precision (rules take
   precedence over the audience, so "precise for Bob for the next hour"
   works whatever the audience);
2. otherwise the audience: ALL_FRIENDS, ONLY the listed friends, or
   ALL_EXCEPT the listed ones; a friend in it gets the default precision,
   anyone else NONE.

Ghost mode is not part of the policy: it keeps its own flag (`hidden:{uid}`)
and beats everything (location_svc does not even publish a hidden user).

APPROXIMATE: the position is snapped to the centre of its H3 cell at
`H3_RESOLUTION` (7: hexagons of about 1.4 km edge, 5.2 km^2) and the
distance, computed from the receiver to that centre, is rounded up to a
multiple of `DISTANCE_STEP_M`. Both are functions of the cell alone, so
nothing finer than the cell reaches the receiver, in any message.
"""

from __future__ import annotations

import datetime as dt
import math

import h3
from google.protobuf import duration_pb2, timestamp_pb2
from nearby.v1 import sharing_pb2

from mesh.errors import invalid_field
from mesh.geo import distance_m
from mesh.internal.v1 import events_pb2

NONE, APPROXIMATE, PRECISE = 0, 1, 2
"""Access levels (ints: compared on the push path)."""

H3_RESOLUTION = 7
DISTANCE_STEP_M = 500.0
MAX_TIMER_S = 7 * 24 * 3600
"""The longest timer (ghost mode, a friend's rule): 7 days."""

ALL_FRIENDS = sharing_pb2.AUDIENCE_ALL_FRIENDS
ONLY = sharing_pb2.AUDIENCE_ONLY
ALL_EXCEPT = sharing_pb2.AUDIENCE_ALL_EXCEPT
PRECISION_PRECISE = sharing_pb2.PRECISION_PRECISE
PRECISION_APPROXIMATE = sharing_pb2.PRECISION_APPROXIMATE

LEVEL_OF: dict[int, int] = {PRECISION_PRECISE: PRECISE, PRECISION_APPROXIMATE: APPROXIMATE}
"""nearby.v1.Precision -> access level."""
PRECISION_OF: dict[int, sharing_pb2.Precision] = {
    PRECISE: PRECISION_PRECISE,
    APPROXIMATE: PRECISION_APPROXIMATE,
}


class Policy:
    """One user's sharing policy, immutable once built (shared by every
    stream of a process that watches the user)."""

    __slots__ = ("audience", "default", "members", "rules", "version")

    def __init__(
        self,
        version: int,
        audience: int,
        members: frozenset[str],
        default: int,
        rules: dict[str, tuple[int, int]],
    ) -> None:
        self.version = version
        self.audience = audience
        self.members = members
        self.default = default
        self.rules = rules  # friend id -> (level, expire_at_ms or 0)

    @classmethod
    def from_proto(cls, p: events_pb2.SharingPolicy) -> Policy:
        return cls(
            p.version,
            p.audience or ALL_FRIENDS,
            frozenset(p.audience_user_ids),
            LEVEL_OF.get(p.default_precision, PRECISE),
            {r.friend_id: (LEVEL_OF.get(r.precision, PRECISE), r.expire_at_ms) for r in p.rules},
        )

    def to_proto(self) -> events_pb2.SharingPolicy:
        out = events_pb2.SharingPolicy(
            version=self.version,
            audience=self.audience,  # type: ignore[arg-type]
            audience_user_ids=sorted(self.members),
            default_precision=PRECISION_OF[self.default],
        )
        for fid, (level, expire_ms) in sorted(self.rules.items()):
            out.rules.add(
                friend_id=fid,
                precision=PRECISION_OF[level],
                expire_at_ms=expire_ms,
            )
        return out

    def access(self, viewer: str, now_ms: int) -> tuple[int, int]:
        """(level for `viewer`, epoch ms at which it may change; 0: not by time)."""
        rule = self.rules.get(viewer)
        if rule is not None:
            level, expire_ms = rule
            if not expire_ms:
                return level, 0
            if expire_ms > now_ms:
                return level, expire_ms
        audience = self.audience
        if audience == ALL_FRIENDS:
            return self.default, 0
        listed = viewer in self.members
        if listed == (audience == ONLY):
            return self.default, 0
        return NONE, 0


DEFAULT = Policy(0, ALL_FRIENDS, frozenset(), PRECISE, {})
"""A user who never changed anything: every friend, precise."""


def parse(data: bytes) -> Policy:
    return Policy.from_proto(events_pb2.SharingPolicy.FromString(data))


# --- approximate positions ------------------------------------------------------

_last: list[float] = [math.nan, math.nan, 0.0, 0.0]


def coarse(lat: float, lng: float) -> tuple[float, float]:
    """The centre of the H3 cell holding (lat, lng).

    The hub hands one message to every listener in turn, so the same point is
    snapped many times in a row: the last answer is kept."""
    last = _last
    if last[0] == lat and last[1] == lng:
        return last[2], last[3]
    clat, clng = h3.cell_to_latlng(h3.latlng_to_cell(lat, lng, H3_RESOLUTION))
    last[0], last[1], last[2], last[3] = lat, lng, clat, clng
    return clat, clng


def coarse_distance(d: float) -> float:
    """A distance rounded up to a multiple of DISTANCE_STEP_M (at least one step)."""
    step = DISTANCE_STEP_M
    return max(step, math.ceil(d / step) * step)


def place(
    level: int, my_lat: float, my_lng: float, lat: float, lng: float
) -> tuple[float, float, float] | None:
    """What a receiver at (my_lat, my_lng) with access `level` may see of a
    position: (lat, lng, distance), or None (NONE). The stream's view does
    the same inline on the push path (fanout_svc/view.py)."""
    if level == PRECISE:
        return lat, lng, distance_m(my_lat, my_lng, lat, lng)
    if level == APPROXIMATE:
        clat, clng = coarse(lat, lng)
        return clat, clng, coarse_distance(distance_m(my_lat, my_lng, clat, clng))
    return None


# --- timers ------------------------------------------------------------------------


def expiry(
    field: str,
    expire_time: timestamp_pb2.Timestamp | None,
    ttl: duration_pb2.Duration | None,
    now: dt.datetime,
) -> dt.datetime | None:
    """The end of a timer given as an absolute time or a duration (AIP-214);
    None when neither is set. INVALID_ARGUMENT (naming the client's field) for
    a time not in the future or more than MAX_TIMER_S away."""
    if expire_time is not None:
        end = expire_time.ToDatetime(tzinfo=dt.UTC)
        name = f"{field}expire_time"
    elif ttl is not None:
        end = now + ttl.ToTimedelta()
        name = f"{field}ttl"
    else:
        return None
    if end <= now:
        raise invalid_field(name, "must be in the future")
    if (end - now).total_seconds() > MAX_TIMER_S:
        raise invalid_field(name, f"is more than {MAX_TIMER_S // 86400} days away (the maximum)")
    return end
