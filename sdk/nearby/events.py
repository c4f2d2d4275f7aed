"""Typed values the SDK hands out: nearby friends and stream events.

These are plain frozen dataclasses, decoupled from the generated protobuf
classes, so application code never touches wire types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import sharing_pb2

__all__ = [
    "Event",
    "FriendLeft",
    "FriendMoved",
    "NearbyFriend",
    "Page",
    "Reconnecting",
    "Snapshot",
    "now",
    "to_datetime",
]

_GONE_PREFIX = "FRIEND_GONE_REASON_"
_APPROXIMATE = sharing_pb2.PRECISION_APPROXIMATE


def now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


def to_datetime(ts: Timestamp) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return ts.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True)
class NearbyFriend:
    """A friend within the radius, as last reported by the server.

    Attributes:
        user_id: the friend's user id.
        display_name: the friend's display name.
        latitude: degrees, where the friend was at ``updated_at``.
        longitude: degrees, where the friend was at ``updated_at``.
        distance_meters: great-circle distance from you, in metres.
        updated_at: when the friend's device took this fix (UTC).
        approximate: the friend shares only an approximate location with
            you: latitude/longitude are the centre of the coarse cell holding
            them (about 1.4 km across an edge) and distance_meters is the
            distance to that centre rounded up to 500 m.
    """

    user_id: str
    display_name: str
    latitude: float
    longitude: float
    distance_meters: float
    updated_at: datetime
    approximate: bool = False

    @classmethod
    def from_proto(cls, msg: pb.NearbyFriend) -> NearbyFriend:
        """Converts a ``nearby.v1.NearbyFriend`` message."""
        return cls(
            user_id=msg.user_id,
            display_name=msg.display_name,
            latitude=msg.position.latitude,
            longitude=msg.position.longitude,
            distance_meters=msg.distance_meters,
            updated_at=to_datetime(msg.update_time),
            approximate=msg.precision == _APPROXIMATE,
        )

    @property
    def sort_key(self) -> tuple[float, str]:
        """The server's order: distance, then user id."""
        return (self.distance_meters, self.user_id)


@dataclass(frozen=True)
class Snapshot:
    """The nearby list as of (re)connection; it REPLACES everything known before.

    Attributes:
        friends: the first page, sorted by distance then user id.
        total_size: how many friends are nearby in all.
        next_page_token: pass to ``request_page`` for more; "" if none.
        radius_meters: the radius the server uses.
        received_at: when the SDK received it (UTC).
    """

    friends: tuple[NearbyFriend, ...]
    total_size: int
    next_page_token: str
    radius_meters: float
    received_at: datetime = field(default_factory=now)

    @classmethod
    def from_proto(cls, msg: pb.Snapshot) -> Snapshot:
        """Converts a ``nearby.v1.Snapshot`` message."""
        return cls(
            friends=tuple(NearbyFriend.from_proto(f) for f in msg.friends),
            total_size=msg.total_size,
            next_page_token=msg.next_page_token,
            radius_meters=msg.radius_meters,
        )


@dataclass(frozen=True)
class Page:
    """A further page of the nearby list (stream page request or unary call).

    Attributes:
        friends: this page, sorted by distance then user id.
        total_size: how many friends are nearby in all.
        next_page_token: token of the next page; "" at the end.
        received_at: when the SDK received it (UTC).
    """

    friends: tuple[NearbyFriend, ...]
    total_size: int
    next_page_token: str
    received_at: datetime = field(default_factory=now)

    @classmethod
    def from_proto(cls, msg: pb.NearbyFriendsPage | pb.ListNearbyFriendsResponse) -> Page:
        """Converts a ``NearbyFriendsPage`` or ``ListNearbyFriendsResponse``."""
        return cls(
            friends=tuple(NearbyFriend.from_proto(f) for f in msg.friends),
            total_size=msg.total_size,
            next_page_token=msg.next_page_token,
        )


@dataclass(frozen=True)
class FriendMoved:
    """A friend is within the radius: new in the list, or moved.

    Attributes:
        friend: the friend as now known.
        received_at: when the SDK received it (UTC).
        is_new: True when the friend was not in ``session.nearby`` before.
    """

    friend: NearbyFriend
    received_at: datetime = field(default_factory=now)
    is_new: bool = False


@dataclass(frozen=True)
class FriendLeft:
    """A friend left the nearby list.

    Attributes:
        user_id: the friend's user id.
        reason: "OUT_OF_RANGE", "OFFLINE", "UNFRIENDED", "HIDDEN" or
            "NOT_SHARED" (the friend no longer shares their location with you).
        received_at: when the SDK received it (UTC).
    """

    user_id: str
    reason: str
    received_at: datetime = field(default_factory=now)

    @classmethod
    def from_proto(cls, msg: pb.FriendGone) -> FriendLeft:
        """Converts a ``nearby.v1.FriendGone`` message."""
        name = pb.FriendGoneReason.Name(msg.reason)
        return cls(user_id=msg.user_id, reason=name.removeprefix(_GONE_PREFIX))


@dataclass(frozen=True)
class Reconnecting:
    """The stream ended; the session reconnects by itself after ``delay_s``.

    Attributes:
        attempt: consecutive attempts since the last healthy connection (1-based).
        delay_s: how long the session waits before reconnecting.
        cause: why, e.g. "UNAVAILABLE: ..." or "server asked: draining".
    """

    attempt: int
    delay_s: float
    cause: str


Event = Snapshot | FriendMoved | FriendLeft | Page | Reconnecting
"""Anything ``async for event in session`` yields."""
