"""A real Envoy in front of stub NearbyService backends (no mesh behind it),
for tests of the edge itself: limits, timeouts, back-pressure, dead replicas."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc

from mesh.server import Runner, ServiceApp
from mesh.settings import Settings
from stack import envoy_config, infra, tokens
from stack.edge import Envoy


class StubServicer(pb_grpc.NearbyServiceServicer):
    """Base of the stubs: each overrides Connect; ListNearbyFriends is empty."""

    async def ListNearbyFriends(
        self, request: pb.ListNearbyFriendsRequest, context: Any
    ) -> pb.ListNearbyFriendsResponse:
        return pb.ListNearbyFriendsResponse()

    async def Watch(self, request: pb.WatchRequest, context: Any) -> None:  # type: ignore[override]
        """A double of Connect's edge behaviour only: no Watch."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Watch is not served by this stub")


class StubApp(ServiceApp):
    """Serves one NearbyService servicer (every backend address of the edge)."""

    name = "test_stub"
    services = ("nearby.v1.NearbyService",)

    def __init__(self, servicer: pb_grpc.NearbyServiceServicer) -> None:
        super().__init__(Settings())
        self.servicer = servicer

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_NearbyServiceServicer_to_server(self.servicer, server)


@dataclass
class StubEdge:
    port: int
    token: str
    runners: list[Runner]

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def stub_edge(
    servicers: Sequence[pb_grpc.NearbyServiceServicer], subject: str = "stub", **cfg: Any
) -> AsyncIterator[StubEdge]:
    """One backend per servicer (all fan-out replicas; the first also serves the
    other clusters) behind Envoy; `cfg` overrides EdgeConfig fields."""
    runners = [Runner(StubApp(s), "127.0.0.1", 0, grace_s=0.5) for s in servicers]
    addrs = [f"127.0.0.1:{await r.start()}" for r in runners]
    try:
        with tempfile.TemporaryDirectory(prefix="nearby-stub-edge-") as tmp:
            key = tokens.load_or_create(Path(tmp))
            port, admin = infra.free_port(), infra.free_port()
            config = envoy_config.EdgeConfig(
                **{
                    "friend": addrs[0],
                    "location": addrs[0],
                    "presence": addrs[0],
                    "fanout": tuple(addrs),
                    "jwks_path": str(key.jwks_path),
                    "listen_host": "127.0.0.1",
                    "port": port,
                    "admin_port": admin,
                    "health_interval_s": 0.5,
                    **cfg,
                }
            )
            envoy = Envoy(envoy_config.write(config, Path(tmp, "envoy.yaml")), admin, concurrency=1)
            envoy.start()
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while True:
                    if await asyncio.to_thread(envoy.ready_once):
                        health = await asyncio.to_thread(envoy.host_health, "fanout_svc")
                        if all(health.get(a) for a in addrs):
                            break
                    assert loop.time() < deadline, "Envoy or its backends never became ready"
                    await asyncio.sleep(0.05)
                token = key.sign(subject, issuer=config.issuer, audience=config.audience)
                yield StubEdge(port, token, runners)
            finally:
                await asyncio.to_thread(envoy.stop)
    finally:
        for r in runners:
            await r.stop()
