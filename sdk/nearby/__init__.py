"""nearby: Python SDK and generated gRPC stubs of the nearby Nearby Friends backend.

Quick start::

    from nearby import NearbyClient, FriendMoved, FriendLeft

    async with NearbyClient("localhost:8080", token, secure=False) as client:
        session = client.connect(52.5200, 13.4050)
        async for event in session:
            print(event, session.nearby)

The generated stubs of the public API are importable as ``nearby.v1``. The
mesh's internal contracts are not part of the SDK: they live server-side, in
``mesh.internal.v1``.
"""

from nearby.backoff import Backoff, BackoffPolicy
from nearby.client import DEFAULT_OPTIONS, NearbyClient
from nearby.errors import AuthError, NearbyError
from nearby.events import (
    Event,
    FriendLeft,
    FriendMoved,
    NearbyFriend,
    Page,
    Reconnecting,
    Snapshot,
)
from nearby.models import (
    Friend,
    FriendPrecision,
    FriendRequest,
    Location,
    ReportResult,
    SharingSettings,
    User,
)
from nearby.session import NearbySession
from nearby.view import NearbyView, distance_m

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_OPTIONS",
    "AuthError",
    "Backoff",
    "BackoffPolicy",
    "Event",
    "Friend",
    "FriendLeft",
    "FriendMoved",
    "FriendPrecision",
    "FriendRequest",
    "Location",
    "NearbyClient",
    "NearbyError",
    "NearbyFriend",
    "NearbySession",
    "NearbyView",
    "Page",
    "Reconnecting",
    "ReportResult",
    "SharingSettings",
    "Snapshot",
    "User",
    "__version__",
    "distance_m",
]
