"""Typed results of the unary helpers (users, friendships, locations)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from nearby.events import to_datetime
from nearby.v1 import friend_service_pb2, location_service_pb2, sharing_pb2, user_pb2

__all__ = [
    "Friend",
    "FriendPrecision",
    "FriendRequest",
    "Location",
    "ReportResult",
    "SharingSettings",
    "User",
]


@dataclass(frozen=True)
class User:
    """A user's public profile.

    Attributes:
        user_id: the stable id (the ``sub`` of the user's token).
        display_name: the name shown to friends.
        create_time: when the user was created (UTC).
    """

    user_id: str
    display_name: str
    create_time: datetime

    @classmethod
    def from_proto(cls, msg: user_pb2.User) -> User:
        """Converts a ``nearby.v1.User`` message."""
        return cls(msg.user_id, msg.display_name, to_datetime(msg.create_time))


@dataclass(frozen=True)
class Friend:
    """One of your friends.

    Attributes:
        user: the friend's profile.
        friends_since: when the friendship began (UTC).
    """

    user: User
    friends_since: datetime

    @classmethod
    def from_proto(cls, msg: friend_service_pb2.Friend) -> Friend:
        """Converts a ``nearby.v1.Friend`` message."""
        return cls(User.from_proto(msg.user), to_datetime(msg.friends_since))


@dataclass(frozen=True)
class FriendRequest:
    """A pending friend request.

    Attributes:
        from_user: who sent it.
        to_user: who received it.
        create_time: when it was sent (UTC).
    """

    from_user: User
    to_user: User
    create_time: datetime

    @classmethod
    def from_proto(cls, msg: friend_service_pb2.FriendRequest) -> FriendRequest:
        """Converts a ``nearby.v1.FriendRequest`` message."""
        return cls(
            User.from_proto(msg.from_user),
            User.from_proto(msg.to_user),
            to_datetime(msg.create_time),
        )


@dataclass(frozen=True)
class Location:
    """A user's position at a moment.

    Attributes:
        user_id: whose location it is.
        latitude: degrees.
        longitude: degrees.
        recorded_at: when the device took the fix (UTC).
    """

    user_id: str
    latitude: float
    longitude: float
    recorded_at: datetime

    @classmethod
    def from_proto(cls, msg: location_service_pb2.Location) -> Location:
        """Converts a ``nearby.v1.Location`` message."""
        return cls(
            msg.user_id,
            msg.position.latitude,
            msg.position.longitude,
            to_datetime(msg.recorded_at),
        )


@dataclass(frozen=True)
class ReportResult:
    """What the server did with a reported location.

    Attributes:
        location: the location as stored.
        disposition: "ACCEPTED" (cached, shared, in history), "COALESCED"
            (too soon after the last shared update: cached only) or "STALE"
            (older than the cached one: history only).
    """

    location: Location
    disposition: str

    @classmethod
    def from_proto(cls, msg: location_service_pb2.ReportLocationResponse) -> ReportResult:
        """Converts a ``nearby.v1.ReportLocationResponse`` message."""
        name = location_service_pb2.ReportDisposition.Name(msg.disposition)
        return cls(Location.from_proto(msg.location), name.removeprefix("REPORT_DISPOSITION_"))


@dataclass(frozen=True)
class FriendPrecision:
    """How precisely one friend sees you, perhaps for a limited time.

    Attributes:
        friend_id: the friend.
        precision: "PRECISE" or "APPROXIMATE".
        expires_at: when the rule ends by itself (UTC); None: until cleared.
    """

    friend_id: str
    precision: str
    expires_at: datetime | None

    @classmethod
    def from_proto(cls, msg: sharing_pb2.FriendPrecision) -> FriendPrecision:
        """Converts a ``nearby.v1.FriendPrecision`` message."""
        return cls(
            msg.friend_id,
            _precision(msg.precision),
            to_datetime(msg.expire_time) if msg.HasField("expire_time") else None,
        )


@dataclass(frozen=True)
class SharingSettings:
    """Who sees your location and how precisely (your own settings).

    Attributes:
        audience: "ALL_FRIENDS", "ONLY" (the listed friends) or "ALL_EXCEPT".
        audience_user_ids: the list of ONLY / ALL_EXCEPT.
        default_precision: "PRECISE" or "APPROXIMATE", for the audience.
        friend_precisions: per-friend rules; they take precedence over the
            audience and the default precision.
        hidden: ghost mode (nobody sees you).
        hidden_until: when ghost mode ends by itself (UTC); None: until off.
    """

    audience: str
    audience_user_ids: tuple[str, ...]
    default_precision: str
    friend_precisions: tuple[FriendPrecision, ...]
    hidden: bool
    hidden_until: datetime | None

    @classmethod
    def from_proto(cls, msg: sharing_pb2.SharingSettings) -> SharingSettings:
        """Converts a ``nearby.v1.SharingSettings`` message."""
        return cls(
            sharing_pb2.Audience.Name(msg.audience).removeprefix("AUDIENCE_"),
            tuple(msg.audience_user_ids),
            _precision(msg.default_precision),
            tuple(FriendPrecision.from_proto(r) for r in msg.friend_precisions),
            msg.hidden,
            to_datetime(msg.hidden_until) if msg.HasField("hidden_until") else None,
        )


def _precision(value: int) -> str:
    return sharing_pb2.Precision.Name(value).removeprefix("PRECISION_")
