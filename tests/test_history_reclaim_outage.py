"""A dead writer's history entries, reclaimed while Postgres is down, still
reach location_history once Postgres is back: none is acknowledged before it
is written."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import redis.asyncio as aioredis

from location_svc.app import LocationApp
from mesh import keys
from mesh.clock import now_ms
from mesh.internal.v1 import location_ingest_service_pb2_grpc
from mesh.settings import Settings
from stack import infra
from tests.support.history import batch, buffered, count_rows, fast, wait_rows
from tests.support.services import running

DEAD = "dead-writer"


async def pending_on(redis: aioredis.Redis, consumer: str) -> int:
    total = 0
    for shard in range(keys.HISTORY_SHARDS):
        summary: Any = await redis.xpending(keys.history_stream(shard), keys.HISTORY_GROUP)
        total += sum(
            int(c["pending"]) for c in summary["consumers"] if c["name"] == consumer.encode()
        )
    return total


async def test_entries_reclaimed_during_a_postgres_outage_are_not_lost(
    settings: Settings, redis_client: aioredis.Redis, private_pg: infra.PostgresServer
) -> None:
    s = fast(settings, database_url=private_pg.url)
    users = [f"diver{i}" for i in range(20)]
    # Entries exactly as location_svc writes them, taken out of the buffer again.
    async with (
        running(LocationApp(s, history_writer=False)) as addr,
        grpc.aio.insecure_channel(addr) as ch,
    ):
        stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)
        await stub.ReportLocations(batch(users, now_ms() - 60_000, 10))
    entries: dict[str, list[dict[bytes, bytes]]] = {}
    for shard in range(keys.HISTORY_SHARDS):
        stream = keys.history_stream(shard)
        found: Any = await redis_client.xrange(stream)
        entries[stream] = [fields for _, fields in found]
        if found:
            await redis_client.xdel(stream, *[entry_id for entry_id, _ in found])
    expected = sum(len(e) for e in entries.values())
    assert expected == 200

    async with running(LocationApp(s)):
        await asyncio.to_thread(private_pg.stop)
        # A writer that read them and died: they are added and delivered to it in
        # one MULTI, so the live writer (blocked on its own read) never gets them.
        pipe = redis_client.pipeline(transaction=True)
        for stream, fields in entries.items():
            for f in fields:
                pipe.xadd(stream, f)  # type: ignore[arg-type]
            pipe.xreadgroup(keys.HISTORY_GROUP, DEAD, {stream: ">"}, count=expected)
        await pipe.execute()
        assert await pending_on(redis_client, DEAD) == expected
        # The live writer takes them over (after HISTORY_CLAIM_IDLE_S) and cannot
        # write them: Postgres is down.
        deadline = time.monotonic() + 60
        while await pending_on(redis_client, DEAD):
            assert time.monotonic() < deadline, "the dead writer's entries were never reclaimed"
            await asyncio.sleep(0.1)
        await asyncio.to_thread(private_pg.start)
        assert await wait_rows(private_pg.url, expected, within_s=60) == (expected, expected)
        deadline = time.monotonic() + 30
        while await buffered(redis_client):  # acknowledged, then trimmed
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    assert await count_rows(private_pg.url) == (expected, expected)
