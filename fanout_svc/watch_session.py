"""Watch's I/O end of a session: a server stream for clients that cannot send
on one (browsers, over grpc-web or the Connect protocol).

Everything but the input is the session core's (session.py): the snapshot,
batched events, heartbeats, drain/Reconnect, the stall watchdog and the
slow-client rules. The input differs: the first position is the caller's
cached location (FAILED_PRECONDITION without one), and later positions are
the caller's own unary ReportLocation calls, which location_svc validates,
rate-caps, writes to history and publishes on the caller's `loc:{uid}`. The
session follows that channel through the hub like a friend's, with its own
listener (`Me`), so a report moves this list as a Connect location message
would. There is nothing to read from the client: a client that goes away
cancels the call.

A report that location_svc only caches (closer than MIN_REPORT_INTERVAL_S to
the last one it published) is not published: the list follows it at the
caller's next published report. In ghost mode nothing of the caller is
published, so while the caller is hidden (its own `hidden` event, or hidden
when Watch opened) the session re-reads the caller's cached location every
FOLLOW_HIDDEN_S, until a published report says the caller is visible again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from nearby.v1 import nearby_service_pb2 as pb

from fanout_svc.hub import GONE_HIDDEN, loc_channel
from fanout_svc.session import Process, Session
from mesh.errors import FailedPrecondition, ServiceError
from mesh.internal.v1 import events_pb2
from mesh.sharing import Policy
from mesh.types import Context

log = logging.getLogger("fanout_svc.watch_session")

FOLLOW_HIDDEN_S = 2.0
"""How often a hidden caller's own position is re-read (nothing is published)."""


def no_location() -> FailedPrecondition:
    return FailedPrecondition(
        "no recent location for you: report one with LocationService.ReportLocation, "
        "then open Watch",
        reason="NO_LOCATION",
    )


class Me:
    """The hub's listener on the caller's own channel: their published reports
    move the view (the newest fix wins; friends' listeners are the session's)."""

    __slots__ = ("hidden", "session", "t_ms")

    def __init__(self, session: WatchSession) -> None:
        self.session = session
        self.t_ms = -1
        self.hidden = False

    def moved(self, lat: float, lng: float, t_ms: int) -> None:
        if t_ms >= self.t_ms:
            self.t_ms = t_ms
            self.session.view.on_my_move(lat, lng)

    def on_moved(self, user_id: str, lat: float, lng: float, t_ms: int, pub_ms: int) -> None:
        if user_id == self.session.user_id:
            self.hidden = False  # published: visible
            self.moved(lat, lng, t_ms)

    def on_gone(self, user_id: str, reason: int) -> None:
        """Offline or ghost mode: the caller's friends lose them; their own list
        stays, and in ghost mode it follows the caller's cached position."""
        if user_id == self.session.user_id and reason == GONE_HIDDEN:
            self.hidden = True
            self.session.follow_hidden()

    def on_inbox(self, event: events_pb2.InboxEvent) -> None:
        """Not on this channel (the inbox's listener is the session)."""

    def on_sharing(self, user_id: str, policy: Policy) -> None:
        """The caller's own policy: it governs what friends see, not this list."""

    def on_traced(self, user_id: str, tp: str, pub_ms: int) -> None:
        """The caller's own report: no push to trace on this listener."""

    def resync(self) -> None:
        """Reports may have been missed: re-read the caller's cached location."""
        self.session.relocate()


class WatchSession(Session):
    response: ClassVar[type[pb.ConnectResponse] | type[pb.WatchResponse]] = pb.WatchResponse
    __slots__ = ("me", "polling")

    def __init__(self, process: Process, user_id: str, context: Context) -> None:
        super().__init__(process, user_id, context)
        self.me = Me(self)
        self.polling = False

    async def _first_position(self) -> events_pb2.PositionFix:
        """Follow the caller's channel first, then read the cached location, so
        that no report falls in between."""
        hub = self.process.hub
        hub.subscribe((loc_channel(self.user_id),), self.me)
        try:
            await hub.barrier()
            fix = await self._cached(include_hidden=False)
            hidden = fix is None  # or no location at all
            if hidden:
                fix = await self._cached()
            if fix is None:
                raise no_location()
        except BaseException:
            hub.unsubscribe((loc_channel(self.user_id),), self.me)
            raise
        me = self.me
        if hidden and not me.hidden:
            me.hidden = True
            self.follow_hidden()
        if me.t_ms > fix.recorded_at_ms:  # a newer report arrived meanwhile
            view = self.view
            return events_pb2.PositionFix(
                latitude=view.lat, longitude=view.lng, recorded_at_ms=me.t_ms
            )
        me.t_ms = fix.recorded_at_ms
        return fix

    async def _cached(self, include_hidden: bool = True) -> events_pb2.PositionFix | None:
        process = self.process
        async with process.load_limit:
            mine = await process.upstream.get_locations([self.user_id], include_hidden)
        return mine[0].fix if mine else None

    def follow_hidden(self) -> None:
        if not self.polling and self.ending is None:
            self.polling = True
            self._spawn(self._follow_hidden())

    async def _follow_hidden(self) -> None:
        try:
            while self.me.hidden and self.ending is None:
                await asyncio.sleep(FOLLOW_HIDDEN_S)
                await self._relocate()
        finally:
            self.polling = False

    def relocate(self) -> None:
        if self.ending is None:
            self._spawn(self._relocate())

    async def _relocate(self) -> None:
        try:
            fix = await self._cached()
        except ServiceError as exc:
            log.warning("re-reading the location of %s: %s", self.user_id, exc.message)
            return
        if fix is not None:
            self.me.moved(fix.latitude, fix.longitude, fix.recorded_at_ms)

    def _close(self) -> None:
        self.process.hub.unsubscribe((loc_channel(self.user_id),), self.me)
        super()._close()

    async def _read_loop(self) -> None:
        """Nothing to read: the caller's reports come through `Me`."""
