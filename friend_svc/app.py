"""friend_svc as a ServiceApp: Postgres pool + migrations, Redis for the inbox."""

from __future__ import annotations

import grpc
from nearby.v1 import friend_service_pb2_grpc as pb2_grpc
from psycopg_pool import AsyncConnectionPool

from mesh.internal.v1 import friend_graph_service_pb2_grpc as graph_grpc
from mesh.redis import RedisEngine
from mesh.server import ServiceApp

from .inbox import Inbox
from .service import FriendGraphService, FriendService
from .store import FriendStore


class FriendApp(ServiceApp):
    name = "friend_svc"
    services = ("nearby.v1.FriendService", "mesh.internal.v1.FriendGraphService")

    pool: AsyncConnectionPool
    redis: RedisEngine

    async def open(self) -> None:
        self.pool = await self.open_postgres("friend_svc")
        self.redis = await self.open_redis()

    def register(self, server: grpc.aio.Server) -> None:
        store = FriendStore(self.pool)
        pb2_grpc.add_FriendServiceServicer_to_server(
            FriendService(store, Inbox(self.redis), self.settings), server
        )
        graph_grpc.add_FriendGraphServiceServicer_to_server(FriendGraphService(store), server)
