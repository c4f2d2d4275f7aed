"""friend_svc as a ServiceApp: Postgres pool + migrations, Redis for the inbox."""

from __future__ import annotations

import grpc
import redis.asyncio as aioredis
from nearby.internal.v1 import friend_graph_service_pb2_grpc as graph_grpc
from nearby.v1 import friend_service_pb2_grpc as pb2_grpc
from psycopg_pool import AsyncConnectionPool

from mesh import db
from mesh import redis as mesh_redis
from mesh.server import ServiceApp

from .inbox import Inbox
from .service import FriendGraphService, FriendService
from .store import FriendStore


class FriendApp(ServiceApp):
    name = "friend_svc"
    services = ("nearby.v1.FriendService", "nearby.internal.v1.FriendGraphService")

    pool: AsyncConnectionPool | None = None
    redis: aioredis.Redis | None = None

    async def open(self) -> None:
        self.pool = await db.open_pool(self.settings.database_url)
        try:
            await db.migrate(self.pool, "friend_svc", "friend_svc")
            self.redis = mesh_redis.client(self.settings.redis_url)
            await mesh_redis.check(self.redis, self.settings.redis_url)
        except BaseException:
            await self.close()
            raise

    def register(self, server: grpc.aio.Server) -> None:
        assert self.pool is not None and self.redis is not None, "open() first"
        store = FriendStore(self.pool)
        pb2_grpc.add_FriendServiceServicer_to_server(
            FriendService(store, Inbox(self.redis), self.settings), server
        )
        graph_grpc.add_FriendGraphServiceServicer_to_server(FriendGraphService(store), server)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
