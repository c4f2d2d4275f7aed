"""Calls from the fan-out service to friend_svc and location_svc."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from mesh.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unavailable,
)
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

CALL_TIMEOUT_S = 5.0


PASSED_ON: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: NotFound,
}
"""Upstream codes that retrying cannot fix: our caller gets the same code."""


def upstream_error(exc: grpc.aio.AioRpcError, what: str) -> ServiceError:
    """The error our caller sees when a service we depend on failed.

    Non-retryable codes (PASSED_ON) reach the caller as themselves, with the
    upstream's ErrorInfo reason; the upstream's field path (a field of an
    internal request, not of our caller's) is left out of the message. Any
    other code (unreachable, deadline, overloaded, internal) is UNAVAILABLE:
    retry with backoff.
    """
    code = exc.code()
    cls = PASSED_ON.get(code)
    if cls is None:
        return Unavailable(
            f"{what} failed ({code.name}); retry with backoff", reason="UPSTREAM_UNAVAILABLE"
        )
    info = error_info(exc)
    details = exc.details() or code.name
    field = info.metadata.get("field", "") if info is not None else ""
    if field:
        details = details.removeprefix(f"{field}: ")
    return cls(f"{what}: {details}", reason=(info.reason if info is not None else "") or code.name)


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The google.rpc.ErrorInfo of a failed call, if it carries one."""
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info
    return None


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
