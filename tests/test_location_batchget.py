"""LocationIngestService.BatchGetLocations: active and visible users only."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import redis.asyncio as aioredis

from location_svc.app import LocationApp
from mesh import keys
from mesh.internal.v1 import (
    events_pb2,
    location_ingest_service_pb2,
    location_ingest_service_pb2_grpc,
)
from mesh.settings import Settings
from tests.support.services import running


def reports(
    users: list[str], lat: float = 48.85
) -> location_ingest_service_pb2.ReportLocationsRequest:
    return location_ingest_service_pb2.ReportLocationsRequest(
        reports=[
            location_ingest_service_pb2.LocationReport(
                user_id=u, fix=events_pb2.PositionFix(latitude=lat, longitude=2.35)
            )
            for u in users
        ]
    )


async def test_active_inactive_hidden_and_unknown(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    app = LocationApp(settings.replace(inactivity_timeout_s=1.0), history_writer=False)
    async with running(app) as addr, grpc.aio.insecure_channel(addr) as ch:
        stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)
        await stub.ReportLocations(reports(["gone"]))
        deadline = time.monotonic() + 5
        while await redis_client.exists(keys.location("gone")):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await redis_client.set(keys.hidden("ghost"), b"1")
        await stub.ReportLocations(reports(["active", "ghost"], lat=10.0))
        ids = ["unknown", "ghost", "active", "gone"]
        got = await stub.BatchGetLocations(
            location_ingest_service_pb2.BatchGetLocationsRequest(user_ids=ids)
        )
        assert [loc.user_id for loc in got.locations] == ["active"]
        assert got.locations[0].fix.latitude == 10.0
        assert got.locations[0].fix.recorded_at_ms > 0
        mine = await stub.BatchGetLocations(
            location_ingest_service_pb2.BatchGetLocationsRequest(user_ids=ids, include_hidden=True)
        )
        assert [loc.user_id for loc in mine.locations] == ["ghost", "active"]


async def test_five_thousand_ids_in_one_call(settings: Settings) -> None:
    app = LocationApp(settings, history_writer=False)
    users = [f"user{i}" for i in range(5000)]
    async with running(app) as addr, grpc.aio.insecure_channel(addr) as ch:
        stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)
        for i in range(0, 5000, 1000):
            await stub.ReportLocations(reports(users[i : i + 1000 : 2]))  # every other user
        got = await stub.BatchGetLocations(
            location_ingest_service_pb2.BatchGetLocationsRequest(user_ids=users)
        )
        assert [loc.user_id for loc in got.locations] == users[::2]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.BatchGetLocations(
                location_ingest_service_pb2.BatchGetLocationsRequest(user_ids=[*users, "one-more"])
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "user_ids" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.BatchGetLocations(
                location_ingest_service_pb2.BatchGetLocationsRequest(user_ids=["ok", "bad id!"])
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "user_ids[1]" in (err.value.details() or "")
