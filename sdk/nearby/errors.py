"""Exceptions raised by the SDK.

Every failed call surfaces as a :class:`NearbyError` carrying the gRPC status
code, the server's message and, when the server attached a
``google.rpc.ErrorInfo`` detail, its machine-readable ``reason``.
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = ["AuthError", "NearbyError", "from_rpc_error", "make_error"]

_DETAILS_KEY = "grpc-status-details-bin"


class NearbyError(Exception):
    """A call or a stream failed with a status the SDK does not retry.

    Attributes:
        code: the gRPC status code.
        message: the server's human-readable message (what to do about it).
        reason: the ``ErrorInfo.reason`` the server attached (UPPER_SNAKE), or "".
        metadata: the ``ErrorInfo.metadata`` (e.g. the offending ``field``).
        retry_after: seconds to wait before trying again, when the server said
            (a ``google.rpc.RetryInfo`` detail, or the edge's ``retry-after``
            on RESOURCE_EXHAUSTED from its rate limit), else None.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after
        label = code.name + (f" ({reason})" if reason else "")
        super().__init__(f"{label}: {message}")


class AuthError(NearbyError):
    """The token was missing, invalid or expired (UNAUTHENTICATED), or the
    caller may not do this (PERMISSION_DENIED). Retrying will not help: get a
    new token or use one with the needed rights."""


def _error_info(trailing: Any) -> tuple[str, dict[str, str]]:
    """Reason and metadata of the ErrorInfo in the status details, if any.

    Decoding needs the ``google.rpc`` protos (package googleapis-common-protos,
    installed with grpcio-status); without them the reason stays empty.
    """
    try:
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:  # pragma: no cover - optional dependency
        return "", {}
    for key, value in trailing or ():
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info.reason, dict(info.metadata)
    return "", {}


def _retry_after(trailing: Any) -> float | None:
    """RetryInfo.retry_delay in the status details, else a ``retry-after``
    header (seconds; what the edge's rate limit sends)."""
    try:
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:  # pragma: no cover - optional dependency
        status_pb2 = None
    for key, value in trailing or ():
        if key == _DETAILS_KEY and isinstance(value, bytes) and status_pb2 is not None:
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return float(info.retry_delay.ToTimedelta().total_seconds())
    for key, value in trailing or ():
        if key == "retry-after" and isinstance(value, str) and value.strip().isdigit():
            return float(value.strip())
    return None


def from_rpc_error(error: grpc.aio.AioRpcError) -> NearbyError:
    """The SDK exception for a failed RPC (AuthError for auth failures)."""
    try:
        trailing = error.trailing_metadata()
        reason, metadata = _error_info(trailing)
        retry_after = _retry_after(trailing)
    except Exception:  # a malformed detail must not hide the real error
        reason, metadata, retry_after = "", {}, None
    return make_error(
        error.code(),
        error.details() or "",
        reason=reason,
        metadata=metadata,
        retry_after=retry_after,
    )


def make_error(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    metadata: dict[str, str] | None = None,
    retry_after: float | None = None,
) -> NearbyError:
    """A NearbyError, or an AuthError for UNAUTHENTICATED / PERMISSION_DENIED."""
    cls = (
        AuthError
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        else NearbyError
    )
    return cls(code, message, reason=reason, metadata=metadata, retry_after=retry_after)
