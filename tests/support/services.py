"""Run a service in-process on a free loopback port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from mesh.server import Runner, ServiceApp
from mesh.settings import Settings


@contextlib.asynccontextmanager
async def running(app: ServiceApp) -> AsyncIterator[str]:
    """Serve `app` in-process on a free loopback port; yields its address."""
    runner = Runner(app, "127.0.0.1", 0, grace_s=2.0)
    port = await runner.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.stop()


@contextlib.asynccontextmanager
async def with_accounts(settings: Settings, *users: str) -> AsyncIterator[Settings]:
    """friend_svc in-process holding these users' accounts; yields `settings`
    pointing at it (location_svc records a caller's own report only if the
    caller has an account)."""
    from nearby.v1 import friend_service_pb2 as fpb
    from nearby.v1 import friend_service_pb2_grpc as fpb_grpc

    from friend_svc.app import FriendApp

    admin = (("x-nearby-user-id", "operator"), ("x-nearby-admin", "true"))
    async with running(FriendApp(settings)) as addr, grpc.aio.insecure_channel(addr) as ch:
        stub = fpb_grpc.FriendServiceStub(ch)
        for u in users:
            await stub.CreateUser(fpb.CreateUserRequest(user_id=u, display_name=u), metadata=admin)
        yield settings.replace(friend_addr=addr)
