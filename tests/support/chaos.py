"""What the chaos tests share: SDK sessions that record every event with its
time, distances east of one home point, and waiting on conditions."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import grpc
from nearby import Event, FriendMoved, NearbyClient, Reconnecting, Snapshot
from nearby.v1 import friend_service_pb2 as fpb
from nearby.v1 import friend_service_pb2_grpc

from mesh.geo import EARTH_RADIUS_M

HOME = (52.52, 13.405)


def east(meters: float) -> tuple[float, float]:
    lat, lng = HOME
    return lat, lng + math.degrees(meters / (EARTH_RADIUS_M * math.cos(math.radians(lat))))


class Watcher:
    """One SDK session and every event it yielded, with when."""

    def __init__(self, client: NearbyClient, user: str, token: str) -> None:
        self.user = user
        self.session = client.connect(*HOME, token=token)
        self.events: list[tuple[float, Event]] = []
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        async for event in self.session:
            self.events.append((time.monotonic(), event))

    def reconnected_since(self, t: float) -> bool:
        return any(at >= t and isinstance(e, Reconnecting) for at, e in self.events)

    def fresh_snapshot_at(self, t: float) -> float | None:
        """When the first snapshot after a reconnect that began at or after `t` came."""
        broke = next((at for at, e in self.events if at >= t and isinstance(e, Reconnecting)), None)
        if broke is None:
            return None
        return next((at for at, e in self.events if at >= broke and isinstance(e, Snapshot)), None)

    def saw_friend_at(self, meters: float) -> bool:
        """The friend at `meters`: in a snapshot or as a move (whichever came last)."""
        for _, e in reversed(self.events):
            if isinstance(e, FriendMoved):
                return abs(e.friend.distance_meters - meters) < 5
            if isinstance(e, Snapshot) and e.friends:
                return abs(e.friends[0].distance_meters - meters) < 5
        return False


async def until(what: str, predicate: Callable[[], object], within_s: float) -> float:
    """Polls until `predicate()` is truthy; returns when; fails naming `what`."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s:g} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic()


Auth = Callable[..., tuple[tuple[str, str], ...]]
"""auth(user, admin=False): the call metadata of a user's token."""


async def create_users(
    channel: grpc.aio.Channel, auth: Auth, users: list[str], friend_of: str | None = None
) -> None:
    """Creates `users` through Envoy (as the admin "ops"), each a friend of
    `friend_of` if given (a request and its acceptance), 16 at a time."""
    friends = friend_service_pb2_grpc.FriendServiceStub(channel)
    limit = asyncio.Semaphore(16)

    async def one(user: str) -> None:
        async with limit:
            await friends.CreateUser(
                fpb.CreateUserRequest(user_id=user, display_name=user),
                metadata=auth("ops", admin=True),
                timeout=30,
            )

    await asyncio.gather(*(one(u) for u in users))
    if friend_of is not None:
        await befriend(channel, auth, [(u, friend_of) for u in users])


async def befriend(channel: grpc.aio.Channel, auth: Auth, pairs: list[tuple[str, str]]) -> None:
    """Each (a, b): a asks b, b accepts; 16 pairs at a time."""
    friends = friend_service_pb2_grpc.FriendServiceStub(channel)
    limit = asyncio.Semaphore(16)

    async def one(a: str, b: str) -> None:
        async with limit:
            await friends.SendFriendRequest(
                fpb.SendFriendRequestRequest(to_user_id=b), metadata=auth(a), timeout=30
            )
            await friends.AcceptFriendRequest(
                fpb.AcceptFriendRequestRequest(from_user_id=a), metadata=auth(b), timeout=30
            )

    await asyncio.gather(*(one(a, b) for a, b in pairs))
