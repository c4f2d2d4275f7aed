"""The hot path shared by ReportLocation and ReportLocations: validate, then
two pipelined Redis round trips per node for the whole batch (cache +
publish + presence, then history)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from location_svc import metrics, store
from location_svc.cache import ACCEPTED, COALESCED, STALE, LocationCache, Report
from location_svc.history import HistoryBuffer
from mesh.clock import now_ms
from mesh.errors import Unavailable, invalid_field
from mesh.geo import check_position
from mesh.redis import is_unavailable
from mesh.settings import Settings

DAY_MS = 86_400_000
MAX_FLUSHES = 4  # pipelines in flight at once
MAX_FLUSH_REPORTS = 2000  # reports per pipeline (whole calls are never split)


class Ingestor:
    def __init__(self, cache: LocationCache, buffer: HistoryBuffer, settings: Settings) -> None:
        self.cache = cache
        self.buffer = buffer
        self.skew_ms = int(settings.max_clock_skew_s * 1000)
        self.retention_ms = settings.history_retention_days * DAY_MS
        self.retention_days = settings.history_retention_days
        self.max_skew_s = settings.max_clock_skew_s
        self._queue: deque[tuple[Sequence[Report], asyncio.Future[list[int]]]] = deque()
        self._scheduled = False
        self._flushes = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def validate(
        self,
        user_id: str,
        latitude: float,
        longitude: float,
        recorded_at_ms: int | None,
        now: int,
        position_field: str = "position",
        time_field: str = "recorded_at",
    ) -> Report:
        """A Report, or InvalidArgument naming the field."""
        err = check_position(latitude, longitude, position_field)
        if err is not None:
            raise err
        if recorded_at_ms is None:
            recorded_at_ms = now
        elif recorded_at_ms > now + self.skew_ms:
            raise invalid_field(
                time_field,
                f"is {(recorded_at_ms - now) / 1000:.1f} s in the future (at most "
                f"{self.max_skew_s:g} s allowed): check the device clock",
            )
        elif recorded_at_ms < now - self.retention_ms:
            raise invalid_field(
                time_field,
                f"is older than the {self.retention_days}-day history retention",
            )
        return Report(user_id, latitude, longitude, recorded_at_ms)

    async def record(self, reports: Sequence[Report]) -> list[int]:
        """Record validated reports; their dispositions, in order.

        Reports of concurrent calls are written together: while MAX_FLUSHES
        pipelines are in flight, new reports queue up and go in the next one,
        so the per-round-trip cost is shared under load and no call waits for
        a timer when the service is idle.
        """
        if not reports:
            return []
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[int]] = loop.create_future()
        self._queue.append((reports, fut))
        self._schedule()
        return await fut

    def _schedule(self) -> None:
        if not self._scheduled and self._queue and self._flushes < MAX_FLUSHES:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._scheduled = False
        if not self._queue or self._flushes >= MAX_FLUSHES:
            return
        batch: list[tuple[Sequence[Report], asyncio.Future[list[int]]]] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0][0]) <= MAX_FLUSH_REPORTS):
            item = self._queue.popleft()
            batch.append(item)
            size += len(item[0])
        self._flushes += 1
        task = asyncio.create_task(self._flush(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[Sequence[Report], asyncio.Future[list[int]]]]) -> None:
        try:
            reports = [r for group, _ in batch for r in group]
            try:
                outcomes = await self._write(reports, now_ms())
            except asyncio.CancelledError:
                for _, fut in batch:
                    fut.cancel()
                raise
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            i = 0
            for group, fut in batch:
                mine = outcomes[i : i + len(group)]
                i += len(group)
                if fut.done():
                    continue
                failed = next((o for o in mine if isinstance(o, Exception)), None)
                if failed is None:
                    fut.set_result([o for o in mine if isinstance(o, int)])
                else:
                    fut.set_exception(_failure(failed))
        finally:
            self._flushes -= 1
            self._schedule()

    async def _write(self, reports: Sequence[Report], now: int) -> list[int | Exception]:
        """Each report's disposition, or the error that failed it.

        A node that fails fails only its own reports: the others are cached,
        published and buffered for history as usual. The caller of a failed
        report retries it; if it was cached before the failure, the retry is
        STALE (the same fix) and is buffered then (history is deduplicated).
        """
        outcomes = await self.cache.record(reports, now)
        kept = [
            (i, r)
            for i, (r, d) in enumerate(zip(reports, outcomes, strict=True))
            if isinstance(d, int) and d != COALESCED
        ]
        done = [d for d in outcomes if isinstance(d, int)]
        accepted = done.count(ACCEPTED)
        stale = done.count(STALE)
        metrics.ACCEPTED.inc(accepted)
        metrics.STALE.inc(stale)
        metrics.COALESCED.inc(len(done) - accepted - stale)
        if not kept:
            return outcomes
        if not self.buffer.accepting:
            self.buffer.dropped(len(kept))
            return outcomes
        entries = [
            (r.user_id, store.encode_row(r.user_id, r.recorded_at_ms, r.latitude, r.longitude))
            for _, r in kept
        ]
        errors, unconfirmed = await self.cache.buffer_history(entries)
        if unconfirmed:
            self.buffer.unreplicated(unconfirmed)
        for (i, _), error in zip(kept, errors, strict=True):
            if error is not None:
                outcomes[i] = error
        return outcomes


def _failure(exc: Exception) -> Exception:
    """What the caller of a failed report gets: UNAVAILABLE when Redis (a node
    of it) was out of reach, else the error itself."""
    if is_unavailable(exc):
        return Unavailable(
            f"the location store is unavailable for this report ({exc}): retry",
            reason="REDIS_UNAVAILABLE",
        )
    return exc
