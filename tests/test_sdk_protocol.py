"""SDK stream protocol against a scripted in-process NearbyService.

A real grpc.aio server plays the server side of `Connect` from a per-stream
script, so every branch of the client's state machine (heartbeats, pages, a
server Reconnect, transient and fatal statuses, giving up) is exercised
deterministically. The end-to-end behaviour against the real mesh is in
test_sdk_e2e.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import pytest
from nearby import (
    AuthError,
    BackoffPolicy,
    FriendLeft,
    FriendMoved,
    NearbyClient,
    NearbyError,
    Page,
    Reconnecting,
    Snapshot,
)
from nearby.v1 import geo_pb2, nearby_service_pb2_grpc
from nearby.v1 import nearby_service_pb2 as pb

from mesh.types import Context
from stack.infra import free_port

FAST = BackoffPolicy(initial_s=0.01, multiplier=2, max_s=0.05)
Requests = AsyncIterator[pb.ConnectRequest]


@dataclass
class Stream:
    """What the server saw on one Connect stream."""

    metadata: dict[str, str]
    requests: list[pb.ConnectRequest] = field(default_factory=list)


Script = Callable[[Stream, Requests, Context], AsyncIterator[pb.ConnectResponse]]


class Scripted(nearby_service_pb2_grpc.NearbyServiceServicer):
    """Serves each successive Connect with the next script."""

    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.streams: list[Stream] = []

    async def Connect(
        self, request_iterator: Requests, context: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        stream = Stream(md)
        self.streams.append(stream)
        script = self.scripts.pop(0)
        async for response in script(stream, _recording(stream, request_iterator), context):
            yield response

    async def ListNearbyFriends(
        self, request: pb.ListNearbyFriendsRequest, context: Context
    ) -> pb.ListNearbyFriendsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")

    async def Watch(self, request: pb.WatchRequest, context: Context) -> None:  # type: ignore[override]
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")


async def _recording(stream: Stream, it: Requests) -> Requests:
    async for request in it:
        stream.requests.append(request)
        yield request


def nf(uid: str, distance: float) -> pb.NearbyFriend:
    return pb.NearbyFriend(
        user_id=uid,
        display_name=uid.title(),
        position=geo_pb2.LatLng(latitude=1.0, longitude=2.0),
        distance_meters=distance,
    )


def snap(
    *friends: pb.NearbyFriend, total: int | None = None, token: str = ""
) -> pb.ConnectResponse:
    return pb.ConnectResponse(
        snapshot=pb.Snapshot(
            friends=friends,
            total_size=len(friends) if total is None else total,
            next_page_token=token,
            radius_meters=8047,
        )
    )


def moved(uid: str, distance: float) -> pb.NearbyEvent:
    return pb.NearbyEvent(friend_update=pb.FriendUpdate(friend=nf(uid, distance)))


def gone(uid: str) -> pb.NearbyEvent:
    return pb.NearbyEvent(
        friend_gone=pb.FriendGone(user_id=uid, reason=pb.FRIEND_GONE_REASON_OUT_OF_RANGE)
    )


@pytest.fixture
async def server() -> AsyncIterator[tuple[Scripted, str]]:
    servicer = Scripted()
    srv = grpc.aio.server()
    nearby_service_pb2_grpc.add_NearbyServiceServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    yield servicer, f"127.0.0.1:{port}"
    await srv.stop(0)


async def take(session: AsyncIterator[object], n: int) -> list[object]:
    out: list[object] = []
    async with asyncio.timeout(10):
        async for event in session:
            out.append(event)
            if len(out) == n:
                break
    return out


async def until_it_gives_up(session: AsyncIterator[object]) -> tuple[list[object], NearbyError]:
    """Every event of a session that ends by giving up, and the error it raised."""
    seen: list[object] = []
    with pytest.raises(NearbyError) as info:
        async with asyncio.timeout(20):
            async for event in session:
                seen.append(event)
    return seen, info.value


async def first_location(it: Requests) -> pb.ConnectRequest:
    return await anext(aiter(it))


async def test_snapshot_events_pages_and_heartbeats(server: tuple[Scripted, str]) -> None:
    servicer, target = server
    page_seen = asyncio.Event()

    async def script(
        stream: Stream, it: Requests, ctx: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        await first_location(it)
        yield snap(nf("b", 200), nf("a", 500), total=3, token="p2")
        yield pb.ConnectResponse(heartbeat=pb.Heartbeat())
        yield pb.ConnectResponse(events=pb.NearbyEvents(events=[moved("c", 100), gone("a")]))
        request = await anext(aiter(it))
        assert request.page_request.page_token == "p2"
        yield pb.ConnectResponse(page=pb.NearbyFriendsPage(friends=[nf("d", 700)], total_size=3))
        page_seen.set()
        await asyncio.sleep(30)

    servicer.scripts.append(script)
    async with NearbyClient(target, "tok-1", secure=False, backoff=FAST) as client:
        session = client.connect(10.0, 20.0)
        events = await take(session, 3)
        assert [type(e) for e in events] == [Snapshot, FriendMoved, FriendLeft]
        assert isinstance(events[0], Snapshot) and events[0].next_page_token == "p2"
        assert isinstance(events[1], FriendMoved) and events[1].is_new
        assert [f.user_id for f in session.nearby] == ["c", "b"]
        await session.request_page(session.next_page_token)
        (page,) = await take(session, 1)
        assert isinstance(page, Page) and page.next_page_token == ""
        assert [f.user_id for f in session.nearby] == ["c", "b", "d"]
        assert session.state == "connected"
        await session.close()
        assert session.closed
        assert [e async for e in session] == []

    (stream,) = servicer.streams
    assert stream.metadata["authorization"] == "Bearer tok-1"
    first = stream.requests[0].location
    assert (first.position.latitude, first.position.longitude) == (10.0, 20.0)
    assert first.HasField("recorded_at")


async def test_unavailable_reconnects_with_the_last_location_and_replaces_the_view(
    server: tuple[Scripted, str],
) -> None:
    servicer, target = server
    moved_to = asyncio.Event()

    async def broken(
        stream: Stream, it: Requests, ctx: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        await first_location(it)
        yield snap(nf("old", 100))
        await anext(aiter(it))  # the client's update_location
        moved_to.set()
        await ctx.abort(grpc.StatusCode.UNAVAILABLE, "replica going away")

    async def fresh(
        stream: Stream, it: Requests, ctx: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        await first_location(it)
        yield snap(nf("new", 50))
        await asyncio.sleep(30)

    servicer.scripts += [broken, fresh]
    async with NearbyClient(target, "t", secure=False, backoff=FAST) as client:
        session = client.connect(1.0, 1.0)
        (first,) = await take(session, 1)
        assert isinstance(first, Snapshot)
        await session.update_location(3.0, 4.0)
        reconnecting, second = await take(session, 2)
        assert isinstance(reconnecting, Reconnecting)
        assert reconnecting.attempt == 1 and 0 <= reconnecting.delay_s <= FAST.initial_s
        assert "UNAVAILABLE" in reconnecting.cause and "replica going away" in reconnecting.cause
        assert isinstance(second, Snapshot)
        assert [f.user_id for f in session.nearby] == ["new"]
        assert session.connects == 2 and session.state == "connected"
        await session.close()

    assert moved_to.is_set()
    resent = servicer.streams[1].requests[0].location.position
    assert (resent.latitude, resent.longitude) == (3.0, 4.0)


async def test_server_reconnect_message_is_honoured(server: tuple[Scripted, str]) -> None:
    servicer, target = server

    async def draining(
        stream: Stream, it: Requests, ctx: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        await first_location(it)
        yield snap()
        reconnect = pb.Reconnect(reason="draining")
        reconnect.retry_after.FromMilliseconds(120)
        yield pb.ConnectResponse(reconnect=reconnect)
        await asyncio.sleep(30)  # the client must not wait for the end of the stream

    async def fresh(
        stream: Stream, it: Requests, ctx: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        await first_location(it)
        yield snap(nf("x", 1))
        await asyncio.sleep(30)

    servicer.scripts += [draining, fresh]
    async with NearbyClient(target, "t", secure=False, backoff=FAST) as client:
        session = client.connect(0.0, 0.0)
        events = await take(session, 3)
        assert [type(e) for e in events] == [Snapshot, Reconnecting, Snapshot]
        r = events[1]
        assert isinstance(r, Reconnecting)
        assert r.delay_s == pytest.approx(0.12)
        assert "draining" in r.cause
        assert [f.user_id for f in session.nearby] == ["x"]


@pytest.mark.parametrize(
    ("code", "exc"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, AuthError),
        (grpc.StatusCode.PERMISSION_DENIED, AuthError),
        (grpc.StatusCode.INVALID_ARGUMENT, NearbyError),
    ],
)
async def test_fatal_statuses_raise_without_retrying(
    server: tuple[Scripted, str], code: grpc.StatusCode, exc: type[NearbyError]
) -> None:
    servicer, target = server

    async def refuse(
        stream: Stream, it: Requests, ctx: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        # Read the location first: refusing while the client is still writing
        # it can hide the status on the client (grpc/grpc#36066).
        await first_location(it)
        await ctx.abort(code, "no way: do something else")
        yield pb.ConnectResponse()  # pragma: no cover

    servicer.scripts += [refuse, refuse]
    async with NearbyClient(target, "t", secure=False, backoff=FAST) as client:
        session = client.connect(0.0, 0.0)
        with pytest.raises(exc) as info:
            await take(session, 1)
        assert info.value.code == code
        assert info.value.message == "no way: do something else"
        assert session.closed
    assert len(servicer.streams) == 1


async def test_unreachable_server_backs_off_then_gives_up() -> None:
    target = f"127.0.0.1:{free_port()}"
    policy = BackoffPolicy(initial_s=0.01, multiplier=2, max_s=0.04, max_attempts=3)
    async with NearbyClient(target, "t", secure=False, backoff=policy) as client:
        events, error = await until_it_gives_up(client.connect(0.0, 0.0))
    seen = [e for e in events if isinstance(e, Reconnecting)]
    assert seen == events
    assert [e.attempt for e in seen] == [1, 2, 3]
    assert all(0 <= e.delay_s <= policy.ceiling(e.attempt) for e in seen)
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert "gave up after 3" in error.message


async def test_a_healthy_connection_resets_the_count_of_failed_attempts(
    server: tuple[Scripted, str],
) -> None:
    """max_attempts counts breaks in a row: a session whose every reconnect
    gets a snapshot survives any number of breaks, and gives up only after
    max_attempts failures with no snapshot in between."""
    servicer, target = server

    async def healthy_then_break(
        stream: Stream, it: Requests, ctx: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        await first_location(it)
        yield snap(nf("x", 1))
        await ctx.abort(grpc.StatusCode.UNAVAILABLE, "replica restarting")

    async def refused(
        stream: Stream, it: Requests, ctx: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        await first_location(it)
        await ctx.abort(grpc.StatusCode.UNAVAILABLE, "still restarting")
        yield pb.ConnectResponse()  # pragma: no cover

    policy = BackoffPolicy(initial_s=0.01, multiplier=2, max_s=0.04, max_attempts=2)
    servicer.scripts += [healthy_then_break] * 5 + [refused] * 2
    async with NearbyClient(target, "t", secure=False, backoff=policy) as client:
        seen, error = await until_it_gives_up(client.connect(0.0, 0.0))
    reconnects = [e for e in seen if isinstance(e, Reconnecting)]
    assert sum(isinstance(e, Snapshot) for e in seen) == 5
    assert [e.attempt for e in reconnects] == [1, 1, 1, 1, 1, 2]
    assert "gave up after 2 reconnect attempts" in error.message
    assert len(servicer.streams) == 7


async def test_close_from_another_task_ends_a_blocked_iteration(
    server: tuple[Scripted, str],
) -> None:
    servicer, target = server

    async def quiet(
        stream: Stream, it: Requests, ctx: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        await first_location(it)
        yield snap()
        await asyncio.sleep(30)

    servicer.scripts.append(quiet)
    async with NearbyClient(target, "t", secure=False, backoff=FAST) as client:
        session = client.connect(0.0, 0.0)
        got: list[object] = []
        first = asyncio.Event()

        async def consume() -> None:
            async for event in session:
                got.append(event)
                first.set()

        task = asyncio.create_task(consume())
        async with asyncio.timeout(10):
            await first.wait()
            await session.close()
            await task  # ends without error
        assert [type(e) for e in got] == [Snapshot]


async def test_bad_coordinates_are_rejected_locally(server: tuple[Scripted, str]) -> None:
    _, target = server
    async with NearbyClient(target, "t", secure=False) as client:
        with pytest.raises(ValueError):
            client.connect(91.0, 0.0)
        session = client.connect(0.0, 0.0)
        with pytest.raises(ValueError):
            await session.update_location(0.0, float("nan"))
        assert session.location == (0.0, 0.0)


async def test_a_token_function_is_asked_again_on_every_reconnect(
    server: tuple[Scripted, str],
) -> None:
    servicer, target = server

    async def drop(stream: Stream, it: Requests, ctx: Context) -> AsyncIterator[pb.ConnectResponse]:
        await first_location(it)
        yield snap()
        await ctx.abort(grpc.StatusCode.UNAVAILABLE, "bye")

    async def stay(stream: Stream, it: Requests, ctx: Context) -> AsyncIterator[pb.ConnectResponse]:
        await first_location(it)
        yield snap()
        await asyncio.sleep(30)

    servicer.scripts += [drop, stay]
    tokens = iter(["first", "second"])
    async with NearbyClient(target, lambda: next(tokens), secure=False, backoff=FAST) as client:
        session = client.connect(0.0, 0.0)
        events = await take(session, 3)
        assert [type(e) for e in events] == [Snapshot, Reconnecting, Snapshot]
    auth = [s.metadata["authorization"] for s in servicer.streams]
    assert auth == ["Bearer first", "Bearer second"]


async def test_a_session_can_act_as_another_user_on_the_same_channel(
    server: tuple[Scripted, str],
) -> None:
    servicer, target = server

    async def stay(stream: Stream, it: Requests, ctx: Context) -> AsyncIterator[pb.ConnectResponse]:
        await first_location(it)
        yield snap()
        await asyncio.sleep(30)

    servicer.scripts += [stay, stay]
    async with NearbyClient(target, "client-token", secure=False) as client:
        for session in (client.connect(0.0, 0.0), client.connect(0.0, 0.0, token="bob-token")):
            (event,) = await take(session, 1)
            assert isinstance(event, Snapshot)
    auth = [s.metadata["authorization"] for s in servicer.streams]
    assert auth == ["Bearer client-token", "Bearer bob-token"]


async def test_a_timeout_around_iteration_leaves_a_usable_session(
    server: tuple[Scripted, str],
) -> None:
    servicer, target = server

    async def quiet(
        stream: Stream, it: Requests, ctx: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        await first_location(it)
        yield snap(nf(f"f{len(servicer.streams)}", 10))
        await asyncio.sleep(30)

    servicer.scripts += [quiet, quiet]
    async with NearbyClient(target, "t", secure=False, backoff=FAST) as client:
        session = client.connect(0.0, 0.0)
        (first,) = await take(session, 1)
        assert isinstance(first, Snapshot)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await anext(session)
        # gRPC cancelled the call with the read; the next iteration reconnects.
        (second,) = await take(session, 1)
        assert isinstance(second, Snapshot)
        assert [f.user_id for f in session.nearby] == ["f2"]
        assert session.connects == 2 and not session.closed


async def test_a_cancelled_write_does_not_break_the_stream(server: tuple[Scripted, str]) -> None:
    servicer, target = server
    start_reading = asyncio.Event()
    pages_read: list[int] = []

    async def slow_reader(
        stream: Stream, it: Requests, ctx: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        requests = aiter(it)
        await anext(requests)
        yield snap()
        await start_reading.wait()  # until then HTTP/2 flow control blocks the writes
        async for request in requests:
            if request.HasField("location"):
                break
            pages_read.append(len(request.page_request.page_token))
        yield pb.ConnectResponse(events=pb.NearbyEvents(events=[moved("x", 10)]))
        await asyncio.sleep(30)

    servicer.scripts.append(slow_reader)
    async with NearbyClient(target, "t", secure=False, backoff=FAST) as client:
        session = client.connect(0.0, 0.0)
        (first,) = await take(session, 1)
        assert isinstance(first, Snapshot)
        # 1 MB messages the server does not read: after a few MB a write
        # blocks and its caller gives up, i.e. is cancelled mid-write.
        sent = 0
        for _ in range(100):
            sent += 1
            try:
                await asyncio.wait_for(session.request_page("p" * 1_000_000), 1.0)
            except TimeoutError:
                break
        else:
            pytest.fail("no write ever blocked")
        start_reading.set()
        await session.update_location(5.0, 5.0)
        (event,) = await take(session, 1)
        assert isinstance(event, FriendMoved) and event.friend.user_id == "x"
        assert session.connects == 1
    # Even the abandoned write went out whole, and the stream lived on.
    assert pages_read == [1_000_000] * sent
    assert len(servicer.streams) == 1
