"""Calls from the fan-out service to friend_svc and location_svc."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from nearby.internal.v1 import (
    friend_graph_service_pb2 as fg,
)
from nearby.internal.v1 import (
    friend_graph_service_pb2_grpc as fg_grpc,
)
from nearby.internal.v1 import (
    location_ingest_service_pb2 as li,
)
from nearby.internal.v1 import (
    location_ingest_service_pb2_grpc as li_grpc,
)

from mesh.errors import NotFound, ServiceError, Unavailable

CALL_TIMEOUT_S = 5.0


def upstream_error(exc: grpc.aio.AioRpcError, what: str) -> ServiceError:
    """The error our caller sees when a service we depend on failed."""
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{what}: {exc.details()}", reason="NOT_FOUND")
    return Unavailable(
        f"{what} failed ({code.name}); retry with backoff", reason="UPSTREAM_UNAVAILABLE"
    )


class Upstream:
    """Typed wrappers over the internal stubs (one channel per service)."""

    def __init__(self, friend: grpc.aio.Channel, location: grpc.aio.Channel) -> None:
        self.friends = fg_grpc.FriendGraphServiceStub(friend)
        self.locations = li_grpc.LocationIngestServiceStub(location)

    async def list_friends(self, user_id: str) -> Sequence[fg.FriendRef]:
        try:
            resp = await self.friends.ListAllFriends(
                fg.ListAllFriendsRequest(user_id=user_id), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(exc, "loading the friend list") from exc
        return resp.friends

    async def get_locations(
        self, user_ids: Sequence[str], include_hidden: bool = False
    ) -> Sequence[li.CachedLocation]:
        if not user_ids:
            return []
        try:
            resp = await self.locations.BatchGetLocations(
                li.BatchGetLocationsRequest(user_ids=user_ids, include_hidden=include_hidden),
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(exc, "reading cached locations") from exc
        return resp.locations

    async def report(self, reports: Sequence[li.LocationReport]) -> Sequence[li.ReportResult]:
        try:
            resp = await self.locations.ReportLocations(
                li.ReportLocationsRequest(reports=reports), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(exc, "recording the location") from exc
        return resp.results
