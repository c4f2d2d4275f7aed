"""Every stream of the process: the flush tick, the watchdog and drain.

One timer per process (not per stream) batches pushes: the first session that
gets something to send arms a `fanout_flush_ms` timer; when it fires, every
session marked meanwhile is woken and writes all it has as one message. A
housekeeping task checks, about once a second, for writes blocked longer than
`fanout_stall_s` (the client stopped reading) and for streams silent for
`heartbeat_s` (they get a Heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from fanout_svc import memory, metrics
from fanout_svc.hub import Hub
from fanout_svc.reports import ReportBatcher
from fanout_svc.session import Session, reconnect_msg
from fanout_svc.upstream import Upstream
from mesh.errors import Unavailable
from mesh.settings import Settings

log = logging.getLogger("fanout_svc.streams")

LOAD_CONCURRENCY = 64


class Streams:
    def __init__(
        self, settings: Settings, hub: Hub, upstream: Upstream, reports: ReportBatcher
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.upstream = upstream
        self.reports = reports
        self.queue_max = settings.fanout_queue_max
        self.flush_s = settings.fanout_flush_ms / 1000.0
        self.sessions: set[Session] = set()
        self.resync_limit = asyncio.Semaphore(64)
        # connect-time reads (friend list, cached locations) in flight at once:
        # a storm of 10,000 connects queues here instead of piling thousands of
        # calls onto friend_svc/location_svc, where they would miss their deadline
        self.load_limit = asyncio.Semaphore(LOAD_CONCURRENCY)
        self.draining = False
        self._dirty: list[Session] = []
        self._tick: asyncio.TimerHandle | None = None
        self._house: asyncio.Task[None] | None = None
        self._empty = asyncio.Event()
        self._empty.set()
        self._trim_count = 0
        self._last_count = 0

    def start(self) -> None:
        self._house = asyncio.create_task(self._housekeeping(), name="fanout-housekeeping")

    async def close(self) -> None:
        if self._house is not None:
            self._house.cancel()
            await asyncio.gather(self._house, return_exceptions=True)
        if self._tick is not None:
            self._tick.cancel()

    # --- registry -----------------------------------------------------------
    def add(self, session: Session) -> None:
        self.sessions.add(session)
        self._empty.clear()
        metrics.STREAMS.set(len(self.sessions))

    def remove(self, session: Session) -> None:
        """The stream is over: drop its subscriptions, tasks and queue."""
        self.sessions.discard(session)
        self.hub.unsubscribe(session.channels(), session)
        if session.tasks:
            for t in list(session.tasks):
                t.cancel()
        session.pending.clear()
        session.direct.clear()
        session.friends.clear()
        metrics.STREAMS.set(len(self.sessions))
        if not self.sessions:
            self._empty.set()

    # --- flush tick ---------------------------------------------------------
    def mark(self, session: Session) -> None:
        self._dirty.append(session)
        if self._tick is None:
            self._tick = asyncio.get_running_loop().call_later(self.flush_s, self._flush)

    def _flush(self) -> None:
        self._tick = None
        dirty, self._dirty = self._dirty, []
        for s in dirty:
            s.dirty = False
            s.kick()

    # --- watchdog and heartbeats ------------------------------------------
    async def _housekeeping(self) -> None:
        s = self.settings
        period = max(0.05, min(1.0, s.heartbeat_s / 4, s.fanout_stall_s / 4))
        while True:
            await asyncio.sleep(period)
            try:
                now = time.monotonic()
                self.sweep(now)
                self._maybe_trim()
            except Exception:
                log.exception("housekeeping failed")

    def _maybe_trim(self) -> None:
        """Once a storm is over (the stream count moved a lot since the last
        trim and has settled since the last sweep): hand the setup transients
        back to the OS (memory.py)."""
        n = len(self.sessions)
        settled = abs(n - self._last_count) < max(10, n // 100)
        self._last_count = n
        if settled and abs(n - self._trim_count) >= max(100, self._trim_count // 10):
            self._trim_count = n
            memory.trim()

    def sweep(self, now: float) -> None:
        stall, beat = self.settings.fanout_stall_s, self.settings.heartbeat_s
        for session in list(self.sessions):
            started = session.write_started
            if started:
                if now - started > stall:
                    session.stall_out()
            elif now - session.last_write >= beat and not session.heartbeat_due:
                session.heartbeat_due = True
                session.kick()

    # --- drain ----------------------------------------------------------------
    async def drain(self) -> None:
        """Tell every client to reconnect (staggered over drain_s), end the streams."""
        self.draining = True
        sessions = list(self.sessions)
        if not sessions:
            return
        random.shuffle(sessions)
        spread = self.settings.drain_s
        loop = asyncio.get_running_loop()
        log.info("draining %d streams over %.1f s", len(sessions), spread)
        for i, session in enumerate(sessions):
            loop.call_later(spread * i / len(sessions), self._drain_one, session)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), spread + 3.0)

    @staticmethod
    def _drain_one(session: Session) -> None:
        session.end(
            Unavailable(
                "this server is shutting down; reconnect (you will get a fresh snapshot)",
                reason="DRAINING",
            ),
            reconnect=reconnect_msg("server draining", 0.0, 1.0),
        )
