"""The fan-out service: NearbyService streams on one pub/sub hub."""

from __future__ import annotations

import grpc
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc

from fanout_svc.admission import Admission, StreamSlots
from fanout_svc.hub import Hub
from fanout_svc.reports import ReportBatcher
from fanout_svc.service import NearbyServicer
from fanout_svc.streams import Streams
from fanout_svc.upstream import Upstream
from mesh import tls as mesh_tls
from mesh.channels import internal_channel
from mesh.server import ServiceApp
from mesh.settings import Settings


class FanoutApp(ServiceApp):
    name = "fanout_svc"
    services = ("nearby.v1.NearbyService",)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._channels: list[grpc.aio.Channel] = []
        self.hub = Hub.for_settings(settings)
        self._streams: Streams | None = None

    @property
    def streams(self) -> Streams:
        assert self._streams is not None, "FanoutApp.open() first"
        return self._streams

    async def open(self) -> None:
        s = self.settings
        creds = mesh_tls.channel_credentials(s)
        friend = internal_channel(s.friend_addr, creds)
        location = internal_channel(s.location_addr, creds)
        self._channels = [friend, location]
        upstream = Upstream(friend, location)
        await self.hub.open()
        slots = None
        if s.streams_per_user > 0:  # the per-user stream cap (admission.py)
            engine = await self.open_redis(max_connections=8)
            slots = StreamSlots(engine, s.streams_per_user, s.stream_lease_s)
            slots.start()
        admission = Admission(s, slots)
        self._streams = Streams(s, self.hub, upstream, ReportBatcher(upstream), admission)
        self._streams.start()

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_NearbyServiceServicer_to_server(NearbyServicer(self.streams), server)

    async def drain(self) -> None:
        """Health is NOT_SERVING already: send every client away, staggered."""
        await self.streams.drain()

    async def close(self) -> None:
        if self._streams is not None:
            await self._streams.close()
            await self._streams.reports.close()
        await self.hub.close()
        for ch in self._channels:
            await ch.close()
        await super().close()
