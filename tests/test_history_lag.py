"""`location_history_lag_seconds` reads the age of the oldest entry not in
Postgres, not the age of entries a dead writer left pending after it had
committed them, nor of committed entries held in the stream behind them.

Two writers die with entries pending, exactly as a SIGKILLed location_svc
leaves them (read with XREADGROUP, never acknowledged): one had committed its
batch (a writer acknowledges a batch with its next read), one had not. The
first one's entries are 60 s old, the second one's 30 s. Meanwhile a live
location_svc writes fresh reports. The honest lag is then about 30 s (the
uncommitted entries); the stream's oldest entry (what the metric used to
read) is 60 s old. Once the live writer reclaimed both, the lag is back to
the live traffic's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import psycopg
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from location_svc import store
from location_svc.app import LocationApp
from mesh import keys
from mesh.clock import now_ms
from mesh.internal.v1 import location_ingest_service_pb2_grpc
from mesh.settings import Settings
from tests.support.history import batch, buffered, count_rows, wait_rows
from tests.support.services import running

COMMITTED, UNCOMMITTED = "dead-after-commit", "dead-before-commit"
CLAIM_IDLE_S = 8.0


def lag() -> float:
    value = REGISTRY.get_sample_value("location_history_lag_seconds")
    assert value is not None
    return value


async def until(what: str, predicate: Any, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not await predicate():
        assert time.monotonic() < deadline, f"not within {within_s:g} s: {what}"
        await asyncio.sleep(0.1)


async def pending_on(redis: aioredis.Redis, consumer: str) -> int:
    total = 0
    for stream in keys.history_streams():
        summary: Any = await redis.xpending(stream, keys.HISTORY_GROUP)
        total += sum(
            int(c["pending"]) for c in summary["consumers"] if c["name"] == consumer.encode()
        )
    return total


async def test_lag_ignores_what_a_dead_writer_committed(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    s = settings.replace(min_report_interval_s=0.0, history_claim_idle_s=CLAIM_IDLE_S)
    # Entries exactly as location_svc writes them, taken out of the buffer again.
    async with (
        running(LocationApp(s, history_writer=False)) as addr,
        grpc.aio.insecure_channel(addr) as ch,
    ):
        stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)
        await stub.ReportLocations(batch([f"c{i}" for i in range(10)], now_ms() - 90_000, 10))
        await stub.ReportLocations(batch([f"u{i}" for i in range(10)], now_ms() - 90_000, 10))
    made: dict[str, list[dict[bytes, bytes]]] = {}
    for stream in keys.history_streams():
        found: Any = await redis_client.xrange(stream)
        made[stream] = [fields for _, fields in found]
    # Fresh streams (location_svc creates them again): old ids are allowed.
    await redis_client.delete(*keys.history_streams())

    def user_of(fields: dict[bytes, bytes]) -> str:
        return store.decode_key(fields[keys.HISTORY_ROW])[0]

    async with (
        running(LocationApp(s)) as addr,
        grpc.aio.insecure_channel(addr) as ch,
    ):
        stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)
        t0 = now_ms()
        # Both dead writers' entries are added with old ids and delivered to
        # them in one MULTI, so the live writer (blocked on its read) never
        # gets them; the committed batch is 60 s old, the other one 30 s.
        pipe = redis_client.pipeline(transaction=True)
        for stream, entries in made.items():
            first = [f for f in entries if user_of(f).startswith("c")]
            second = [f for f in entries if user_of(f).startswith("u")]
            for i, f in enumerate(first):
                pipe.xadd(stream, f, id=f"{t0 - 60_000}-{i}")  # type: ignore[arg-type]
            if first:
                pipe.xreadgroup(keys.HISTORY_GROUP, COMMITTED, {stream: ">"}, count=len(first))
            for i, f in enumerate(second):
                pipe.xadd(stream, f, id=f"{t0 - 30_000}-{i}")  # type: ignore[arg-type]
            if second:
                pipe.xreadgroup(keys.HISTORY_GROUP, UNCOMMITTED, {stream: ">"}, count=len(second))
        await pipe.execute()
        assert await pending_on(redis_client, COMMITTED) == 100
        assert await pending_on(redis_client, UNCOMMITTED) == 100
        # The first writer had committed its batch before it died.
        rows = [f[keys.HISTORY_ROW] for e in made.values() for f in e if user_of(f).startswith("c")]
        async with await psycopg.AsyncConnection.connect(s.database_url) as conn:
            assert await store.write_batch(conn, rows) == 100

        # Live traffic meanwhile: committed and acknowledged by the live
        # writer, but held in the stream behind the pending entries.
        live = 0

        async def traffic() -> None:
            nonlocal live
            while True:
                await stub.ReportLocations(batch([f"live{live}"], now_ms(), 1))
                live += 1
                await asyncio.sleep(0.1)

        feeding = asyncio.create_task(traffic())
        try:
            # Before the reclaim: the uncommitted entries' age, not the
            # committed ones' (nor the stream's oldest entry's: 60 s).
            async def honest() -> bool:
                return 28.0 <= lag() < 45.0

            await until("the lag reads the uncommitted entries' age", honest, CLAIM_IDLE_S - 1)
            assert await pending_on(redis_client, COMMITTED) == 100, "reclaimed too early"
            heads: list[Any] = [
                await redis_client.xrange(st, count=1) for st in keys.history_streams()
            ]
            oldest = min(int(h[0][0].split(b"-")[0]) for h in heads if h)
            assert now_ms() - oldest >= 60_000, "the committed entries are no longer buffered"

            # The live writer reclaims both batches (writing the committed
            # one again is a no-op): the lag is the live traffic's again.
            async def reclaimed() -> bool:
                return not (
                    await pending_on(redis_client, COMMITTED)
                    or await pending_on(redis_client, UNCOMMITTED)
                )

            await until("both dead writers' entries are reclaimed", reclaimed, 60)

            async def current() -> bool:
                return lag() < 5.0

            await until("the lag is the live traffic's again", current, 10)
        finally:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
        expected = 200 + live  # a report cancelled in flight may have made one more
        written, distinct = await wait_rows(s.database_url, expected)
        assert written == distinct, (written, distinct)
        assert written in (expected, expected + 1), (written, expected)

        async def trimmed() -> bool:
            return await buffered(redis_client) < 20

        await until("the buffer is trimmed", trimmed, 10)
    assert await count_rows(s.database_url) == (written, written)
