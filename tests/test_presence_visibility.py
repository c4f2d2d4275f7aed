"""presence_svc ghost mode: SetVisibility/GetVisibility, the Redis mirror,
its effect on publishing and reads, persistence across restarts and flushes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from nearby.v1 import presence_service_pb2, presence_service_pb2_grpc

from location_svc.app import LocationApp
from mesh import keys
from mesh.internal.v1 import (
    events_pb2,
    location_ingest_service_pb2,
    location_ingest_service_pb2_grpc,
)
from mesh.settings import Settings
from presence_svc.app import PresenceApp
from tests.support.redis import subscription
from tests.support.services import running

VISIBLE = presence_service_pb2.VISIBILITY_VISIBLE
HIDDEN = presence_service_pb2.VISIBILITY_HIDDEN


def who(user: str) -> tuple[tuple[str, str], ...]:
    return (("x-nearby-user-id", user),)


async def set_vis(stub: Any, user: str, visibility: Any) -> Any:
    return await stub.SetVisibility(
        presence_service_pb2.SetVisibilityRequest(visibility=visibility), metadata=who(user)
    )


async def get_vis(stub: Any, user: str) -> Any:
    resp = await stub.GetVisibility(presence_service_pb2.GetVisibilityRequest(), metadata=who(user))
    return resp.visibility


async def events(sub: Any, wait_s: float) -> list[events_pb2.LocationEvent]:
    out = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        msg = await sub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if msg is not None:
            out.append(events_pb2.LocationEvent.FromString(msg["data"]))
    return out


def one_report(user: str) -> location_ingest_service_pb2.ReportLocationsRequest:
    return location_ingest_service_pb2.ReportLocationsRequest(
        reports=[
            location_ingest_service_pb2.LocationReport(
                user_id=user, fix=events_pb2.PositionFix(latitude=1.0, longitude=2.0)
            )
        ]
    )


async def test_ghost_mode_hides_and_shows(engine_settings: Settings, engine_client: Any) -> None:
    s = engine_settings.replace(min_report_interval_s=0.0)
    async with (
        running(PresenceApp(s)) as paddr,
        running(LocationApp(s, history_writer=False)) as laddr,
        grpc.aio.insecure_channel(paddr) as pch,
        grpc.aio.insecure_channel(laddr) as lch,
    ):
        presence = presence_service_pb2_grpc.PresenceServiceStub(pch)
        ingest = location_ingest_service_pb2_grpc.LocationIngestServiceStub(lch)
        sub: Any = subscription(engine_client)
        await sub.subscribe(keys.location_channel("zoe"))
        assert await get_vis(presence, "zoe") == VISIBLE  # the default
        await ingest.ReportLocations(one_report("zoe"))
        assert [e.WhichOneof("kind") for e in await events(sub, 0.3)] == ["moved"]

        assert (await set_vis(presence, "zoe", HIDDEN)).visibility == HIDDEN
        assert [e.WhichOneof("kind") for e in await events(sub, 0.3)] == ["hidden"]
        assert await get_vis(presence, "zoe") == HIDDEN
        assert await engine_client.exists(keys.hidden("zoe"))
        await ingest.ReportLocations(one_report("zoe"))
        assert await events(sub, 0.3) == []  # not published while hidden
        got = await ingest.BatchGetLocations(
            location_ingest_service_pb2.BatchGetLocationsRequest(user_ids=["zoe"])
        )
        assert list(got.locations) == []

        assert (await set_vis(presence, "zoe", VISIBLE)).visibility == VISIBLE
        assert not await engine_client.exists(keys.hidden("zoe"))
        assert await events(sub, 0.2) == []  # reappears at the next update
        await ingest.ReportLocations(one_report("zoe"))
        assert [e.WhichOneof("kind") for e in await events(sub, 0.3)] == ["moved"]
        await sub.aclose()


async def test_bad_requests(engine_settings: Settings, engine_client: Any) -> None:
    async with running(PresenceApp(engine_settings)) as addr, grpc.aio.insecure_channel(addr) as ch:
        stub = presence_service_pb2_grpc.PresenceServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await set_vis(stub, "amy", presence_service_pb2.VISIBILITY_UNSPECIFIED)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "visibility" in (err.value.details() or "")
        assert await get_vis(stub, "amy") == VISIBLE
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetVisibility(presence_service_pb2.SetVisibilityRequest(visibility=HIDDEN))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetVisibility(presence_service_pb2.GetVisibilityRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not await engine_client.exists(keys.hidden("amy"))


async def test_ghost_mode_survives_a_restart_and_a_redis_flush(
    engine_settings: Settings, engine_client: Any
) -> None:
    async with running(PresenceApp(engine_settings)) as addr, grpc.aio.insecure_channel(addr) as ch:
        stub = presence_service_pb2_grpc.PresenceServiceStub(ch)
        await set_vis(stub, "kim", HIDDEN)
        await set_vis(stub, "lou", HIDDEN)
        await set_vis(stub, "lou", VISIBLE)
    await engine_client.flushall()  # e.g. Redis restarted while presence was down
    async with running(PresenceApp(engine_settings, flag_check_s=0.1)) as addr:
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = presence_service_pb2_grpc.PresenceServiceStub(ch)
            assert await get_vis(stub, "kim") == HIDDEN
            assert await get_vis(stub, "lou") == VISIBLE
        assert await engine_client.exists(keys.hidden("kim"))  # reloaded on start
        assert not await engine_client.exists(keys.hidden("lou"))
        await engine_client.flushall()  # Redis restarts while presence runs
        # the marker is written last, after every flag of the reload: wait for
        # it, then the flags must be there (waiting for a flag and then checking
        # the marker would race the reload's last step)
        deadline = time.monotonic() + 5
        while not all([await engine_client.exists(m) for m in keys.visibility_synced_markers()]):
            assert time.monotonic() < deadline, "hidden flags were not reloaded"
            await asyncio.sleep(0.05)
        assert await engine_client.exists(keys.hidden("kim"))
        assert not await engine_client.exists(keys.hidden("lou"))
