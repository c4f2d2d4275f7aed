"""The kernel's self-clocking batcher (mesh/batcher.py) with a send the test
holds open: no timer when idle, at most N sends in flight, whatever arrives
meanwhile goes in the next batch, groups never split, failures reach exactly
the callers of the failed batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from mesh.batcher import Batcher
from tests.support.fanout import until


class Hop:
    """A send whose calls stay open until the test releases them."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gates: list[asyncio.Future[None]] = []
        self.fail: Exception | None = None

    async def send(self, items: list[int]) -> Sequence[str]:
        self.batches.append(list(items))
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        await gate
        if self.fail is not None:
            raise self.fail
        return [f"r{i}" for i in items]

    def release(self, index: int) -> None:
        self.gates[index].set_result(None)


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_idle_send_leaves_at_the_next_turn_and_results_come_back_in_order() -> None:
    hop = Hop()
    b: Batcher[int, str] = Batcher(hop.send, max_batch=10, max_in_flight=2)
    one = asyncio.create_task(b.submit(1))
    group = asyncio.create_task(b.submit_all([2, 3]))
    await until(lambda: hop.batches)
    assert hop.batches == [[1, 2, 3]]  # same turn: one batch, no timer waited for
    hop.release(0)
    assert await one == "r1"
    assert await group == ["r2", "r3"]
    assert await b.submit_all([]) == []


async def test_at_most_n_in_flight_and_the_rest_goes_next() -> None:
    hop = Hop()
    b: Batcher[int, str] = Batcher(hop.send, max_batch=3, max_in_flight=2)
    first = asyncio.create_task(b.submit(0))
    await until(lambda: len(hop.batches) == 1)
    second = asyncio.create_task(b.submit(1))
    await until(lambda: len(hop.batches) == 2)
    waiting = [asyncio.create_task(b.submit(i)) for i in range(2, 7)]
    await turns()
    assert len(hop.batches) == 2 and b.in_flight == 2 and b.queued == 5
    hop.release(0)
    await until(lambda: len(hop.batches) == 3)
    assert hop.batches[2] == [2, 3, 4]  # what gathered meanwhile, up to max_batch
    assert await first == "r0"
    hop.release(1)
    await until(lambda: len(hop.batches) == 4)
    assert hop.batches[3] == [5, 6]
    hop.release(2)
    hop.release(3)
    assert await asyncio.gather(second, *waiting) == [f"r{i}" for i in range(1, 7)]
    assert b.in_flight == 0 and b.queued == 0


async def test_a_group_is_never_split_and_may_exceed_max_batch_alone() -> None:
    hop = Hop()
    b: Batcher[int, str] = Batcher(hop.send, max_batch=4, max_in_flight=1)
    blocker = asyncio.create_task(b.submit(0))
    await until(lambda: hop.batches)
    small = asyncio.create_task(b.submit_all([1, 2, 3]))
    big = asyncio.create_task(b.submit_all([4, 5, 6, 7, 8, 9]))
    await turns()
    hop.release(0)
    await until(lambda: len(hop.batches) == 2)
    assert hop.batches[1] == [1, 2, 3]  # the big group does not fit: next batch
    hop.release(1)
    await until(lambda: len(hop.batches) == 3)
    assert hop.batches[2] == [4, 5, 6, 7, 8, 9]
    hop.release(2)
    assert await big == [f"r{i}" for i in range(4, 10)]
    assert await small == ["r1", "r2", "r3"] and await blocker == "r0"


async def test_a_failed_send_fails_only_its_own_callers() -> None:
    hop = Hop()
    b: Batcher[int, str] = Batcher(hop.send, max_batch=2, max_in_flight=1)
    doomed = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
    await until(lambda: hop.batches)
    later = asyncio.create_task(b.submit(3))
    await turns()
    hop.fail = ConnectionError("hop down")
    hop.release(0)
    for t in doomed:
        with pytest.raises(ConnectionError):
            await t
    await until(lambda: len(hop.batches) == 2)
    hop.fail = None
    hop.release(1)
    assert await later == "r3"


async def test_close_sends_what_is_queued() -> None:
    sent: list[list[int]] = []

    async def send(items: list[int]) -> list[int]:
        sent.append(items)
        await asyncio.sleep(0)
        return items

    b: Batcher[int, int] = Batcher(send, max_batch=2, max_in_flight=1)
    tasks = [asyncio.create_task(b.submit(i)) for i in range(5)]
    await turns(1)
    await b.close()
    assert await asyncio.gather(*tasks) == list(range(5))
    assert [len(x) for x in sent] == [2, 2, 1]


async def test_a_wrong_number_of_results_fails_the_batch() -> None:
    async def send(items: list[int]) -> list[int]:
        return items[:-1]

    b: Batcher[int, int] = Batcher(send, max_batch=5, max_in_flight=1)
    with pytest.raises(RuntimeError, match="no result"):
        await asyncio.gather(b.submit(1), b.submit(2))
