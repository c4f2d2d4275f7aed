"""One live stream (Connect, and Watch through watch_session.py): its I/O and
its lifetime.

The session reads the client's messages (locations, page requests), writes
what its friend view (view.py) owes as ONE NearbyEvents message per flush
tick, heartbeats, and ends itself: drain, fell behind, stalled, bad input,
client gone. Everything it holds it clears itself when it ends. It is the
hub's listener: `on_moved`/`on_gone` are the view's own bound methods (the
hub's hottest call goes straight to the view, no extra call per update),
`on_inbox` and `resync` are the session's.

Process-wide parts (hub, batched reports, limits, the flush tick, the
registry) come from the coordinator (streams.py), passed in explicitly.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, ClassVar, Protocol

import grpc
from google.protobuf import duration_pb2
from nearby.v1 import location_service_pb2
from nearby.v1 import nearby_service_pb2 as pb

from fanout_svc import metrics
from fanout_svc.admission import Admitted
from fanout_svc.hub import Hub, inbox_channel, loc_channel
from fanout_svc.nearby import Page, fill, page_size
from fanout_svc.reports import ReportBatcher
from fanout_svc.upstream import Upstream
from fanout_svc.view import FriendView
from mesh import tracing
from mesh.clock import now_ms
from mesh.errors import InvalidArgument, NotFound, ServiceError, Unavailable, invalid_field
from mesh.fixes import PUBLIC_FIELDS, FixRules
from mesh.internal.v1 import events_pb2
from mesh.internal.v1 import location_ingest_service_pb2 as li
from mesh.settings import Settings
from mesh.sharing import DEFAULT, PRECISION_OF, Policy
from mesh.types import Context

log = logging.getLogger("fanout_svc.session")

_ACCEPTED = location_service_pb2.REPORT_DISPOSITION_ACCEPTED
_COALESCED = location_service_pb2.REPORT_DISPOSITION_COALESCED

CONNECT_FIELDS = {part: f"location.{name}" for part, name in PUBLIC_FIELDS.items()}
"""The client's names for the parts of a fix (ConnectRequest.location)."""

PRECISION = PRECISION_OF
"""Access level -> NearbyFriend.precision (written only for a friend with access)."""

REPORT_TO_CLIENT = {
    "fix.latitude": "location.position.latitude",
    "fix.longitude": "location.position.longitude",
    "fix.recorded_at_ms": "location.recorded_at",
    "fix": "location",
}
"""ReportRejection.field (relative to a LocationReport) -> the client's field."""

RESYNC_BACKOFF_S = (0.25, 0.5, 1.0, 2.0, 4.0)
# Answers (pages, snapshots) waiting for the writer before the reader stops
# reading the client's requests: a client that asks for pages but does not read
# them is held back by HTTP/2 flow control instead of growing this queue.
DIRECT_MAX = 8
"""Waits between the attempts of a resync that fails with UNAVAILABLE (about
8 s in all, each jittered by ±50 %); then the stream ends (RESYNC_FAILED)."""


class Process(Protocol):
    """What a session uses of its process (streams.Streams provides it)."""

    settings: Settings
    hub: Hub
    upstream: Upstream
    reports: ReportBatcher
    rules: FixRules
    load_limit: asyncio.Semaphore
    resync_limit: asyncio.Semaphore

    def mark(self, session: Session) -> None:
        """Wake `session` at the next flush tick."""
        ...

    def add(self, session: Session) -> None: ...

    async def admit(self, session: Session) -> Admitted:
        """The per-user cap and the token's expiry (admission.py); raises."""
        ...

    def remove(self, session: Session) -> None: ...


def to_fix(update: pb.LocationUpdate, rules: FixRules, now: int) -> events_pb2.PositionFix:
    """Validate a client's LocationUpdate (INVALID_ARGUMENT naming its field)."""
    if not update.HasField("position"):
        raise invalid_field("location.position", "is required")
    lat, lng = update.position.latitude, update.position.longitude
    t_ms = update.recorded_at.ToMilliseconds() if update.HasField("recorded_at") else None
    rules.check(lat, lng, t_ms, now, CONNECT_FIELDS)
    return events_pb2.PositionFix(latitude=lat, longitude=lng, recorded_at_ms=t_ms or 0)


def rejected(rejection: li.ReportRejection, user_id: str) -> ServiceError:
    """location_svc's rejection of a report, in the client's words: NOT_FOUND
    when the caller has no account, else INVALID_ARGUMENT naming its field."""
    if rejection.field == "user_id" and rejection.reason == "CALLER_NOT_FOUND":
        return NotFound(f"your user '{user_id}' {rejection.description}", reason=rejection.reason)
    field = REPORT_TO_CLIENT.get(rejection.field, "location")
    return InvalidArgument(
        f"{field}: {rejection.description}",
        reason=rejection.reason or "INVALID_FIELD",
        field=field,
    )


class _End:
    __slots__ = ("error", "reconnect")

    def __init__(self, error: ServiceError | None, reconnect: pb.Reconnect | None) -> None:
        self.error, self.reconnect = error, reconnect


Response = pb.ConnectResponse | pb.WatchResponse
"""What a session writes: the two RPCs' server messages share their fields."""


class Session:
    """The session core, with Connect's I/O end (the client's messages in);
    watch_session.WatchSession is Watch's (the caller's own reports in)."""

    response: ClassVar[type[pb.ConnectResponse] | type[pb.WatchResponse]] = pb.ConnectResponse
    __slots__ = (
        "__weakref__",
        "context",
        "direct",
        "ending",
        "heartbeat_due",
        "inbox_backlog",
        "last_write",
        "on_gone",
        "on_moved",
        "owed",
        "process",
        "reader_wait",
        "resync_wanted",
        "stalled",
        "task",
        "tasks",
        "traces",
        "user_id",
        "view",
        "wake",
        "write_started",
    )

    def __init__(self, process: Process, user_id: str, context: Context) -> None:
        s = process.settings
        self.process = process
        self.user_id = user_id
        self.context = context
        # view.Owner.owed: the queue went from empty to not empty -> flush tick
        # (a partial: no Python frame of our own on the push path)
        self.owed: Callable[[], None] = functools.partial(process.mark, self)
        self.view = view = FriendView(
            user_id,
            self,
            radius_m=s.nearby_radius_m,
            hysteresis_m=s.nearby_hysteresis_m,
            queue_max=s.fanout_queue_max,
        )
        # the hub's Listener: friends' events go straight to the view
        self.on_moved: Callable[[str, float, float, int, int], None] = view.on_moved
        self.on_gone: Callable[[str, int], None] = view.on_gone
        self.direct: list[Response] = []  # snapshots and pages, in order
        self.reader_wait: asyncio.Future[None] | None = None  # the reader, held at DIRECT_MAX
        self.inbox_backlog: list[events_pb2.InboxEvent] | None = []
        self.wake: asyncio.Future[None] | None = None
        self.heartbeat_due = False
        self.last_write = time.monotonic()
        self.write_started = 0.0
        self.ending: _End | None = None
        self.stalled = False
        self.task: asyncio.Task[Any] | None = None
        self.tasks: set[asyncio.Task[None]] | None = None
        self.resync_wanted = False
        # tracing on: friend id -> (publish traceparent, published_at_ms, received ns)
        self.traces: dict[str, tuple[str, int, int]] | None = None

    # --- the view's owner (view.Owner; owed: the coordinator's mark) --------
    def dropped(self) -> None:
        metrics.HOT.drops += 1

    def overflowed(self) -> None:
        self.fell_behind("queue")

    # --- the hub's listener (on_moved/on_gone: the view's) ------------------
    def on_inbox(self, event: events_pb2.InboxEvent) -> None:
        if self.inbox_backlog is not None:  # loading: applied after the snapshot
            self.inbox_backlog.append(event)
            return
        kind = event.WhichOneof("kind")
        if kind == "friend_added":
            added = event.friend_added
            fid = sys.intern(added.friend_id)
            if self.view.add_friend(fid, sys.intern(added.display_name)):
                self.process.hub.subscribe((loc_channel(fid),), self)
                self._spawn(self._fetch_friend(fid))
        elif kind == "friend_removed":
            fid = event.friend_removed.friend_id
            if self.view.remove_friend(fid):
                self.process.hub.unsubscribe((loc_channel(fid),), self)
        elif kind == "account_deleted":
            self.end(
                NotFound("your account was deleted: this stream ends", reason="ACCOUNT_DELETED")
            )

    def on_traced(self, user_id: str, tp: str, pub_ms: int) -> None:
        """The hub's traced update of a friend: its push gets a span if it is owed."""
        if self.view.owed.get(user_id) == pub_ms:
            if self.traces is None:
                self.traces = {}
            self.traces[user_id] = (tp, pub_ms, time.time_ns())

    def _take_traces(self) -> list[tuple[str, str, int]]:
        """The traced updates about to be written (not replaced since they came)."""
        traces, self.traces = self.traces or {}, None
        owed = self.view.owed
        return [(fid, tp, t0) for fid, (tp, pub, t0) in traces.items() if owed.get(fid) == pub]

    def on_sharing(self, user_id: str, policy: Policy) -> None:
        """A friend's policy changed: access may be lost (FriendGone) or gained
        (their cached location is read at once)."""
        if self.view.set_policy(user_id, policy, now_ms()):
            self._spawn(self._fetch_friend(user_id))

    def review(self) -> None:
        """A rule of a friend's policy ended (the watchdog's clock)."""
        for fid in self.view.review(now_ms()):
            self._spawn(self._fetch_friend(fid))

    def resync(self) -> None:
        if self.ending is not None:
            return
        if self.task is None:  # still setting up: resync once the stream runs
            self.resync_wanted = True
        else:
            self._spawn(self._resync())

    # --- the whole stream ---------------------------------------------------
    async def serve(self) -> None:
        """Admission (cap, token expiry), then the stream; raises its error."""
        admitted = await self.process.admit(self)
        try:
            await self._serve()
        finally:
            admitted.close()

    async def _first_position(self) -> events_pb2.PositionFix:
        """Connect's first message: the caller's location, reported."""
        first = await self.context.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "location":
            raise InvalidArgument(
                "the first message of the stream must be a location (ConnectRequest.location)",
                reason="LOCATION_REQUIRED",
            )
        process = self.process
        fix = to_fix(first.location, process.rules, now_ms())
        # the stream's first report: recorded only if the caller has an account
        result = await self._report(fix, check_account=True)
        if result.HasField("rejection"):
            raise rejected(result.rejection, self.user_id)
        return result.fix if result.HasField("fix") else fix

    async def _serve(self) -> None:
        """First location, snapshot, then the stream until it ends; raises its error."""
        process = self.process
        me = await self._first_position()
        self.view.on_my_move(me.latitude, me.longitude)  # loading: only sets it
        process.add(self)
        try:
            await self._load(first=True)
            self.direct.append(self._snapshot())  # the writer sends it first
            await self._run()
        finally:
            self._close()
            process.remove(self)

    def _close(self) -> None:
        """The stream is over: drop its subscriptions, tasks and state."""
        self.process.hub.unsubscribe(self.channels(), self)
        if self.tasks:
            for t in list(self.tasks):
                t.cancel()
        self.direct.clear()
        self.view.clear()

    def channels(self) -> list[bytes]:
        return [inbox_channel(self.user_id), *(loc_channel(fid) for fid in self.view.friends)]

    # --- ending -------------------------------------------------------------
    def kick(self) -> None:
        """Wake the writer (the flush tick, a direct message, an end)."""
        w = self.wake
        if w is not None and not w.done():
            w.set_result(None)

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

    def ask_reconnect(self, reconnect: pb.Reconnect) -> None:
        """Tell the client to reconnect (its token expires soon); the stream goes on."""
        if self.ending is None:
            self.direct.append(self.response(reconnect=reconnect))
            self.kick()

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

    def drain(self) -> None:
        """The server is shutting down: Reconnect, then UNAVAILABLE."""
        self.end(
            Unavailable(
                "this server is shutting down; reconnect (you will get a fresh snapshot)",
                reason="DRAINING",
            ),
            reconnect=reconnect_msg("server draining", 0.0, 1.0),
        )

    def watch(self, now: float, stall_s: float, heartbeat_s: float) -> None:
        """The watchdog's per-stream part (the coordinator calls it about once a
        second): end a stream whose one write is blocked longer than stall_s,
        heartbeat one silent for heartbeat_s."""
        started = self.write_started
        if started:
            if now - started > stall_s and not self.stalled:
                metrics.FELL_BEHIND.labels("stalled").inc()
                log.info("stream of %s stalled: ending it", self.user_id)
                self.end(
                    Unavailable(
                        "fell behind, reconnect for a fresh snapshot",
                        reason="FELL_BEHIND",
                        why="stalled",
                    ),
                    abort_write=True,
                )
        elif now - self.last_write >= heartbeat_s and not self.heartbeat_due:
            self.heartbeat_due = True
            self.kick()
        review = self.view.review_ms
        if review and now_ms() >= review:
            self.review()

    # --- loading friends and snapshots -----------------------------------
    async def _load(self, first: bool) -> None:
        """Subscribe, then read friends and their cached locations."""
        process, view = self.process, self.view
        hub, upstream = process.hub, process.upstream
        view.begin_load()
        if first:
            hub.subscribe((inbox_channel(self.user_id),), self)
            await hub.barrier()
        async with process.load_limit:
            refs = await upstream.list_friends(self.user_id)
        # interned: the same friend ids and names are held by many streams
        added, removed = view.set_friends(
            {sys.intern(r.user_id): sys.intern(r.display_name) for r in refs}
        )
        hub.unsubscribe([loc_channel(fid) for fid in removed], self)
        hub.subscribe([loc_channel(fid) for fid in added], self)
        await hub.barrier()
        asked = list(view.friends)
        async with process.load_limit:
            locs, policies = await upstream.get_shared(asked)
        apply_policies(view, asked, policies)
        on_moved = view.on_moved
        for loc in locs:
            fix = loc.fix
            on_moved(loc.user_id, fix.latitude, fix.longitude, fix.recorded_at_ms, 0)

    def _snapshot(self) -> Response:
        """The snapshot that replaces everything; then the inbox events held meanwhile."""
        view = self.view
        view.finish_load()
        page = view.page("", self.process.settings.nearby_page_size)
        msg = self.response()
        snap = msg.snapshot
        _fill_page(snap.friends, page)
        snap.total_size = page.total
        snap.next_page_token = page.next_token
        snap.radius_meters = view.radius_m
        backlog, self.inbox_backlog = self.inbox_backlog or [], None
        for ev in backlog:
            self.on_inbox(ev)
        return msg

    async def _resync(self) -> None:
        """Re-read everything for a fresh snapshot. A read that fails with
        UNAVAILABLE (Redis or a service still recovering) is tried again
        after RESYNC_BACKOFF_S (jittered); the stream ends only when the
        last attempt fails too."""
        self.inbox_backlog = []
        for backoff in (*RESYNC_BACKOFF_S, None):
            async with self.process.resync_limit:
                if self.ending is not None:
                    return
                try:
                    await self._load(first=False)
                except ServiceError as exc:
                    if backoff is None or exc.code != grpc.StatusCode.UNAVAILABLE:
                        self.end(
                            Unavailable(
                                f"resynchronising failed: {exc.message}", reason="RESYNC_FAILED"
                            )
                        )
                        return
                    log.info("resync of %s failed (%s); retrying", self.user_id, exc.message)
                else:
                    self.direct.append(self._snapshot())
                    metrics.RESYNCS.inc()
                    self.kick()
                    return
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))

    async def _fetch_friend(self, fid: str) -> None:
        process = self.process
        await process.hub.barrier()
        if fid not in self.view.friends:
            return
        try:
            async with process.load_limit:
                locs, policies = await process.upstream.get_shared([fid])
        except ServiceError as exc:
            log.warning("new friend %s of %s: %s", fid, self.user_id, exc.message)
            return
        apply_policies(self.view, (fid,), policies)
        for loc in locs:
            fix = loc.fix
            self.view.on_moved(loc.user_id, fix.latitude, fix.longitude, fix.recorded_at_ms, 0)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self.tasks is None:
            self.tasks = set()
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- requests from the client ------------------------------------------
    async def _read_loop(self) -> None:
        ctx = self.context
        try:
            while self.ending is None:
                if len(self.direct) >= DIRECT_MAX:
                    # the client is not reading its answers: stop reading until
                    # the writer has taken them (flow control holds the client)
                    self.reader_wait = asyncio.get_running_loop().create_future()
                    await self.reader_wait
                    self.reader_wait = None
                    continue
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
        process = self.process
        fix = to_fix(update, process.rules, now_ms())
        try:
            result = await self._report(fix)
        except ServiceError as exc:
            if exc.code != grpc.StatusCode.UNAVAILABLE:
                raise  # not retryable: the client learns it as itself
            # transient (location_svc unreachable): the next report retries
            log.warning("report of %s not recorded: %s", self.user_id, exc.message)
            return
        if result.HasField("rejection"):
            raise rejected(result.rejection, self.user_id)
        if result.disposition in (_ACCEPTED, _COALESCED):
            f = result.fix if result.HasField("fix") else fix
            self.view.on_my_move(f.latitude, f.longitude)

    async def _report(
        self, fix: events_pb2.PositionFix, *, check_account: bool = False
    ) -> li.ReportResult:
        """Report one fix, in a trace of its own when tracing is on."""
        reports = self.process.reports
        span = (
            tracing.update_span(self.context.invocation_metadata())
            if tracing.TRACER is not None
            else None
        )
        if span is None:
            return await reports.report(self.user_id, fix, check_account=check_account)
        try:
            return await reports.report(
                self.user_id, fix, tracing.traceparent(span), check_account=check_account
            )
        finally:
            span.end()

    def _on_page(self, req: pb.PageRequest) -> None:
        try:
            size = page_size(req.page_size, self.process.settings.nearby_page_size)
            page = self.view.page(req.page_token, size)
        except InvalidArgument as exc:
            raise _page_request_error(exc) from exc
        msg = pb.ConnectResponse()
        p = msg.page
        _fill_page(p.friends, page)
        p.total_size = page.total
        p.next_page_token = page.next_token
        self.direct.append(msg)
        self.kick()

    # --- the writer ---------------------------------------------------------
    async def _write(self, msg: Response) -> None:
        self.write_started = time.monotonic()
        await self.context.write(msg)
        self.last_write = time.monotonic()
        self.write_started = 0.0
        metrics.HOT.messages += 1

    async def _run(self) -> None:
        """Write until the stream ends; raises the error it ends with."""
        loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        reader = asyncio.create_task(self._read_loop())
        view = self.view
        if self.resync_wanted:
            self.resync()
        try:
            while True:
                if not (self.ending or self.direct or view.owed or self.heartbeat_due):
                    self.wake = loop.create_future()
                    await self.wake
                    self.wake = None
                if self.ending is not None:
                    break
                if self.direct:
                    msgs, self.direct = self.direct, []
                    held = self.reader_wait
                    if held is not None and not held.done():
                        held.set_result(None)
                    for m in msgs:
                        await self._write(m)
                        kind = m.WhichOneof("kind")
                        if kind == "snapshot":
                            metrics.HOT.snapshot += 1
                        elif kind == "reconnect":
                            metrics.HOT.reconnect += 1
                        else:
                            metrics.HOT.page += 1
                if view.owed:
                    traced = self._take_traces() if self.traces else None
                    msg, oldest = self._events()
                    await self._write(msg)
                    if traced:
                        tracing.push_spans(traced, self.user_id)
                    if oldest:
                        metrics.PUSH_LATENCY.observe(max(0.0, time.time() - oldest / 1000.0))
                elif self.heartbeat_due and not self.direct:
                    hb = self.response()
                    hb.heartbeat.server_time.GetCurrentTime()
                    await self._write(hb)
                    metrics.HOT.heartbeat += 1
                self.heartbeat_due = False
            end = self.ending
            if end.reconnect is not None and not self.stalled:
                await self._write(self.response(reconnect=end.reconnect))
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

    def _events(self) -> tuple[Response, int]:
        """What the view owes, as one NearbyEvents message (and its oldest publish ms)."""
        view = self.view
        owed = view.take_owed()
        friends = view.friends
        msg = self.response()
        events = msg.events.events
        oldest = 0
        updates = 0
        gone = metrics.HOT.gone
        for fid, code in owed.items():
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
                fm.precision = PRECISION[f.access]
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
                gone[-code] += 1
        metrics.HOT.update += updates
        metrics.BATCH_EVENTS.observe(len(owed))
        return msg, oldest


def apply_policies(view: FriendView, asked: Iterable[str], policies: dict[str, Policy]) -> None:
    """The policies read with the locations of `asked`; one of them without a
    policy has the default one (location_svc answers only once Redis holds
    them all)."""
    t = now_ms()
    for fid in asked:
        view.set_policy(fid, policies.get(fid, DEFAULT), t)


def _fill_page(out: Any, page: Page) -> None:
    for e in page.entries:
        fill(out.add(), e)


def _page_request_error(exc: InvalidArgument) -> InvalidArgument:
    """A page_request's error, naming the client's field (page_request.page_size...)."""
    field = exc.metadata.get("field", "")
    if not field:
        return exc
    return invalid_field(f"page_request.{field}", exc.message.removeprefix(f"{field}: "))


def reconnect_msg(reason: str, lo_s: float, hi_s: float) -> pb.Reconnect:
    """A Reconnect whose retry_after is jittered uniformly in [lo_s, hi_s]."""
    wait = random.uniform(lo_s, hi_s)
    d = duration_pb2.Duration(seconds=int(wait), nanos=int((wait % 1) * 1e9))
    return pb.Reconnect(reason=reason, retry_after=d)
