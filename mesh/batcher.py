"""Self-clocking batches for a hop that is cheaper per item in bulk.

`submit(item)` (one result) and `submit_all(items)` (a group, never split
over two batches) queue work for `send(batch) -> results` (one result per
item, in order). A batch leaves at the next turn of the event loop while
fewer than `max_in_flight` sends are running; otherwise what arrives waits
and goes, up to `max_batch` items, in the next batch as soon as one send
returns. An idle process adds no delay (no timer), a busy one fills batches
by itself. A failed send fails every caller of that batch with its exception.

Used by both batched hops: the fan-out's reports to location_svc
(fanout_svc/reports.py) and location_svc's writes to Redis
(location_svc/ingest.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("mesh.batcher")

_ONE = -1
"""Count of a waiter that submitted one item (its result is not a list)."""


class Batcher(Generic[T, R]):
    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int,
        max_in_flight: int,
    ) -> None:
        self._send = send
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        # (items, future, count): count _ONE for submit(), else len(items)
        self._queue: deque[tuple[Sequence[T], asyncio.Future[Any], int]] = deque()
        self._queued = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return self._queued

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(((item,), fut, _ONE))
        self._queued += 1
        self._schedule()
        return await fut

    async def submit_all(self, items: Sequence[T]) -> list[R]:
        """The results of `items`, in order; the group travels in one batch."""
        if not items:
            return []
        fut: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queue.append((items, fut, len(items)))
        self._queued += len(items)
        self._schedule()
        return await fut

    async def close(self) -> None:
        """Send what is queued and wait for every send in flight."""
        while self._queue or self._tasks:
            self._start()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _schedule(self) -> None:
        if not self._scheduled and self._queue and len(self._tasks) < self.max_in_flight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        queue = self._queue
        if not queue:
            return
        items: list[T] = []
        waiters: list[tuple[asyncio.Future[Any], int]] = []
        limit = self.max_batch
        while queue and (not items or len(items) + len(queue[0][0]) <= limit):
            group, fut, count = queue.popleft()
            items.extend(group)
            waiters.append((fut, count))
        self._queued -= len(items)
        task = asyncio.create_task(self._run(items, waiters))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._schedule()  # whatever gathered meanwhile

    async def _run(self, items: list[T], waiters: list[tuple[asyncio.Future[Any], int]]) -> None:
        try:
            results = await self._send(items)
        except asyncio.CancelledError:
            for fut, _ in waiters:
                fut.cancel()
            raise
        except Exception as exc:
            for fut, _ in waiters:
                if not fut.done():
                    fut.set_exception(exc)
            return
        if len(results) != len(items):
            log.error("a batch of %d items got %d results", len(items), len(results))
            missing = RuntimeError("no result for this item")
            for fut, _ in waiters:
                if not fut.done():
                    fut.set_exception(missing)
            return
        i = 0
        for fut, count in waiters:
            if count == _ONE:
                if not fut.done():
                    fut.set_result(results[i])
                i += 1
            else:
                if not fut.done():
                    fut.set_result(list(results[i : i + count]))
                i += count
