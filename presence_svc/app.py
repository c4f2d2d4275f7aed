"""presence_svc: ghost mode, presence lookups, and the inactivity sweeper."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import redis.asyncio as aioredis
from nearby.internal.v1 import presence_query_service_pb2_grpc
from nearby.v1 import presence_service_pb2_grpc
from psycopg_pool import AsyncConnectionPool

from mesh import db
from mesh import redis as mesh_redis
from mesh.server import ServiceApp
from mesh.settings import Settings
from presence_svc.cache import PresenceCache
from presence_svc.flags import CHECK_INTERVAL_S, FlagSync
from presence_svc.service import PresenceQueryServicer, PresenceServicer
from presence_svc.store import VisibilityStore
from presence_svc.sweeper import Sweeper


class PresenceApp(ServiceApp):
    name = "presence_svc"
    services = ("nearby.v1.PresenceService", "nearby.internal.v1.PresenceQueryService")

    def __init__(
        self, settings: Settings, *, sweeper: bool = True, flag_check_s: float = CHECK_INTERVAL_S
    ) -> None:
        super().__init__(settings)
        self.run_sweeper = sweeper
        self.flag_check_s = flag_check_s
        self.redis: aioredis.Redis | None = None
        self.pool: AsyncConnectionPool | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        s = self.settings
        self.redis = mesh_redis.client(s.redis_url)
        await mesh_redis.check(self.redis, s.redis_url)
        self.pool = await db.open_pool(s.database_url)
        await db.migrate(self.pool, "presence_svc", "presence_svc")
        self.store = VisibilityStore(self.pool)
        self.cache = PresenceCache(self.redis, s.inactivity_timeout_s)
        self.flags = FlagSync(self.store, self.cache)
        await self.flags.reload()
        self._tasks = [asyncio.create_task(self.flags.run(self.flag_check_s), name="flag-sync")]
        if self.run_sweeper:
            self.sweeper = Sweeper(self.redis, s.inactivity_timeout_s, s.presence_sweep_interval_s)
            self._tasks.append(asyncio.create_task(self.sweeper.run(), name="presence-sweeper"))

    def register(self, server: grpc.aio.Server) -> None:
        presence_service_pb2_grpc.add_PresenceServiceServicer_to_server(
            PresenceServicer(self.store, self.cache), server
        )
        presence_query_service_pb2_grpc.add_PresenceQueryServiceServicer_to_server(
            PresenceQueryServicer(self.cache, self.settings.friend_cap), server
        )

    async def close(self) -> None:
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
