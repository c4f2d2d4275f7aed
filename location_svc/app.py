"""location_svc: the latest-location cache, live publishing, and the history
pipeline (its writer and partition maintenance run in this process)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import grpc
from nearby.v1 import location_service_pb2_grpc

from location_svc import store
from location_svc.accounts import Accounts
from location_svc.cache import LocationCache
from location_svc.erase import Eraser
from location_svc.history import HistoryBuffer, HistoryWriter, ensure_groups
from location_svc.ingest import Ingestor
from location_svc.service import LocationIngestServicer, LocationServicer, UserDataServicer
from mesh import tls as mesh_tls
from mesh.channels import internal_channel
from mesh.internal.v1 import location_ingest_service_pb2_grpc, user_data_service_pb2_grpc
from mesh.server import ServiceApp
from mesh.settings import Settings

log = logging.getLogger("location_svc")

PARTITIONS_AHEAD_DAYS = 3
MAINTENANCE_INTERVAL_S = 3600.0


class LocationApp(ServiceApp):
    name = "location_svc"
    services = (
        "nearby.v1.LocationService",
        "mesh.internal.v1.LocationIngestService",
        "mesh.internal.v1.UserDataService",
    )

    def __init__(self, settings: Settings, *, history_writer: bool = True) -> None:
        super().__init__(settings)
        self.run_writer = history_writer
        self.writer: HistoryWriter | None = None

    async def open(self) -> None:
        s = self.settings
        self.redis = await self.open_redis()
        self.pool = await self.open_postgres("location_svc")
        await self.maintain_partitions()
        await ensure_groups(self.redis)
        self.buffer = HistoryBuffer(self.redis, s.history_buffer_max, pool=self.pool)
        await self.buffer.refresh()
        replicas = s.history_wait_replicas
        if replicas < 0:  # auto: wait for a replica wherever every master has one
            replicas = 1 if await self.redis.masters_all_replicated() else 0
        log.info("history entries wait for %d replica(s) before a report is answered", replicas)
        self.cache = LocationCache(
            self.redis,
            s.inactivity_timeout_s,
            s.min_report_interval_s,
            wait_replicas=replicas,
            wait_timeout_ms=s.history_wait_timeout_ms,
        )
        # friend_svc owns accounts: reports of users it does not know are refused
        friend = internal_channel(s.friend_addr, mesh_tls.channel_credentials(s))
        self.resources.push_async_callback(friend.close)
        self.ingest = Ingestor(self.cache, self.buffer, Accounts(self.redis, friend), s)
        self.spawn(self.buffer.run(), "history-buffer")
        self.spawn(self._maintenance_loop(), "history-partitions")
        if self.run_writer:
            self.writer = HistoryWriter(
                s.redis_url,
                s.database_url,
                s.history_batch_size,
                s.history_claim_idle_s,
                cluster=s.redis_cluster,
                retry_s=s.redis_retry_s,
            )
            self.resources.push_async_callback(self.writer.stop)
            await self.writer.start()

    async def maintain_partitions(self, today: dt.date | None = None) -> None:
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
        eraser = Eraser(self.pool, self.redis)
        location_service_pb2_grpc.add_LocationServiceServicer_to_server(
            LocationServicer(self.ingest, self.pool, eraser), server
        )
        user_data_service_pb2_grpc.add_UserDataServiceServicer_to_server(
            UserDataServicer(eraser), server
        )
        location_ingest_service_pb2_grpc.add_LocationIngestServiceServicer_to_server(
            LocationIngestServicer(self.ingest, self.cache, self.settings), server
        )
