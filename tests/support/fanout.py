"""Support for the fan-out tests (no tests here): the real mesh in-process, users,
and a Connect stream client that records what it receives."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from nearby.v1 import (
    friend_service_pb2 as fpb,
)
from nearby.v1 import (
    friend_service_pb2_grpc as fpb_grpc,
)
from nearby.v1 import (
    geo_pb2,
)
from nearby.v1 import (
    location_service_pb2 as lpb,
)
from nearby.v1 import (
    location_service_pb2_grpc as lpb_grpc,
)
from nearby.v1 import (
    nearby_service_pb2 as pb,
)
from nearby.v1 import (
    nearby_service_pb2_grpc as pb_grpc,
)
from nearby.v1 import (
    presence_service_pb2 as ppb,
)
from nearby.v1 import (
    presence_service_pb2_grpc as ppb_grpc,
)

from fanout_svc.app import FanoutApp
from friend_svc.app import FriendApp
from location_svc.app import LocationApp
from mesh.geo import EARTH_RADIUS_M
from mesh.internal.v1 import events_pb2
from mesh.internal.v1 import location_ingest_service_pb2 as li
from mesh.internal.v1 import location_ingest_service_pb2_grpc as li_grpc
from mesh.settings import Settings
from presence_svc.app import PresenceApp
from tests.support.services import running

ORIGIN = (52.52, 13.405)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def offset(lat: float, lng: float, north_m: float, east_m: float = 0.0) -> tuple[float, float]:
    """A point north_m/east_m metres away (small distances, spherical Earth)."""
    dlat = north_m / EARTH_RADIUS_M * 180.0 / math.pi
    dlng = east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))) * 180.0 / math.pi
    return lat + dlat, lng + dlng


def fast_settings(settings: Settings, **changes: Any) -> Settings:
    base = {
        "min_report_interval_s": 0.0,
        "presence_sweep_interval_s": 0.2,
        "fanout_stall_s": 2.0,
        "heartbeat_s": 30.0,
        "drain_s": 1.0,
    }
    base.update(changes)
    return settings.replace(**base)


def who(user_id: str, admin: bool = False) -> list[tuple[str, str]]:
    md = [("x-nearby-user-id", user_id)]
    if admin:
        md.append(("x-nearby-admin", "true"))
    return md


@dataclass
class Mesh:
    settings: Settings
    friend: str
    location: str
    presence: str
    fanout: str
    fanout_app: FanoutApp
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(self, addr: str) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(addr)
        self.channels.append(ch)
        return ch

    async def users(self, *prefixes: str) -> list[str]:
        stub = fpb_grpc.FriendServiceStub(self.channel(self.friend))
        ids = [uid(p) for p in prefixes]
        await asyncio.gather(
            *(
                stub.CreateUser(
                    fpb.CreateUserRequest(user_id=u, display_name=u.title()),
                    metadata=who("operator", admin=True),
                )
                for u in ids
            )
        )
        return ids

    async def befriend(self, a: str, b: str) -> None:
        stub = fpb_grpc.FriendServiceStub(self.channel(self.friend))
        await stub.SendFriendRequest(fpb.SendFriendRequestRequest(to_user_id=b), metadata=who(a))
        await stub.AcceptFriendRequest(
            fpb.AcceptFriendRequestRequest(from_user_id=a), metadata=who(b)
        )

    async def unfriend(self, a: str, b: str) -> None:
        stub = fpb_grpc.FriendServiceStub(self.channel(self.friend))
        await stub.RemoveFriend(fpb.RemoveFriendRequest(friend_user_id=b), metadata=who(a))

    async def set_hidden(self, user: str, hidden: bool) -> None:
        stub = ppb_grpc.PresenceServiceStub(self.channel(self.presence))
        vis = ppb.VISIBILITY_HIDDEN if hidden else ppb.VISIBILITY_VISIBLE
        await stub.SetVisibility(ppb.SetVisibilityRequest(visibility=vis), metadata=who(user))

    async def report(self, positions: dict[str, tuple[float, float]]) -> None:
        """Record locations without a stream (one ReportLocations call)."""
        stub = li_grpc.LocationIngestServiceStub(self.channel(self.location))
        reports = [
            li.LocationReport(user_id=u, fix=events_pb2.PositionFix(latitude=lat, longitude=lng))
            for u, (lat, lng) in positions.items()
        ]
        resp = await stub.ReportLocations(li.ReportLocationsRequest(reports=reports))
        assert not any(r.HasField("rejection") for r in resp.results), resp

    async def list_nearby(self, user: str, token: str = "", size: int = 0) -> Any:
        return await self.nearby_stub().ListNearbyFriends(
            pb.ListNearbyFriendsRequest(page_token=token, page_size=size), metadata=who(user)
        )

    def nearby_stub(self) -> Any:
        return pb_grpc.NearbyServiceStub(self.channel(self.fanout))

    async def connect(self, user: str, lat: float, lng: float) -> Stream:
        """A stream of `user` at (lat, lng), once its first location is recorded
        (its snapshot arrived) or it ended: a stream connected next sees it."""
        s = Stream(self.nearby_stub(), user)
        await s.open(lat, lng)
        await s.settled()
        return s

    async def watch(self, user: str, lat: float, lng: float) -> WatchStream:
        locations = lpb_grpc.LocationServiceStub(self.channel(self.location))
        s = WatchStream(self.nearby_stub(), user, locations=locations)
        await s.open(lat, lng)
        return s


@contextlib.asynccontextmanager
async def mesh(settings: Settings) -> AsyncIterator[Mesh]:
    async with running(FriendApp(settings)) as friend:
        with_friend = settings.replace(friend_addr=friend)  # location_svc checks accounts
        async with running(LocationApp(with_friend, history_writer=False)) as loc:
            s = with_friend.replace(location_addr=loc)
            async with running(PresenceApp(s)) as presence:
                app = FanoutApp(s)
                async with running(app) as fanout:
                    m = Mesh(s, friend, loc, presence, fanout, app)
                    try:
                        yield m
                    finally:
                        for ch in m.channels:
                            await ch.close()


def location(lat: float, lng: float, recorded_at_ms: int = 0) -> pb.ConnectRequest:
    """A location message; `recorded_at_ms` 0: the server's time of receipt."""
    update = pb.LocationUpdate(position=geo_pb2.LatLng(latitude=lat, longitude=lng))
    if recorded_at_ms:
        update.recorded_at.FromMilliseconds(recorded_at_ms)
    return pb.ConnectRequest(location=update)


class Stream:
    """A Connect stream that records every server message in order."""

    def __init__(self, stub: Any, user: str, metadata: Sequence[tuple[str, str]] | None = None):
        self.stub = stub
        self.user = user
        self.metadata = list(metadata) if metadata is not None else who(user)
        self.messages: list[pb.ConnectResponse] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.done = asyncio.Event()
        self._arrived = asyncio.Event()
        self.call: Any = None
        self._task: asyncio.Task[None] | None = None

    async def open(self, lat: float, lng: float, *, read: bool = True) -> None:
        self.call = self.stub.Connect(metadata=self.metadata)
        # the server may end the call before the first write (no identity):
        # the reader then records the status
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            await self.call.write(location(lat, lng))
        if read:
            self._task = asyncio.create_task(self._read())

    def start_reading(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.call:
                self.messages.append(msg)
                self._arrived.set()
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.done.set()
            self._arrived.set()

    async def move(self, lat: float, lng: float, recorded_at_ms: int = 0) -> None:
        await self.call.write(location(lat, lng, recorded_at_ms))

    async def page(self, token: str, size: int = 0) -> None:
        await self.call.write(
            pb.ConnectRequest(page_request=pb.PageRequest(page_token=token, page_size=size))
        )

    async def settled(self, within: float = 10.0) -> None:
        """Until the first snapshot arrived (so the first location is
        recorded) or the stream ended."""
        async with asyncio.timeout(within):
            while not (self.snapshots() or self.done.is_set()):
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_for(self, predicate: Any, within: float = 10.0) -> Any:
        """Until predicate(self) is truthy (returns it); fails after `within` s."""
        async with asyncio.timeout(within):
            while True:
                got = predicate(self)
                if got:
                    return got
                if self.done.is_set():
                    got = predicate(self)
                    if got:
                        return got
                    raise AssertionError(f"stream of {self.user} ended: {self.error!r}")
                self._arrived.clear()
                await self._arrived.wait()

    # --- views -----------------------------------------------------------
    def snapshots(self) -> list[pb.Snapshot]:
        return [m.snapshot for m in self.messages if m.WhichOneof("kind") == "snapshot"]

    def events(self) -> list[pb.NearbyEvent]:
        return [
            e for m in self.messages if m.WhichOneof("kind") == "events" for e in m.events.events
        ]

    def updates(self, of: str | None = None) -> list[pb.NearbyFriend]:
        return [
            e.friend_update.friend
            for e in self.events()
            if e.WhichOneof("kind") == "friend_update"
            and (of is None or e.friend_update.friend.user_id == of)
        ]

    def gones(self, of: str | None = None) -> list[pb.FriendGone]:
        return [
            e.friend_gone
            for e in self.events()
            if e.WhichOneof("kind") == "friend_gone" and (of is None or e.friend_gone.user_id == of)
        ]

    def pages(self) -> list[pb.NearbyFriendsPage]:
        return [m.page for m in self.messages if m.WhichOneof("kind") == "page"]

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class WatchStream(Stream):
    """A Watch stream, moved by unary ReportLocation calls (a browser's way)."""

    def __init__(
        self,
        stub: Any,
        user: str,
        metadata: Sequence[tuple[str, str]] | None = None,
        *,
        locations: Any,
    ):
        super().__init__(stub, user, metadata)
        self.locations = locations

    async def open(self, lat: float, lng: float, *, read: bool = True) -> None:
        """Report (unless lat is nan: open without), then Watch."""
        if not math.isnan(lat):
            await self.move(lat, lng)
        self.call = self.stub.Watch(pb.WatchRequest(), metadata=self.metadata)
        if read:
            self._task = asyncio.create_task(self._read())

    async def move(self, lat: float, lng: float, recorded_at_ms: int = 0) -> None:
        request = lpb.ReportLocationRequest(position=geo_pb2.LatLng(latitude=lat, longitude=lng))
        if recorded_at_ms:
            request.recorded_at.FromMilliseconds(recorded_at_ms)
        await self.locations.ReportLocation(request, metadata=self.metadata)


async def until(predicate: Any, within: float = 10.0, every: float = 0.02) -> Any:
    """Poll predicate() (sync or async) until truthy; fails after `within` s."""
    async with asyncio.timeout(within):
        while True:
            got = predicate()
            if inspect.isawaitable(got):
                got = await got
            if got:
                return got
            await asyncio.sleep(every)
