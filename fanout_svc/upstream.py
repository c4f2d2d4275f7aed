"""Calls from the fan-out service to friend_svc and location_svc (failures
mapped by mesh.upstream)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from mesh.internal.v1 import (
    friend_graph_service_pb2 as fg,
)
from mesh.internal.v1 import (
    friend_graph_service_pb2_grpc as fg_grpc,
)
from mesh.internal.v1 import (
    location_ingest_service_pb2 as li,
)
from mesh.internal.v1 import (
    location_ingest_service_pb2_grpc as li_grpc,
)
from mesh.sharing import Policy
from mesh.upstream import PASSED_ON, error_info, upstream_error

CALL_TIMEOUT_S = 5.0


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
        resp = await self._batch_get(
            li.BatchGetLocationsRequest(user_ids=user_ids, include_hidden=include_hidden)
        )
        return resp.locations

    async def get_shared(
        self, user_ids: Sequence[str]
    ) -> tuple[Sequence[li.CachedLocation], dict[str, Policy]]:
        """Friends' cached locations (active, visible) and the sharing policies
        of all of them (a friend missing from the dict has the default one)."""
        if not user_ids:
            return [], {}
        resp = await self._batch_get(
            li.BatchGetLocationsRequest(user_ids=user_ids, include_sharing=True)
        )
        return resp.locations, {s.user_id: Policy.from_proto(s.policy) for s in resp.sharing}

    async def _batch_get(self, req: li.BatchGetLocationsRequest) -> li.BatchGetLocationsResponse:
        try:
            return await self.locations.BatchGetLocations(req, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(exc, "reading cached locations") from exc

    async def report(self, reports: Sequence[li.LocationReport]) -> Sequence[li.ReportResult]:
        try:
            resp = await self.locations.ReportLocations(
                li.ReportLocationsRequest(reports=reports), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(exc, "recording the location") from exc
        return resp.results


__all__ = ["PASSED_ON", "Upstream", "error_info", "upstream_error"]
