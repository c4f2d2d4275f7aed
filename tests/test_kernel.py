"""The service kernel: health, reflection, error mapping, graceful shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status
from nearby.v1 import friend_service_pb2, friend_service_pb2_grpc, user_pb2

from mesh.errors import NotFound
from mesh.protos import all_service_names
from mesh.server import Runner, ServiceApp
from mesh.settings import Settings
from mesh.types import Context


class _SlowFriends(friend_service_pb2_grpc.FriendServiceServicer):
    async def GetUser(
        self, request: friend_service_pb2.GetUserRequest, context: Context
    ) -> friend_service_pb2.GetUserResponse:
        if request.user_id == "missing":
            raise NotFound(
                "user 'missing' does not exist", reason="USER_NOT_FOUND", userId="missing"
            )
        await asyncio.sleep(float(request.user_id or 0))
        return friend_service_pb2.GetUserResponse(user=user_pb2.User(user_id="done"))


class _App(ServiceApp):
    name = "test_svc"
    services = ("nearby.v1.FriendService",)

    def register(self, server: grpc.aio.Server) -> None:
        friend_service_pb2_grpc.add_FriendServiceServicer_to_server(_SlowFriends(), server)  # type: ignore[abstract]


def _reflected_services(port: int) -> list[str]:
    # the reflection client is synchronous: run it off the event loop
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return list(ProtoReflectionDescriptorDatabase(ch).get_services())


@pytest.fixture
async def runner() -> AsyncIterator[Runner]:
    r = Runner(_App(Settings()), "127.0.0.1", 0, grace_s=5.0)
    await r.start()
    yield r
    await r.stop()


async def test_health_and_reflection(runner: Runner) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as ch:
        health: Any = health_pb2_grpc.HealthStub(ch)
        for name in ("", "nearby.v1.FriendService"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    services = set(await asyncio.to_thread(_reflected_services, runner.port))
    assert set(all_service_names()) <= services
    assert "grpc.health.v1.Health" in services
    await runner.stop()


async def test_domain_error_has_code_message_and_error_info(runner: Runner) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as ch:
        stub = friend_service_pb2_grpc.FriendServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetUser(friend_service_pb2.GetUserRequest(user_id="missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "does not exist" in (err.value.details() or "")
    status = rpc_status.from_call(err.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "USER_NOT_FOUND" and info.domain == "nearby.v1"
    await runner.stop()


async def test_graceful_shutdown_finishes_in_flight_call(runner: Runner) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as ch:
        stub = friend_service_pb2_grpc.FriendServiceStub(ch)
        call = stub.GetUser(friend_service_pb2.GetUserRequest(user_id="1.0"))
        await asyncio.sleep(0.3)  # the call is in flight
        stopping = asyncio.create_task(runner.stop())
        await asyncio.sleep(0.1)
        health: Any = health_pb2_grpc.HealthStub(ch)
        with pytest.raises(grpc.aio.AioRpcError):
            # no new calls once stopping (or NOT_SERVING)
            resp = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        reply = await call
        assert reply.user.user_id == "done"
        await stopping
