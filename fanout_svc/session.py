"""One Connect stream: what the user's client knows, and what it is owed.

The hub calls the `on_*` methods synchronously; they only update this
session's dicts and, when something must be pushed, put the friend in the
outbound queue and mark the session dirty. The queue coalesces by friend
(`pending`: friend id -> newest event), so it never holds more entries than
the user has friends; a replaced event counts as a drop. The stream's writer
(the handler task itself, in `run`) sends everything waiting as ONE
NearbyEvents message when the process-wide flush tick (settings.fanout_flush_ms)
wakes it. A client that stops reading blocks only its own writer: the
watchdog in streams.py ends it after settings.fanout_stall_s, and a queue
longer than settings.fanout_queue_max ends it at once.

Hysteresis: a friend enters the list at distance <= radius and leaves it only
beyond radius + settings.nearby_hysteresis_m.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import duration_pb2
from nearby.internal.v1 import events_pb2
from nearby.v1 import location_service_pb2
from nearby.v1 import nearby_service_pb2 as pb

from fanout_svc import metrics
from fanout_svc.hub import inbox_channel, loc_channel
from fanout_svc.nearby import Entry, fill, page_of, page_size
from mesh.errors import InvalidArgument, ServiceError, Unavailable, invalid_field
from mesh.geo import check_position, distance_m
from mesh.types import Context

if TYPE_CHECKING:
    from fanout_svc.streams import Streams

log = logging.getLogger("fanout_svc.session")

OUT_OF_RANGE = pb.FRIEND_GONE_REASON_OUT_OF_RANGE
UNFRIENDED = pb.FRIEND_GONE_REASON_UNFRIENDED
_ACCEPTED = location_service_pb2.REPORT_DISPOSITION_ACCEPTED
_COALESCED = location_service_pb2.REPORT_DISPOSITION_COALESCED


class Friend:
    """A friend as this stream knows them; lat is None while the position is unknown."""

    __slots__ = ("dist", "inside", "lat", "lng", "name", "t_ms")

    def __init__(self, name: str) -> None:
        self.name = name
        self.lat: float | None = None
        self.lng = 0.0
        self.t_ms = 0
        self.dist = 0.0
        self.inside = False


def to_fix(update: pb.LocationUpdate, prefix: str = "location") -> events_pb2.PositionFix:
    """Validate a client's LocationUpdate (INVALID_ARGUMENT naming the field)."""
    if not update.HasField("position"):
        raise invalid_field(f"{prefix}.position", "is required")
    lat, lng = update.position.latitude, update.position.longitude
    err = check_position(lat, lng, f"{prefix}.position")
    if err is not None:
        raise err
    t_ms = 0
    if update.HasField("recorded_at"):
        t_ms = update.recorded_at.seconds * 1000 + update.recorded_at.nanos // 1_000_000
        if t_ms <= 0:
            raise invalid_field(f"{prefix}.recorded_at", "must be after 1970")
    return events_pb2.PositionFix(latitude=lat, longitude=lng, recorded_at_ms=t_ms)


class _End:
    __slots__ = ("error", "reconnect")

    def __init__(self, error: ServiceError | None, reconnect: pb.Reconnect | None) -> None:
        self.error, self.reconnect = error, reconnect


class Session:
    __slots__ = (
        "__weakref__",
        "context",
        "direct",
        "dirty",
        "ending",
        "friends",
        "heartbeat_due",
        "inbox_backlog",
        "last_write",
        "lat",
        "leave_m",
        "lng",
        "loading",
        "pending",
        "radius_m",
        "resync_wanted",
        "stalled",
        "streams",
        "task",
        "tasks",
        "user_id",
        "wake",
        "write_started",
    )

    def __init__(self, streams: Streams, user_id: str, context: Context) -> None:
        s = streams.settings
        self.streams = streams
        self.user_id = user_id
        self.context = context
        self.radius_m = s.nearby_radius_m
        self.leave_m = s.nearby_radius_m + s.nearby_hysteresis_m
        self.lat = 0.0
        self.lng = 0.0
        self.friends: dict[str, Friend] = {}
        # friend id -> newest event: >= 0 an update (value = published_at_ms,
        # 0 when not caused by a pub/sub event), < 0 a FriendGone (-reason)
        self.pending: dict[str, int] = {}
        self.direct: list[pb.ConnectResponse] = []
        self.loading = True
        self.inbox_backlog: list[events_pb2.InboxEvent] | None = []
        self.wake: asyncio.Future[None] | None = None
        self.dirty = False
        self.heartbeat_due = False
        self.last_write = time.monotonic()
        self.write_started = 0.0
        self.ending: _End | None = None
        self.stalled = False
        self.task: asyncio.Task[Any] | None = None
        self.tasks: set[asyncio.Task[None]] | None = None
        self.resync_wanted = False

    # --- hub callbacks (synchronous, cheap) --------------------------------
    def on_moved(self, user_id: str, lat: float, lng: float, t_ms: int, pub_ms: int) -> None:
        f = self.friends.get(user_id)
        if f is None or (f.lat is not None and t_ms < f.t_ms):
            return
        f.lat, f.lng, f.t_ms = lat, lng, t_ms
        d = f.dist = distance_m(self.lat, self.lng, lat, lng)
        if self.loading:
            return
        if d <= self.radius_m or (f.inside and d <= self.leave_m):
            f.inside = True
            self._push(user_id, pub_ms)
        elif f.inside:
            f.inside = False
            self._push(user_id, -OUT_OF_RANGE)

    def on_gone(self, user_id: str, reason: int) -> None:
        f = self.friends.get(user_id)
        if f is None:
            return
        f.lat = None
        if f.inside:
            f.inside = False
            if not self.loading:
                self._push(user_id, -reason)

    def on_inbox(self, event: events_pb2.InboxEvent) -> None:
        if self.inbox_backlog is not None:
            self.inbox_backlog.append(event)
            return
        kind = event.WhichOneof("kind")
        if kind == "friend_added":
            self._add_friend(event.friend_added.friend_id, event.friend_added.display_name)
        elif kind == "friend_removed":
            self._remove_friend(event.friend_removed.friend_id)

    def resync(self) -> None:
        if self.ending is not None:
            return
        if self.task is None:  # still setting up: resync once the stream runs
            self.resync_wanted = True
        else:
            self._spawn(self._resync())

    # --- the user's own moves -------------------------------------------
    def on_my_move(self, lat: float, lng: float) -> None:
        """Friends with known positions may enter or leave without moving."""
        self.lat, self.lng = lat, lng
        if self.loading:
            return
        for fid, f in self.friends.items():
            if f.lat is None:
                continue
            d = f.dist = distance_m(lat, lng, f.lat, f.lng)
            if f.inside:
                if d > self.leave_m:
                    f.inside = False
                    self._push(fid, -OUT_OF_RANGE)
            elif d <= self.radius_m:
                f.inside = True
                self._push(fid, 0)

    # --- queue -------------------------------------------------------------
    def _push(self, fid: str, code: int) -> None:
        pending = self.pending
        if fid in pending:
            del pending[fid]
            metrics.HOT.drops += 1
        pending[fid] = code
        if len(pending) > self.streams.queue_max:
            self.fell_behind("queue")
        elif not self.dirty:
            self.dirty = True
            self.streams.mark(self)

    def kick(self) -> None:
        w = self.wake
        if w is not None and not w.done():
            w.set_result(None)

    def fell_behind(self, why: str) -> None:
        if self.ending is not None:
            return
        metrics.FELL_BEHIND.labels(why).inc()
        log.info("stream of %s fell behind (%s): ending it", self.user_id, why)
        self.end(
            Unavailable(
                "fell behind, reconnect for a fresh snapshot", reason="FELL_BEHIND", why=why
            ),
            reconnect=reconnect_msg("fell behind", 0.5, 2.0),
            abort_write=True,
        )

    def end(
        self,
        error: ServiceError | None,
        reconnect: pb.Reconnect | None = None,
        *,
        abort_write: bool = False,
    ) -> None:
        """End the stream: with OK when error is None, else with that error.

        abort_write: give up a write in progress (the client is not reading).
        """
        if self.ending is None:
            self.ending = _End(error, reconnect)
        if abort_write and self.write_started and self.task is not None and not self.stalled:
            self.stalled = True
            self.task.cancel()
        self.kick()

    def stall_out(self) -> None:
        """The watchdog saw one write blocked longer than settings.fanout_stall_s."""
        if self.stalled:
            return
        metrics.FELL_BEHIND.labels("stalled").inc()
        log.info("stream of %s stalled: ending it", self.user_id)
        self.end(
            Unavailable(
                "fell behind, reconnect for a fresh snapshot", reason="FELL_BEHIND", why="stalled"
            ),
            abort_write=True,
        )

    # --- loading friends and snapshots -----------------------------------
    async def load(self, first: bool) -> None:
        """Subscribe, then read friends and their cached locations."""
        hub, upstream = self.streams.hub, self.streams.upstream
        if first:
            hub.subscribe((inbox_channel(self.user_id),), self)
            await hub.barrier()
        limit = self.streams.load_limit
        async with limit:
            refs = await upstream.list_friends(self.user_id)
        # interned: the same friend ids and names are held by many streams
        wanted = {
            sys.intern(r.user_id): sys.intern(r.display_name)
            for r in refs
            if r.user_id != self.user_id
        }
        friends = self.friends
        removed = [fid for fid in friends if fid not in wanted]
        for fid in removed:
            del friends[fid]
        added = [fid for fid in wanted if fid not in friends]
        for fid, name in wanted.items():
            f = friends.get(fid)
            if f is None:
                friends[fid] = Friend(name)
            else:
                f.name = name
                f.lat = None
        hub.unsubscribe([loc_channel(fid) for fid in removed], self)
        hub.subscribe([loc_channel(fid) for fid in added], self)
        await hub.barrier()
        async with limit:
            locs = await upstream.get_locations(list(friends))
        for loc in locs:
            fix = loc.fix
            self.on_moved(loc.user_id, fix.latitude, fix.longitude, fix.recorded_at_ms, 0)

    def finish_load(self) -> pb.ConnectResponse:
        """Fresh inside flags, empty queue, and the snapshot that replaces it all."""
        self.loading = False
        radius = self.radius_m
        for f in self.friends.values():
            if f.lat is None:
                f.inside = False
            else:
                f.dist = distance_m(self.lat, self.lng, f.lat, f.lng)
                f.inside = f.dist <= radius
        self.pending.clear()
        page = page_of(self._entries(), "", self.streams.settings.nearby_page_size)
        msg = pb.ConnectResponse()
        snap = msg.snapshot
        for e in page.entries:
            fill(snap.friends.add(), e)
        snap.total_size = page.total
        snap.next_page_token = page.next_token
        snap.radius_meters = radius
        backlog, self.inbox_backlog = self.inbox_backlog or [], None
        for ev in backlog:
            self.on_inbox(ev)
        return msg

    def _entries(self) -> list[Entry]:
        return [
            Entry(f.dist, fid, f.name, f.lat, f.lng, f.t_ms)
            for fid, f in self.friends.items()
            if f.inside and f.lat is not None
        ]

    async def _resync(self) -> None:
        async with self.streams.resync_limit:
            if self.ending is not None:
                return
            self.loading = True
            self.inbox_backlog = []
            try:
                await self.load(first=False)
            except ServiceError as exc:
                self.end(
                    Unavailable(f"resynchronising failed: {exc.message}", reason="RESYNC_FAILED")
                )
                return
            self.direct.append(self.finish_load())
            metrics.RESYNCS.inc()
            self.kick()

    def _add_friend(self, fid: str, name: str) -> None:
        if fid == self.user_id or not fid:
            return
        f = self.friends.get(fid)
        if f is not None:
            f.name = name
            return
        self.friends[sys.intern(fid)] = Friend(sys.intern(name))
        self.streams.hub.subscribe((loc_channel(fid),), self)
        self._spawn(self._fetch_friend(fid))

    async def _fetch_friend(self, fid: str) -> None:
        await self.streams.hub.barrier()
        if fid not in self.friends:
            return
        try:
            async with self.streams.load_limit:
                locs = await self.streams.upstream.get_locations([fid])
        except ServiceError as exc:
            log.warning("new friend %s of %s: %s", fid, self.user_id, exc.message)
            return
        for loc in locs:
            fix = loc.fix
            self.on_moved(loc.user_id, fix.latitude, fix.longitude, fix.recorded_at_ms, 0)

    def _remove_friend(self, fid: str) -> None:
        f = self.friends.pop(fid, None)
        if f is None:
            return
        self.streams.hub.unsubscribe((loc_channel(fid),), self)
        if f.inside or fid in self.pending:
            self._push(fid, -UNFRIENDED)

    def _spawn(self, coro: Any) -> None:
        if self.tasks is None:
            self.tasks = set()
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def channels(self) -> list[bytes]:
        return [inbox_channel(self.user_id), *(loc_channel(fid) for fid in self.friends)]

    # --- requests from the client ------------------------------------------
    async def _read_loop(self) -> None:
        ctx = self.context
        try:
            while self.ending is None:
                req = await ctx.read()
                if req is grpc.aio.EOF:
                    self.end(None)
                    return
                kind = req.WhichOneof("kind")
                if kind == "location":
                    await self._on_location(req.location)
                elif kind == "page_request":
                    self._on_page(req.page_request)
                else:
                    raise invalid_field("kind", "set location or page_request")
        except ServiceError as exc:
            self.end(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("stream of %s: read ended: %r", self.user_id, exc)
            self.end(None)

    async def _on_location(self, update: pb.LocationUpdate) -> None:
        fix = to_fix(update)
        try:
            result = await self.streams.reports.report(self.user_id, fix)
        except ServiceError as exc:
            # transient (location_svc unreachable): the next report retries
            log.warning("report of %s not recorded: %s", self.user_id, exc.message)
            return
        if result.error:
            raise InvalidArgument(result.error, reason="INVALID_FIELD")
        if result.disposition in (_ACCEPTED, _COALESCED):
            f = result.fix if result.HasField("fix") else fix
            self.on_my_move(f.latitude, f.longitude)

    def _on_page(self, req: pb.PageRequest) -> None:
        size = page_size(req.page_size, self.streams.settings.nearby_page_size)
        page = page_of(self._entries(), req.page_token, size)
        msg = pb.ConnectResponse()
        p = msg.page
        for e in page.entries:
            fill(p.friends.add(), e)
        p.total_size = page.total
        p.next_page_token = page.next_token
        self.direct.append(msg)
        self.kick()

    # --- the writer ---------------------------------------------------------
    async def write(self, msg: pb.ConnectResponse) -> None:
        self.write_started = time.monotonic()
        await self.context.write(msg)
        self.last_write = time.monotonic()
        self.write_started = 0.0
        metrics.HOT.messages += 1

    def _has_work(self) -> bool:
        return bool(self.ending or self.direct or self.pending or self.heartbeat_due)

    async def run(self) -> None:
        """Write until the stream ends; raises the error it ends with."""
        loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        reader = asyncio.create_task(self._read_loop())
        if self.resync_wanted:
            self.resync()
        try:
            while True:
                if not self._has_work():
                    self.wake = loop.create_future()
                    await self.wake
                    self.wake = None
                if self.ending is not None:
                    break
                if self.direct:
                    msgs, self.direct = self.direct, []
                    for m in msgs:
                        await self.write(m)
                        kind = m.WhichOneof("kind")
                        if kind == "snapshot":
                            metrics.HOT.snapshot += 1
                        else:
                            metrics.HOT.page += 1
                if self.pending:
                    msg, oldest = self._build_events()
                    await self.write(msg)
                    if oldest:
                        metrics.PUSH_LATENCY.observe(max(0.0, time.time() - oldest / 1000.0))
                elif self.heartbeat_due and not self.direct:
                    hb = pb.ConnectResponse()
                    hb.heartbeat.server_time.GetCurrentTime()
                    await self.write(hb)
                    metrics.HOT.heartbeat += 1
                self.heartbeat_due = False
            end = self.ending
            if end.reconnect is not None and not self.stalled:
                await self.write(pb.ConnectResponse(reconnect=end.reconnect))
                metrics.HOT.reconnect += 1
        except asyncio.CancelledError:
            task = self.task
            if not self.stalled or task is None:
                raise
            task.uncancel()
        finally:
            reader.cancel()
        if self.ending is not None and self.ending.error is not None:
            raise self.ending.error

    def _build_events(self) -> tuple[pb.ConnectResponse, int]:
        pending, self.pending = self.pending, {}
        friends = self.friends
        msg = pb.ConnectResponse()
        events = msg.events.events
        oldest = 0
        updates = 0
        for fid, code in pending.items():
            if code >= 0:
                f = friends.get(fid)
                if f is None or f.lat is None:
                    continue
                fm = events.add().friend_update.friend
                fm.user_id = fid
                fm.display_name = f.name
                pos = fm.position
                pos.latitude = f.lat
                pos.longitude = f.lng
                fm.distance_meters = f.dist
                ts = fm.update_time
                t = f.t_ms
                ts.seconds = t // 1000
                ts.nanos = (t % 1000) * 1_000_000
                updates += 1
                if code and (not oldest or code < oldest):
                    oldest = code
            else:
                g = events.add().friend_gone
                g.user_id = fid
                g.reason = -code  # type: ignore[assignment]
                metrics.HOT.gone[-code] += 1
        metrics.HOT.update += updates
        metrics.BATCH_EVENTS.observe(len(pending))
        return msg, oldest


def reconnect_msg(reason: str, lo_s: float, hi_s: float) -> pb.Reconnect:
    """A Reconnect whose retry_after is jittered uniformly in [lo_s, hi_s]."""
    wait = random.uniform(lo_s, hi_s)
    d = duration_pb2.Duration(seconds=int(wait), nanos=int((wait % 1) * 1e9))
    return pb.Reconnect(reason=reason, retry_after=d)
