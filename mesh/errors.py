"""Domain errors and the one place that maps them to gRPC statuses.

Servicers raise these; the kernel's interceptor turns them into a status with
a human message and a `google.rpc.ErrorInfo` detail (AIP-193), so clients get
the right code and a machine-readable reason.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "nearby.v1"


class ServiceError(Exception):
    """An error a client can act on. Subclasses fix the gRPC code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self, message: str, *, reason: str, retry_after_s: float | None = None, **metadata: str
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.metadata = metadata

    def to_status(self) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        details = [any_pb2.Any()]
        details[0].Pack(info)
        if self.retry_after_s is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromMilliseconds(int(self.retry_after_s * 1000))
            details.append(any_pb2.Any())
            details[1].Pack(retry)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


def invalid_field(field: str, problem: str) -> InvalidArgument:
    """INVALID_ARGUMENT naming the offending field."""
    return InvalidArgument(f"{field}: {problem}", reason="INVALID_FIELD", field=field)
