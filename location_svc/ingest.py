"""The hot path shared by ReportLocation and ReportLocations: validate, then
two pipelined Redis round trips for the whole batch (cache + publish +
presence, then history)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from location_svc import metrics, store
from location_svc.cache import ACCEPTED, COALESCED, STALE, LocationCache, Report
from location_svc.history import HistoryBuffer
from mesh.errors import invalid_field
from mesh.geo import check_position
from mesh.settings import Settings

DAY_MS = 86_400_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Ingestor:
    def __init__(self, cache: LocationCache, buffer: HistoryBuffer, settings: Settings) -> None:
        self.cache = cache
        self.buffer = buffer
        self.skew_ms = int(settings.max_clock_skew_s * 1000)
        self.retention_ms = settings.history_retention_days * DAY_MS
        self.retention_days = settings.history_retention_days
        self.max_skew_s = settings.max_clock_skew_s

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

    async def record(self, reports: Sequence[Report], now: int | None = None) -> list[int]:
        """Record validated reports; their dispositions, in order."""
        if not reports:
            return []
        now = now_ms() if now is None else now
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
