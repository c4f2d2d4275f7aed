"""The process coordinator: what every stream of the process shares.

It holds the hub, the batched reports upstream, the fix rules, the
connect-time read limiter, the resync limiter, the registry of live streams,
the flush tick and the housekeeping loop, and hands itself to each session
explicitly (session.Process is the part a session uses). It never changes a
session's state: it calls the session's own methods (kick, watch, drain).

One timer per process (not per stream) batches pushes: the first session that
is owed something arms a `fanout_flush_ms` timer; when it fires, every session
marked meanwhile is woken and writes all it has as one message. The
housekeeping task runs, about once a second, each stream's part of the
watchdog (a write blocked longer than `fanout_stall_s`, silence longer than
`heartbeat_s`) and hands freed heap back after connect storms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from fanout_svc import memory, metrics
from fanout_svc.admission import Admission, Admitted
from fanout_svc.hub import Hub
from fanout_svc.reports import ReportBatcher
from fanout_svc.session import Session
from fanout_svc.upstream import Upstream
from mesh.fixes import FixRules
from mesh.settings import Settings

log = logging.getLogger("fanout_svc.streams")

LOAD_CONCURRENCY = 64
"""Connect-time reads (friend list, cached locations) in flight at once: a
storm of 10,000 connects queues here instead of piling thousands of calls onto
friend_svc/location_svc, where they would miss their deadline."""
RESYNC_CONCURRENCY = 64


class Streams:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        upstream: Upstream,
        reports: ReportBatcher,
        admission: Admission | None = None,
    ) -> None:
        self.settings = settings
        self.admission = admission or Admission(settings, None)
        self.hub = hub
        self.upstream = upstream
        self.reports = reports
        self.rules = FixRules(settings)
        self.flush_s = settings.fanout_flush_ms / 1000.0
        self.sessions: set[Session] = set()
        self.resync_limit = asyncio.Semaphore(RESYNC_CONCURRENCY)
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
        await self.admission.close()

    # --- registry -----------------------------------------------------------
    async def admit(self, session: Session) -> Admitted:
        return await self.admission.admit(session)

    def add(self, session: Session) -> None:
        self.sessions.add(session)
        self._empty.clear()
        metrics.STREAMS.set(len(self.sessions))

    def remove(self, session: Session) -> None:
        self.sessions.discard(session)
        metrics.STREAMS.set(len(self.sessions))
        if not self.sessions:
            self._empty.set()

    # --- flush tick ---------------------------------------------------------
    def mark(self, session: Session) -> None:
        """Wake `session` at the next tick (armed by the first mark)."""
        self._dirty.append(session)
        if self._tick is None:
            self._tick = asyncio.get_running_loop().call_later(self.flush_s, self._flush)

    def _flush(self) -> None:
        self._tick = None
        dirty, self._dirty = self._dirty, []
        for s in dirty:
            s.kick()

    # --- watchdog and heartbeats ------------------------------------------
    async def _housekeeping(self) -> None:
        s = self.settings
        period = max(0.05, min(1.0, s.heartbeat_s / 4, s.fanout_stall_s / 4))
        while True:
            await asyncio.sleep(period)
            try:
                self.sweep(time.monotonic())
                self._maybe_trim()
            except Exception:
                log.exception("housekeeping failed")

    def sweep(self, now: float) -> None:
        stall, beat = self.settings.fanout_stall_s, self.settings.heartbeat_s
        for session in list(self.sessions):
            session.watch(now, stall, beat)

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
            loop.call_later(spread * i / len(sessions), session.drain)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), spread + 3.0)
