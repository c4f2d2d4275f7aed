"""The hot path shared by ReportLocation and ReportLocations: the fix rules
(mesh/fixes.py) the servicers validate with, then two pipelined Redis round
trips per node for the whole batch (cache + publish + presence, then history)."""

from __future__ import annotations

from collections.abc import Sequence

from location_svc import metrics, store
from location_svc.accounts import Accounts
from location_svc.cache import ACCEPTED, COALESCED, STALE, UNKNOWN, LocationCache, Report
from location_svc.history import HistoryBuffer
from mesh.batcher import Batcher
from mesh.clock import now_ms
from mesh.errors import ServiceError, Unavailable
from mesh.fixes import FixRules
from mesh.outages import RETRY_AFTER_S, outage_of
from mesh.settings import Settings

MAX_FLUSHES = 4  # pipelines in flight at once
MAX_FLUSH_REPORTS = 2000  # reports per pipeline (whole calls are never split)


class Ingestor:
    def __init__(
        self, cache: LocationCache, buffer: HistoryBuffer, accounts: Accounts, settings: Settings
    ) -> None:
        self.cache = cache
        self.buffer = buffer
        self.accounts = accounts
        self.rules = FixRules(settings)
        self._batcher: Batcher[Report, int | Exception] = Batcher(
            self._write_now, max_batch=MAX_FLUSH_REPORTS, max_in_flight=MAX_FLUSHES
        )

    async def record(self, reports: Sequence[Report]) -> list[int]:
        """Record validated reports; their dispositions, in order (UNKNOWN for
        a user without an account: nothing of that report was recorded).

        Reports of concurrent calls are written together (mesh/batcher.py):
        while MAX_FLUSHES pipelines are in flight, new reports queue up and go
        in the next one, so the per-round-trip cost is shared under load and
        no call waits for a timer when the service is idle. A call's reports
        are never split over two pipelines. A call fails (UNAVAILABLE when a
        Redis node was out of reach) when one of its own reports failed.
        """
        outcomes = await self._batcher.submit_all(reports)
        failed = next((o for o in outcomes if isinstance(o, Exception)), None)
        if failed is not None:
            raise _failure(failed)
        return [o for o in outcomes if isinstance(o, int)]

    async def _write_now(self, reports: list[Report]) -> list[int | Exception]:
        return await self._write(reports, now_ms())

    async def _write(self, reports: Sequence[Report], now: int) -> list[int | Exception]:
        """Each report's disposition (UNKNOWN: its account was to be checked
        and friend_svc does not know it, nothing recorded), or the error that
        failed it.

        A node that fails fails only its own reports: the others are cached,
        published and buffered for history as usual. The caller of a failed
        report retries it; if it was cached before the failure, the retry is
        STALE (the same fix) and is buffered then (history is deduplicated).
        """
        outcomes = await self.cache.record(reports, now)
        unknown = [i for i, d in enumerate(outcomes) if d == UNKNOWN]
        if unknown:
            await self._confirm(reports, outcomes, unknown, now)
        touched: list[int] = []  # recorded: the user is active (presence)
        kept: list[int] = []  # accepted or stale: to history
        accepted = stale = coalesced = 0
        for i, d in enumerate(outcomes):
            if type(d) is not int or d == UNKNOWN:
                continue
            touched.append(i)
            if d == COALESCED:
                coalesced += 1
                continue
            kept.append(i)
            if d == ACCEPTED:
                accepted += 1
            elif d == STALE:
                stale += 1
        metrics.ACCEPTED.inc(accepted)
        metrics.STALE.inc(stale)
        metrics.COALESCED.inc(coalesced)
        if not touched:
            return outcomes
        if kept and not self.buffer.accepting:
            self.buffer.dropped(len(kept))
            kept = []
        entries = []
        for i in kept:
            r = reports[i]
            entries.append(
                (r.user_id, store.encode_row(r.user_id, r.recorded_at_ms, r.latitude, r.longitude))
            )
        touch_errors, errors, unconfirmed = await self.cache.finish(
            [reports[i].user_id for i in touched], entries, now
        )
        if unconfirmed:
            self.buffer.unreplicated(unconfirmed)
        for i, error in zip(touched, touch_errors, strict=True):
            if error is not None:
                outcomes[i] = error
        for i, error in zip(kept, errors, strict=True):
            if error is not None:
                outcomes[i] = error
        return outcomes

    async def _confirm(
        self,
        reports: Sequence[Report],
        outcomes: list[int | Exception],
        unknown: list[int],
        now: int,
    ) -> None:
        """Reports whose user had no account marker: ask friend_svc, record
        those of confirmed users, leave the others UNKNOWN."""
        try:
            confirmed = await self.accounts.confirm(reports[i].user_id for i in unknown)
        except ServiceError as exc:
            for i in unknown:
                outcomes[i] = exc
            return
        again = [i for i in unknown if reports[i].user_id in confirmed]
        if again:
            retried = await self.cache.record([reports[i] for i in again], now)
            for i, d in zip(again, retried, strict=True):
                outcomes[i] = d
        rejected = len(unknown) - len(again)
        if rejected:
            metrics.UNKNOWN_USER.inc(rejected)


def _failure(exc: Exception) -> Exception:
    """What the caller of a failed report gets: UNAVAILABLE when Redis (a node
    of it) was out of reach, else the error itself."""
    if outage_of(exc) is not None:
        return Unavailable(
            f"the location store is unavailable for this report ({exc}): retry",
            reason="REDIS_UNAVAILABLE",
            retry_after_s=RETRY_AFTER_S,
        )
    return exc
