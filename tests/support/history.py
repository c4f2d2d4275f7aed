"""Support for the history pipeline tests: reports with distinct history keys,
rows in location_history, the Redis buffer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from mesh.internal.v1 import events_pb2, location_ingest_service_pb2
from mesh.settings import Settings
from tests.support.redis import stream_lengths


def batch(
    users: list[str], t0: int, per_user: int
) -> location_ingest_service_pb2.ReportLocationsRequest:
    """per_user reports for each user, 1 ms apart (distinct history keys)."""
    return location_ingest_service_pb2.ReportLocationsRequest(
        reports=[
            location_ingest_service_pb2.LocationReport(
                user_id=u,
                fix=events_pb2.PositionFix(
                    latitude=40.0 + i / 1000, longitude=-3.7, recorded_at_ms=t0 + i
                ),
            )
            for i in range(per_user)
            for u in users
        ]
    )


async def count_rows(url: str) -> tuple[int, int]:
    """(rows, distinct keys) in location_history."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT count(*), count(DISTINCT (user_id, recorded_at)) FROM location_history"
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


async def wait_rows(url: str, expected: int, within_s: float = 30.0) -> tuple[int, int]:
    deadline = time.monotonic() + within_s
    while True:
        try:
            got = await count_rows(url)
        except psycopg.OperationalError:
            got = (-1, -1)
        if got[0] >= expected or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.1)


async def buffered(r: Any) -> int:
    """Entries in the history buffer (a Redis or a RedisCluster client)."""
    return await stream_lengths(r)


def fast(settings: Settings, **changes: Any) -> Settings:
    return settings.replace(min_report_interval_s=0.0, history_claim_idle_s=0.5, **changes)
