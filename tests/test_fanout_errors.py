"""Errors as a client sees them through the real Envoy: the status code, and a
message (and ErrorInfo field) naming the client's own field, never a field of
an internal message; non-retryable upstream failures keep their code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import timestamp_pb2
from nearby.v1 import friend_service_pb2 as fpb
from nearby.v1 import friend_service_pb2_grpc as fpb_grpc
from nearby.v1 import geo_pb2
from nearby.v1 import location_service_pb2 as lpb
from nearby.v1 import location_service_pb2_grpc as lpb_grpc
from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc

from fanout_svc.upstream import error_info, upstream_error
from mesh.errors import FailedPrecondition
from mesh.settings import Settings
from tests.support.edge_stack import EdgeStack, edge_stack
from tests.support.fanout import ORIGIN, fast_settings, offset, uid

DAY_MS = 86_400_000
INTERNAL_NAMES = ("reports[", "recorded_at_ms", "fix.", "user_ids")


def location(lat: float, lng: float, recorded_at_ms: int | None = None) -> pb.ConnectRequest:
    update = pb.LocationUpdate(position=geo_pb2.LatLng(latitude=lat, longitude=lng))
    if recorded_at_ms is not None:
        ts = timestamp_pb2.Timestamp()
        ts.FromMilliseconds(recorded_at_ms)
        update.recorded_at.CopyFrom(ts)
    return pb.ConnectRequest(location=update)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def users(stack: EdgeStack, *prefixes: str) -> list[str]:
    ids = [uid(p) for p in prefixes]
    async with stack.channel() as ch:
        stub = fpb_grpc.FriendServiceStub(ch)
        for u in ids:
            await stub.CreateUser(
                fpb.CreateUserRequest(user_id=u, display_name=u),
                metadata=stack.auth("operator", admin=True),
            )
    return ids


async def befriend(stack: EdgeStack, a: str, b: str) -> None:
    async with stack.channel() as ch:
        stub = fpb_grpc.FriendServiceStub(ch)
        await stub.SendFriendRequest(
            fpb.SendFriendRequestRequest(to_user_id=b), metadata=stack.auth(a)
        )
        await stub.AcceptFriendRequest(
            fpb.AcceptFriendRequestRequest(from_user_id=a), metadata=stack.auth(b)
        )


async def stream_error(
    stack: EdgeStack, user: str, *requests: pb.ConnectRequest, after_snapshot: bool = False
) -> grpc.aio.AioRpcError:
    """Send the requests on a Connect stream; the status it ends with."""
    async with stack.channel() as ch:
        call = pb_grpc.NearbyServiceStub(ch).Connect(metadata=stack.auth(user))
        first, *rest = requests
        await call.write(first)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if after_snapshot:
                snap = await call.read()
                assert (
                    isinstance(snap, pb.ConnectResponse) and snap.WhichOneof("kind") == "snapshot"
                )
            for req in rest:
                await call.write(req)
            async with asyncio.timeout(30):
                while True:
                    msg = await call.read()
                    assert msg is not grpc.aio.EOF, "the stream ended with OK"
        return err.value


def assert_names(err: grpc.aio.AioRpcError, code: grpc.StatusCode, field: str, *words: str) -> None:
    details = err.details() or ""
    assert err.code() == code, (err.code(), details)
    assert details.startswith(f"{field}: "), details
    for word in words:
        assert word in details, details
    for internal in INTERNAL_NAMES:
        assert internal not in details, details
    info = error_info(err)
    assert info is not None and info.reason == "INVALID_FIELD"
    assert info.metadata["field"] == field


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[EdgeStack]:
    async with edge_stack(fast_settings(settings)) as s:
        yield s


async def test_connect_errors_name_the_clients_fields(stack: EdgeStack) -> None:
    (a,) = await users(stack, "a")
    bad = grpc.StatusCode.INVALID_ARGUMENT
    err = await stream_error(stack, a, location(*ORIGIN, now_ms() + DAY_MS))
    assert_names(err, bad, "location.recorded_at", "in the future")
    err = await stream_error(stack, a, location(95.0, 13.4))
    assert_names(err, bad, "location.position.latitude", "[-90, 90]")
    # a later location, a page request: the same stream's own words
    later = location(*ORIGIN, now_ms() - 31 * DAY_MS)
    err = await stream_error(stack, a, location(*ORIGIN), later, after_snapshot=True)
    assert_names(err, bad, "location.recorded_at", "retention")
    page = pb.ConnectRequest(page_request=pb.PageRequest(page_size=-1))
    err = await stream_error(stack, a, location(*ORIGIN), page, after_snapshot=True)
    assert_names(err, bad, "page_request.page_size", "negative")
    page = pb.ConnectRequest(page_request=pb.PageRequest(page_token="not-a-token"))
    err = await stream_error(stack, a, location(*ORIGIN), page, after_snapshot=True)
    assert_names(err, bad, "page_request.page_token")


async def test_unary_errors_name_the_request_fields(stack: EdgeStack) -> None:
    (a,) = await users(stack, "a")
    async with stack.channel() as ch:
        locations = lpb_grpc.LocationServiceStub(ch)
        req = lpb.ReportLocationRequest(position=geo_pb2.LatLng(latitude=1.0, longitude=2.0))
        req.recorded_at.FromMilliseconds(now_ms() + DAY_MS)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await locations.ReportLocation(req, metadata=stack.auth(a))
        assert_names(err.value, grpc.StatusCode.INVALID_ARGUMENT, "recorded_at", "future")
        nearby = pb_grpc.NearbyServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await nearby.ListNearbyFriends(
                pb.ListNearbyFriendsRequest(page_size=-1), metadata=stack.auth(a)
            )
        assert_names(err.value, grpc.StatusCode.INVALID_ARGUMENT, "page_size")


async def test_location_svc_rejection_reaches_the_client_in_its_words(
    settings: Settings,
) -> None:
    """The fan-out's own check passes; location_svc (stricter clock) rejects the
    report in a structured result, which the client sees as its own field."""
    async with edge_stack(
        fast_settings(settings), per_service={"location_svc": {"max_clock_skew_s": 0.0}}
    ) as stack:
        (a,) = await users(stack, "a")
        err = await stream_error(stack, a, location(*ORIGIN, now_ms() + 5_000))
        assert_names(
            err, grpc.StatusCode.INVALID_ARGUMENT, "location.recorded_at", "at most 0 s allowed"
        )


async def test_non_retryable_upstream_failure_keeps_its_code(settings: Settings) -> None:
    """location_svc refuses more ids than its friend cap: a request that no retry
    can fix, so the client gets INVALID_ARGUMENT (not UNAVAILABLE), without the
    internal request's field names."""
    async with edge_stack(
        fast_settings(settings), per_service={"location_svc": {"friend_cap": 2}}
    ) as stack:
        me, *friends = await users(stack, "me", "f1", "f2", "f3")
        for f in friends:
            await befriend(stack, me, f)
        err = await stream_error(stack, me, location(*offset(*ORIGIN, 10)))
        details = err.details() or ""
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), details)
        assert details == "reading cached locations: 3 ids; at most 2 (the friend cap)"
        info = error_info(err)
        assert info is not None and info.reason == "INVALID_FIELD"
        assert "field" not in info.metadata
        async with stack.channel() as ch:
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await pb_grpc.NearbyServiceStub(ch).ListNearbyFriends(
                    pb.ListNearbyFriendsRequest(), metadata=stack.auth(me)
                )
        assert unary.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("upstream", "seen"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT),
        (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED),
        (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.FAILED_PRECONDITION),
        (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND),
        (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE),
        (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_upstream_error_passes_on_only_what_no_retry_fixes(
    upstream: grpc.StatusCode, seen: grpc.StatusCode
) -> None:
    status = FailedPrecondition("user_id: x", reason="SOME_REASON", field="user_id").to_status()
    status.code = upstream.value[0]
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    exc = grpc.aio.AioRpcError(upstream, grpc.aio.Metadata(), trailers, details="user_id: x")
    err = upstream_error(exc, "loading the friend list")
    assert err.code == seen
    if seen == grpc.StatusCode.UNAVAILABLE:
        assert err.reason == "UPSTREAM_UNAVAILABLE" and "retry" in err.message
    else:
        assert err.reason == "SOME_REASON"
        assert err.message == "loading the friend list: x"  # no internal field path
