"""Outages of Redis and Postgres answer UNAVAILABLE (with a retry hint), fast,
never INTERNAL or a hang; calls work again once the store is back. Faults are
real: the test's own Postgres and Redis servers are stopped and started."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nearby.v1 import friend_service_pb2 as fpb
from nearby.v1 import friend_service_pb2_grpc as fgrpc
from nearby.v1 import location_service_pb2 as lpb
from nearby.v1 import location_service_pb2_grpc as lgrpc

from friend_svc.app import FriendApp
from location_svc.app import LocationApp
from mesh.settings import Settings
from stack import infra
from tests.support.services import running, with_accounts

ADMIN = (("x-nearby-admin", "true"),)
AMY = (("x-nearby-user-id", "amy"),)
#: a call during an outage must fail well within a typical client deadline
FAIL_WITHIN_S = 3.0


def unavailable_with_retry_hint(err: grpc.aio.AioRpcError) -> bool:
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    hints = [
        d
        for d in (status.details if status else [])
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    ]
    return bool(hints) and "retry" in (err.details() or "")


async def fails_fast(call: Callable[[], Awaitable[Any]]) -> grpc.aio.AioRpcError:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call()
    elapsed = time.monotonic() - started
    assert elapsed < FAIL_WITHIN_S, f"the call took {elapsed:.1f} s to fail"
    return err.value


async def works_again(call: Callable[[], Awaitable[Any]], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            await call()
            return
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            assert time.monotonic() < deadline, "still failing after the store came back"


async def test_postgres_down_answers_unavailable_fast(tmp_root: Path, redis_url: str) -> None:
    pg = infra.PostgresServer(tmp_root / "pg-outage", fast=True).start()
    try:
        infra.create_database(pg.url, "outage")
        s = Settings(redis_url=redis_url, database_url=infra.database_url(pg.url, "outage"))
        async with running(FriendApp(s)) as addr, grpc.aio.insecure_channel(addr) as ch:
            stub = fgrpc.FriendServiceStub(ch)
            await stub.CreateUser(
                fpb.CreateUserRequest(user_id="amy", display_name="Amy"), metadata=ADMIN
            )

            def list_friends() -> Awaitable[Any]:
                return stub.ListFriends(fpb.ListFriendsRequest(), metadata=AMY, timeout=10)

            await list_friends()
            pg.stop()
            for _ in range(3):  # the first call and the ones after it alike
                err = await fails_fast(list_friends)
                assert unavailable_with_retry_hint(err), (err.code(), err.details())
            pg.start()
            await works_again(list_friends)
    finally:
        pg.stop()


async def test_redis_down_answers_unavailable_fast(tmp_root: Path, database_url: str) -> None:
    redis = infra.RedisServer(tmp_root / "redis-outage").start()
    try:
        plain = Settings(redis_url=redis.url, database_url=database_url)
        async with (
            with_accounts(plain, "amy") as s,
            running(LocationApp(s, history_writer=False)) as addr,
            grpc.aio.insecure_channel(addr) as ch,
        ):
            stub = lgrpc.LocationServiceStub(ch)

            def report() -> Awaitable[Any]:
                req = lpb.ReportLocationRequest()
                req.position.latitude, req.position.longitude = 52.52, 13.40
                return stub.ReportLocation(req, metadata=AMY, timeout=10)

            await report()
            redis.kill()
            for _ in range(3):
                err = await fails_fast(report)
                assert unavailable_with_retry_hint(err), (err.code(), err.details())
            redis.start()
            await works_again(report)
    finally:
        redis.stop()
