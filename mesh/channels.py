"""gRPC channels to the other services of the mesh."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from mesh import tracing

CLIENT_OPTIONS: Sequence[tuple[str, int | str]] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.enable_retries", 1),
    (
        "grpc.service_config",
        '{"methodConfig":[{"name":[{}],"retryPolicy":{"maxAttempts":3,'
        '"initialBackoff":"0.05s","maxBackoff":"1s","backoffMultiplier":2,'
        '"retryableStatusCodes":["UNAVAILABLE"]}}]}',
    ),
)


def internal_channel(
    address: str, credentials: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    """A channel for service-to-service calls (retries UNAVAILABLE); mTLS with
    `credentials` (mesh/tls.py)."""
    interceptors = tracing.client_interceptors()
    if credentials is not None:
        return grpc.aio.secure_channel(
            address, credentials, options=CLIENT_OPTIONS, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(address, options=CLIENT_OPTIONS, interceptors=interceptors)
