"""Batches the location reports of every stream of the process.

Self-clocking batches: a report goes out at the next turn of the event loop
when fewer than `max_in_flight` ReportLocations calls are running; otherwise
it waits for one to return (or for `max_batch` reports to gather) and goes
with everything that arrived meanwhile. Idle: no added delay. Busy: one RPC
carries hundreds of reports. Each stream awaits only its own result.
Per-update unary calls between services would cost a whole RPC per update.
"""

from __future__ import annotations

import asyncio
import logging

from nearby.internal.v1 import events_pb2
from nearby.internal.v1 import location_ingest_service_pb2 as li

from fanout_svc import metrics
from fanout_svc.upstream import Upstream

log = logging.getLogger("fanout_svc.reports")


class ReportBatcher:
    def __init__(self, upstream: Upstream, max_batch: int = 200, max_in_flight: int = 2) -> None:
        self.upstream = upstream
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._reports: list[li.LocationReport] = []
        self._futures: list[asyncio.Future[li.ReportResult]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def report(self, user_id: str, fix: events_pb2.PositionFix) -> li.ReportResult:
        """Record one report; raises a ServiceError when location_svc failed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[li.ReportResult] = loop.create_future()
        self._reports.append(li.LocationReport(user_id=user_id, fix=fix))
        self._futures.append(fut)
        if len(self._reports) >= self.max_batch:
            self._flush()
        elif not self._scheduled and len(self._tasks) < self.max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        if not self._reports:
            return
        reports, futures = self._reports, self._futures
        self._reports, self._futures = [], []
        task = asyncio.create_task(self._send(reports, futures))
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._reports and not self._scheduled:  # what gathered while busy
            self._flush()

    async def _send(
        self, reports: list[li.LocationReport], futures: list[asyncio.Future[li.ReportResult]]
    ) -> None:
        metrics.REPORT_BATCHES.inc()
        metrics.REPORTS.inc(len(reports))
        try:
            results = await self.upstream.report(reports)
        except Exception as exc:
            for fut in futures:
                if not fut.done():
                    fut.set_exception(exc)
            return
        if len(results) != len(futures):
            log.error(
                "ReportLocations returned %d results for %d reports", len(results), len(futures)
            )
        for fut, result in zip(futures, results, strict=False):
            if not fut.done():
                fut.set_result(result)
        for fut in futures[len(results) :]:
            if not fut.done():
                fut.set_exception(RuntimeError("no result for this report"))

    async def close(self) -> None:
        self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
