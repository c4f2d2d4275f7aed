"""location_svc: the latest-location cache, live publishing, and the history
pipeline (its writer and partition maintenance run in this process)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

import grpc
import redis.asyncio as aioredis
from nearby.internal.v1 import location_ingest_service_pb2_grpc
from nearby.v1 import location_service_pb2_grpc
from psycopg_pool import AsyncConnectionPool

from location_svc import store
from location_svc.cache import LocationCache
from location_svc.history import HistoryBuffer, HistoryWriter, ensure_groups
from location_svc.ingest import Ingestor
from location_svc.service import LocationIngestServicer, LocationServicer
from mesh import db
from mesh import redis as mesh_redis
from mesh.server import ServiceApp
from mesh.settings import Settings

log = logging.getLogger("location_svc")

PARTITIONS_AHEAD_DAYS = 3
MAINTENANCE_INTERVAL_S = 3600.0


class LocationApp(ServiceApp):
    name = "location_svc"
    services = ("nearby.v1.LocationService", "nearby.internal.v1.LocationIngestService")

    def __init__(self, settings: Settings, *, history_writer: bool = True) -> None:
        super().__init__(settings)
        self.run_writer = history_writer
        self.redis: aioredis.Redis | None = None
        self.pool: AsyncConnectionPool | None = None
        self.writer: HistoryWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        s = self.settings
        self.redis = mesh_redis.client(s.redis_url)
        await mesh_redis.check(self.redis, s.redis_url)
        self.pool = await db.open_pool(s.database_url)
        await db.migrate(self.pool, "location_svc", "location_svc")
        await self.maintain_partitions()
        await ensure_groups(self.redis)
        self.buffer = HistoryBuffer(self.redis, s.history_buffer_max)
        await self.buffer.refresh()
        self.cache = LocationCache(self.redis, s.inactivity_timeout_s, s.min_report_interval_s)
        self.ingest = Ingestor(self.cache, self.buffer, s)
        self._tasks = [
            asyncio.create_task(self.buffer.run(), name="history-buffer"),
            asyncio.create_task(self._maintenance_loop(), name="history-partitions"),
        ]
        if self.run_writer:
            self.writer = HistoryWriter(
                s.redis_url, s.database_url, s.history_batch_size, s.history_claim_idle_s
            )
            await self.writer.start()

    async def maintain_partitions(self, today: dt.date | None = None) -> None:
        assert self.pool is not None
        await store.maintain(
            self.pool,
            today or dt.datetime.now(dt.UTC).date(),
            PARTITIONS_AHEAD_DAYS,
            self.settings.history_retention_days,
        )

    async def _maintenance_loop(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            try:
                await self.maintain_partitions()
            except Exception:
                log.exception("history partition maintenance failed; retrying in an hour")

    def register(self, server: grpc.aio.Server) -> None:
        assert self.pool is not None
        location_service_pb2_grpc.add_LocationServiceServicer_to_server(
            LocationServicer(self.ingest, self.pool), server
        )
        location_ingest_service_pb2_grpc.add_LocationIngestServiceServicer_to_server(
            LocationIngestServicer(self.ingest, self.cache, self.settings), server
        )

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.stop()
            self.writer = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
