"""The hot path shared by ReportLocation and ReportLocations: the fix rules
(mesh/fixes.py) the servicers validate with, then two pipelined Redis round
trips per batch (cache + publish + presence, then history)."""

from __future__ import annotations

from collections.abc import Sequence

from location_svc import metrics, store
from location_svc.cache import ACCEPTED, COALESCED, STALE, LocationCache, Report
from location_svc.history import HistoryBuffer
from mesh.batcher import Batcher
from mesh.clock import now_ms
from mesh.fixes import FixRules
from mesh.settings import Settings

MAX_FLUSHES = 4  # pipelines in flight at once
MAX_FLUSH_REPORTS = 2000  # reports per pipeline (whole calls are never split)


class Ingestor:
    def __init__(self, cache: LocationCache, buffer: HistoryBuffer, settings: Settings) -> None:
        self.cache = cache
        self.buffer = buffer
        self.rules = FixRules(settings)
        self._batcher: Batcher[Report, int] = Batcher(
            self._write_now, max_batch=MAX_FLUSH_REPORTS, max_in_flight=MAX_FLUSHES
        )

    async def record(self, reports: Sequence[Report]) -> list[int]:
        """Record validated reports; their dispositions, in order.

        Reports of concurrent calls are written together (mesh/batcher.py):
        while MAX_FLUSHES pipelines are in flight, new reports queue up and go
        in the next one, so the per-round-trip cost is shared under load and
        no call waits for a timer when the service is idle. A call's reports
        are never split over two pipelines.
        """
        return await self._batcher.submit_all(reports)

    async def _write_now(self, reports: list[Report]) -> list[int]:
        return await self._write(reports, now_ms())

    async def _write(self, reports: Sequence[Report], now: int) -> list[int]:
        dispositions = await self.cache.record(reports, now)
        entries = [
            (r.user_id, store.encode_row(r.user_id, r.recorded_at_ms, r.latitude, r.longitude))
            for r, d in zip(reports, dispositions, strict=True)
            if d != COALESCED
        ]
        accepted = dispositions.count(ACCEPTED)
        stale = dispositions.count(STALE)
        metrics.ACCEPTED.inc(accepted)
        metrics.STALE.inc(stale)
        metrics.COALESCED.inc(len(dispositions) - accepted - stale)
        if entries:
            if self.buffer.accepting:
                await self.cache.buffer_history(entries)
            else:
                self.buffer.dropped(len(entries))
        return dispositions
