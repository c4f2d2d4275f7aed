"""One live ``NearbyService.Connect`` stream that survives reconnects.

The session is pull-based: the stream is read only while you iterate it, so a
slow consumer applies back-pressure (the server coalesces and, if you fall
too far behind, asks you to reconnect) instead of buffering without bound.
``session.nearby`` is therefore as current as the last event you consumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from nearby.backoff import Backoff, BackoffPolicy
from nearby.errors import NearbyError, from_rpc_error, make_error
from nearby.events import (
    Event,
    FriendLeft,
    FriendMoved,
    NearbyFriend,
    Page,
    Reconnecting,
    Snapshot,
)
from nearby.v1 import geo_pb2
from nearby.v1 import nearby_service_pb2 as pb
from nearby.view import NearbyView

if TYPE_CHECKING:
    from nearby.v1.nearby_service_pb2_grpc import NearbyServiceAsyncStub

__all__ = ["FATAL_CODES", "NearbySession", "SessionState", "check_position"]

log = logging.getLogger("nearby.session")

SessionState = Literal["idle", "connecting", "connected", "reconnecting", "closed"]
"""Where a session is: not opened yet, opening its first stream, live (a
snapshot arrived), between streams, or ended."""

FATAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
"""Stream statuses that end a session with an exception instead of a retry.
Everything else (UNAVAILABLE, INTERNAL, UNKNOWN, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED, ABORTED, CANCELLED by the other side, a clean end of
stream) is treated as transient."""


def check_position(latitude: float, longitude: float) -> None:
    """Raises ValueError unless the coordinates are finite and in range."""
    if not (math.isfinite(latitude) and -90.0 <= latitude <= 90.0):
        raise ValueError(f"latitude must be within [-90, 90], got {latitude!r}")
    if not (math.isfinite(longitude) and -180.0 <= longitude <= 180.0):
        raise ValueError(f"longitude must be within [-180, 180], got {longitude!r}")


def _being_cancelled() -> bool:
    """True when the current task has been asked to cancel (as opposed to a
    gRPC call being cancelled under it, which grpc.aio also reports as
    CancelledError)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _location_request(latitude: float, longitude: float) -> pb.ConnectRequest:
    recorded_at = Timestamp()
    recorded_at.GetCurrentTime()
    return pb.ConnectRequest(
        location=pb.LocationUpdate(
            position=geo_pb2.LatLng(latitude=latitude, longitude=longitude),
            recorded_at=recorded_at,
        )
    )


_Call = grpc.aio.StreamStreamCall[pb.ConnectRequest, pb.ConnectResponse]


class NearbySession:
    """A live view of your nearby friends over ``NearbyService.Connect``.

    Create it with :meth:`NearbyClient.connect`. The stream opens on the first
    iteration or on :meth:`start`. Iterate it to receive typed events::

        async for event in session:
            if isinstance(event, FriendMoved): ...

    Heartbeats are absorbed. When the stream breaks (UNAVAILABLE, connection
    loss, a server drain or any other transient status) the session yields a
    :class:`Reconnecting` event, waits (exponential backoff with full jitter,
    or the server's ``retry_after``), reconnects, re-sends the last location as
    the first message and yields the new :class:`Snapshot`, which replaces
    :attr:`nearby`. UNAUTHENTICATED / PERMISSION_DENIED raise
    :class:`AuthError` (except a stream ended by its token's expiry when the
    token is a function: that one reconnects once with a fresh token); other
    non-retryable statuses raise :class:`NearbyError`.
    """

    def __init__(
        self,
        stub: NearbyServiceAsyncStub,
        metadata: Callable[[], Sequence[tuple[str, str]]],
        latitude: float,
        longitude: float,
        *,
        backoff: BackoffPolicy | None = None,
        on_close: Callable[[NearbySession], None] | None = None,
        refreshable: bool = False,
    ) -> None:
        check_position(latitude, longitude)
        # the token source can mint a new token: a stream ended by the token's
        # expiry (TOKEN_EXPIRED) reconnects once with a fresh one
        self._refreshable = refreshable
        self._expired_retry = False
        self._stub = stub
        self._metadata = metadata
        self._location = (latitude, longitude)
        self._backoff = Backoff(backoff or BackoffPolicy())
        self._on_close = on_close
        self._view = NearbyView()
        self._call: _Call | None = None
        self._pending: deque[Event] = deque()
        self._delay: float | None = None  # wait this long before the next connect
        self._write_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._state: SessionState = "idle"
        self.connects = 0
        """How many times the stream has been opened (1 + reconnects)."""
        self.last_error: str = ""
        """Why the stream last ended, for display ("" while never broken)."""

    # -- public state -------------------------------------------------------

    @property
    def nearby(self) -> list[NearbyFriend]:
        """Known nearby friends, nearest first (ties by user id): the snapshot
        and fetched pages, kept current from the events consumed so far."""
        return self._view.friends

    @property
    def total_size(self) -> int:
        """How many friends are nearby in all (may exceed ``len(nearby)``
        until all pages are fetched)."""
        return self._view.total_size

    @property
    def next_page_token(self) -> str:
        """Token for :meth:`request_page` ("" when everything is loaded)."""
        return self._view.next_page_token

    @property
    def radius_meters(self) -> float:
        """The server's radius (known after the first snapshot)."""
        return self._view.radius_meters

    @property
    def location(self) -> tuple[float, float]:
        """Your last location (latitude, longitude), re-sent on reconnect."""
        return self._location

    @property
    def state(self) -> SessionState:
        """The connection: idle, connecting, connected, reconnecting or closed."""
        return self._state

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the session failed."""
        return self._closed.is_set()

    # -- commands -----------------------------------------------------------

    async def start(self) -> None:
        """Opens the stream and sends the location (does nothing if open).

        Errors of the stream surface on iteration, not here.
        """
        if self._closed.is_set():
            raise RuntimeError("the session is closed")
        if self._call is None:
            await self._open()

    async def update_location(self, latitude: float, longitude: float) -> None:
        """Sends your new location (``recorded_at`` = now).

        It is remembered and re-sent first after a reconnect; while the
        stream is down it is only remembered. Raises ValueError for
        coordinates out of range.
        """
        check_position(latitude, longitude)
        self._location = (latitude, longitude)
        self._view.recenter(latitude, longitude)
        await self._write(_location_request(latitude, longitude))

    async def request_page(self, page_token: str, page_size: int = 0) -> None:
        """Asks for the page after ``page_token``; it arrives as a
        :class:`Page` event (and is added to :attr:`nearby`).

        Raises NearbyError (UNAVAILABLE) when the stream is not open.
        """
        if page_size < 0:
            raise ValueError("page_size must not be negative")
        request = pb.ConnectRequest(
            page_request=pb.PageRequest(page_token=page_token, page_size=page_size)
        )
        if not await self._write(request):
            raise NearbyError(
                grpc.StatusCode.UNAVAILABLE,
                "the stream is not open: wait for the next Snapshot and ask again",
            )

    async def close(self) -> None:
        """Ends the stream; iteration stops. Safe to call more than once."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._state = "closed"
        self._pending.clear()
        self._drop_call()
        if self._on_close is not None:
            self._on_close(self)

    async def __aenter__(self) -> NearbySession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- iteration ----------------------------------------------------------

    def __aiter__(self) -> NearbySession:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._closed.is_set():
                raise StopAsyncIteration
            if self._pending:
                return self._pending.popleft()
            if self._call is None:
                if self._delay is not None:
                    delay, self._delay = self._delay, None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closed.wait(), delay)
                    continue
                await self._open()
            call = self._call
            assert call is not None
            try:
                message = await call.read()
            except grpc.aio.AioRpcError as error:
                if self._call is call:
                    self._stream_ended(error.code(), error.details() or "", error)
                continue
            except asyncio.CancelledError:
                if _being_cancelled():
                    # The consumer is cancelled (e.g. a timeout around the
                    # loop): grpc.aio cancels the call with the read, so the
                    # next iteration opens a fresh stream.
                    if self._call is call:
                        self._drop_call()
                    raise
                # The call was cancelled here, not the task: by close(), a
                # reconnect, or a cancelled task writing to it.
                if self._call is call and not self._closed.is_set():
                    self._stream_ended(grpc.StatusCode.CANCELLED, "cancelled locally", None)
                continue
            if message is grpc.aio.EOF:
                if self._call is call:
                    self._stream_ended(grpc.StatusCode.OK, "the server ended the stream", None)
                continue
            assert isinstance(message, pb.ConnectResponse)
            self._handle(message)

    # -- internals ----------------------------------------------------------

    async def _open(self) -> None:
        self._state = "connecting" if self.connects == 0 else "reconnecting"
        self.connects += 1
        call: _Call = self._stub.Connect(metadata=tuple(self._metadata()))
        self._call = call
        # The first message is the location; if the write fails the read that
        # follows reports why.
        await self._write(_location_request(*self._location))

    async def _write(self, request: pb.ConnectRequest) -> bool:
        """Writes one message; False when the stream is not open.

        The write itself is shielded: cancelling the caller (a timeout around
        ``update_location``, say) must not cancel the gRPC call, which
        grpc.aio does when a write is cancelled. The lock is released when the
        write really ends, so writes never overlap.
        """
        call = self._call
        if call is None or call.done():
            return False
        await self._write_lock.acquire()
        return await asyncio.shield(asyncio.ensure_future(self._locked_write(call, request)))

    async def _locked_write(self, call: _Call, request: pb.ConnectRequest) -> bool:
        try:
            if call.done():
                return False
            await call.write(request)
            return True
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            return False
        except asyncio.CancelledError:
            return False  # the call was cancelled by close() or a reconnect
        finally:
            self._write_lock.release()

    def _drop_call(self) -> None:
        call, self._call = self._call, None
        if call is not None and not call.done():
            call.cancel()

    def _stream_ended(
        self, code: grpc.StatusCode, details: str, error: grpc.aio.AioRpcError | None
    ) -> None:
        """Decides between raising and scheduling a reconnect."""
        self._drop_call()
        self.last_error = f"{code.name}: {details}" if details else code.name
        if code in FATAL_CODES:
            failure = from_rpc_error(error) if error is not None else make_error(code, details)
            if not self._retry_expired_token(failure):
                self._fail(failure)
            self._schedule_reconnect(self.last_error, 0.0)
            return
        self._schedule_reconnect(self.last_error, None)

    def _retry_expired_token(self, failure: NearbyError) -> bool:
        """True when the stream ended at its token's expiry and the token
        source can refresh: reconnect once with a new token (the server asks
        for that beforehand with a Reconnect; this covers a missed one)."""
        if failure.reason != "TOKEN_EXPIRED" or not self._refreshable or self._expired_retry:
            return False
        self._expired_retry = True
        return True

    def _schedule_reconnect(self, cause: str, retry_after: float | None) -> None:
        if self._backoff.exhausted():
            self._fail(
                NearbyError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"gave up after {self._backoff.attempt} reconnect attempts; last: {cause}",
                )
            )
        delay = self._backoff.next_delay()
        if retry_after is not None:
            delay = retry_after
        self._delay = delay
        self._state = "reconnecting"
        log.info(
            "nearby stream ended (%s); reconnecting in %.2fs (attempt %d)",
            cause,
            delay,
            self._backoff.attempt,
        )
        self._pending.append(Reconnecting(self._backoff.attempt, delay, cause))

    def _fail(self, error: NearbyError) -> None:
        self._closed.set()
        self._state = "closed"
        self._pending.clear()
        if self._on_close is not None:
            self._on_close(self)
        raise error

    def _handle(self, message: pb.ConnectResponse) -> None:
        kind = message.WhichOneof("kind")
        if kind == "snapshot":
            snapshot = Snapshot.from_proto(message.snapshot)
            self._view.apply_snapshot(snapshot)
            self._backoff.reset()
            self._expired_retry = False
            self._state = "connected"
            self.last_error = ""
            self._pending.append(snapshot)
        elif kind == "events":
            for ev in message.events.events:
                which = ev.WhichOneof("kind")
                if which == "friend_update":
                    friend = NearbyFriend.from_proto(ev.friend_update.friend)
                    is_new = self._view.apply_moved(friend)
                    self._pending.append(FriendMoved(friend, is_new=is_new))
                elif which == "friend_gone":
                    left = FriendLeft.from_proto(ev.friend_gone)
                    self._view.apply_left(left.user_id)
                    self._pending.append(left)
        elif kind == "page":
            page = Page.from_proto(message.page)
            self._view.apply_page(page)
            self._pending.append(page)
        elif kind == "reconnect":
            retry_after = message.reconnect.retry_after.ToTimedelta().total_seconds()
            reason = message.reconnect.reason or "no reason given"
            self._drop_call()
            self.last_error = f"server asked to reconnect: {reason}"
            self._schedule_reconnect(self.last_error, max(0.0, retry_after))
        # heartbeats (and kinds unknown to this SDK version) are absorbed
