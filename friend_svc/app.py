"""friend_svc as a ServiceApp: Postgres pool + migrations, Redis for the inbox."""

from __future__ import annotations

import grpc
from nearby.v1 import friend_service_pb2_grpc as pb2_grpc
from psycopg_pool import AsyncConnectionPool

from mesh import tls as mesh_tls
from mesh.channels import internal_channel
from mesh.internal.v1 import friend_graph_service_pb2_grpc as graph_grpc
from mesh.redis import RedisEngine
from mesh.server import ServiceApp

from .erasure import AccountEraser, UserDataClient
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
        # account deletion asks the services that keep per-user data to drop it
        s = self.settings
        creds = mesh_tls.channel_credentials(s)  # MESH_TLS: mTLS between services too
        channels = [internal_channel(a, creds) for a in (s.location_addr, s.presence_addr)]
        for ch in channels:
            self.resources.push_async_callback(ch.close)
        self.store = FriendStore(self.pool)
        self.inbox = Inbox(self.redis)
        self.eraser = AccountEraser(
            self.store,
            self.inbox,
            [
                UserDataClient("location_svc", channels[0]),
                UserDataClient("presence_svc", channels[1]),
            ],
        )
        self.spawn(self.eraser.run(), "resume-deletions")

    def register(self, server: grpc.aio.Server) -> None:
        pb2_grpc.add_FriendServiceServicer_to_server(
            FriendService(self.store, self.inbox, self.settings, self.eraser), server
        )
        graph_grpc.add_FriendGraphServiceServicer_to_server(FriendGraphService(self.store), server)
