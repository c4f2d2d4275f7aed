"""presence_svc: ghost mode, presence lookups, and the inactivity sweeper."""

from __future__ import annotations

import grpc
from nearby.v1 import presence_service_pb2_grpc

from mesh import db
from mesh import tls as mesh_tls
from mesh.channels import internal_channel
from mesh.internal.v1 import presence_query_service_pb2_grpc, user_data_service_pb2_grpc
from mesh.server import ServiceApp
from mesh.settings import Settings
from presence_svc.cache import PresenceCache
from presence_svc.flags import CHECK_INTERVAL_S, FlagSync
from presence_svc.friends import FriendCheck
from presence_svc.service import PresenceQueryServicer, PresenceServicer, UserDataServicer
from presence_svc.sharing_cache import SharingCache
from presence_svc.sharing_store import SharingStore
from presence_svc.store import VisibilityStore
from presence_svc.sweeper import Sweeper
from presence_svc.timers import Timers


class PresenceApp(ServiceApp):
    name = "presence_svc"
    services = (
        "nearby.v1.PresenceService",
        "mesh.internal.v1.PresenceQueryService",
        "mesh.internal.v1.UserDataService",
    )

    def __init__(
        self, settings: Settings, *, sweeper: bool = True, flag_check_s: float = CHECK_INTERVAL_S
    ) -> None:
        super().__init__(settings)
        self.run_sweeper = sweeper
        self.flag_check_s = flag_check_s

    async def open(self) -> None:
        s = self.settings
        self.redis = await self.open_redis()
        self.pool = await self.open_postgres()
        # the sharing tables reference friend_svc's users (ON DELETE CASCADE):
        # its migrations first (idempotent, under the same lock as ours)
        await db.migrate(self.pool, "friend_svc", "friend_svc")
        await db.migrate(self.pool, "presence_svc", "presence_svc")
        self.store = VisibilityStore(self.pool)
        self.cache = PresenceCache(self.redis, s.inactivity_timeout_s)
        self.sharing_store = SharingStore(self.pool)
        self.sharing_cache = SharingCache(self.redis)
        friend = internal_channel(s.friend_addr, mesh_tls.channel_credentials(s))
        self.resources.push_async_callback(friend.close)
        self.friends = FriendCheck(friend)
        self.flags = FlagSync(self.store, self.cache, self.sharing_store, self.sharing_cache)
        await self.flags.reload()
        self.spawn(self.flags.run(self.flag_check_s), "flag-sync")
        timers = Timers(self.store, self.sharing_store, self.cache, self.sharing_cache)
        self.spawn(timers.run(), "privacy-timers")
        if self.run_sweeper:
            self.sweeper = Sweeper(self.redis, s.inactivity_timeout_s, s.presence_sweep_interval_s)
            self.spawn(self.sweeper.run(), "presence-sweeper")

    def register(self, server: grpc.aio.Server) -> None:
        presence_service_pb2_grpc.add_PresenceServiceServicer_to_server(
            PresenceServicer(
                self.store,
                self.cache,
                (self.sharing_store, self.sharing_cache, self.friends, self.settings.friend_cap),
            ),
            server,
        )
        presence_query_service_pb2_grpc.add_PresenceQueryServiceServicer_to_server(
            PresenceQueryServicer(self.cache, self.settings.friend_cap), server
        )
        user_data_service_pb2_grpc.add_UserDataServiceServicer_to_server(
            UserDataServicer(self.store, self.cache, self.sharing_store, self.sharing_cache), server
        )
