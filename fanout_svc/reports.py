"""Batches the location reports of every stream of the process.

One kernel batcher (mesh/batcher.py): a report goes out at the next turn of
the event loop while fewer than `max_in_flight` ReportLocations calls are
running; otherwise it waits for one to return and goes with everything that
arrived meanwhile (up to `max_batch` per call). Idle: no added delay. Busy:
one RPC carries hundreds of reports. Each stream awaits only its own result.
Per-update unary calls between services would cost a whole RPC per update.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace

from fanout_svc import metrics
from fanout_svc.upstream import Upstream
from mesh import tracing
from mesh.batcher import Batcher
from mesh.internal.v1 import events_pb2
from mesh.internal.v1 import location_ingest_service_pb2 as li


class ReportBatcher:
    def __init__(self, upstream: Upstream, max_batch: int = 200, max_in_flight: int = 2) -> None:
        self.upstream = upstream
        self._batcher: Batcher[li.LocationReport, li.ReportResult] = Batcher(
            self._send, max_batch=max_batch, max_in_flight=max_in_flight
        )

    async def report(
        self,
        user_id: str,
        fix: events_pb2.PositionFix,
        traceparent: str = "",
        *,
        check_account: bool = False,
    ) -> li.ReportResult:
        """Record one report; raises a ServiceError when location_svc failed.
        `traceparent`: the report's own trace (it travels in the batch);
        `check_account`: recorded only if the user has an account (a rejection
        of `user_id` otherwise: a stream's first report)."""
        return await self._batcher.submit(
            li.LocationReport(
                user_id=user_id, fix=fix, traceparent=traceparent, check_account=check_account
            )
        )

    async def _send(self, reports: list[li.LocationReport]) -> Sequence[li.ReportResult]:
        metrics.REPORT_BATCHES.inc()
        metrics.REPORTS.inc(len(reports))
        span = tracing.batch_span("fanout report batch", [r.traceparent for r in reports])
        if span is None:
            return await self.upstream.report(reports)
        with trace.use_span(span, end_on_exit=True):
            return await self.upstream.report(reports)

    async def close(self) -> None:
        await self._batcher.close()
