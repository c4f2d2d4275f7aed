"""What a caller sees when a service behind the one it called failed."""

from __future__ import annotations

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


__all__ = ["PASSED_ON", "error_info", "upstream_error"]
