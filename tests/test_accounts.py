"""A report of a user without an account changes nothing: location_svc asks
friend_svc (the owner of accounts) before it records a caller's own report
(unary ReportLocation, a stream's first report) of a user it has not
confirmed, and remembers the answer in `acct:{uid}` (location_svc/accounts.py).
Real friend_svc, location_svc, fan-out, Redis and Postgres, in-process."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from nearby.v1 import geo_pb2, location_service_pb2, location_service_pb2_grpc

from location_svc.app import LocationApp
from mesh import keys
from mesh.internal.v1 import events_pb2
from mesh.internal.v1 import location_ingest_service_pb2 as li
from mesh.internal.v1 import location_ingest_service_pb2_grpc as li_grpc
from mesh.settings import Settings
from tests.support.fanout import ORIGIN, Stream, fast_settings, mesh, uid, who
from tests.support.services import running, with_accounts

ACCEPTED = location_service_pb2.REPORT_DISPOSITION_ACCEPTED


def unary(lat: float, lng: float) -> location_service_pb2.ReportLocationRequest:
    return location_service_pb2.ReportLocationRequest(
        position=geo_pb2.LatLng(latitude=lat, longitude=lng)
    )


async def traces_of(r: aioredis.Redis, user: str) -> dict[str, Any]:
    """Everything Redis holds that names the user (keys, presence, history)."""
    entries: list[Any] = []
    for stream in keys.history_streams():
        entries += await r.xrange(stream) or []
    row_bytes = [b"".join(fields.values()) for _, fields in entries]
    return {
        "keys": sorted(await r.keys(f"*{user}*")),
        "presence": await r.zscore(keys.presence_index_of(user), user),
        "history": sum(1 for b in row_bytes if user.encode() in b),
    }


NOTHING: dict[str, Any] = {"keys": [], "presence": None, "history": 0}


async def test_unknown_callers_record_nothing_on_any_path(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    async with mesh(fast_settings(settings)) as m:
        ghost = uid("nobody")
        stub = location_service_pb2_grpc.LocationServiceStub(m.channel(m.location))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ReportLocation(unary(*ORIGIN), metadata=who(ghost))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert f"your user '{ghost}' has no account" in (err.value.details() or "")
        assert "CreateUser" in (err.value.details() or "")
        # a stream: its first location is not recorded, the stream ends NOT_FOUND
        s = Stream(m.nearby_stub(), ghost)
        await s.open(*ORIGIN)
        await s.done.wait()
        assert s.error is not None and s.error.code() == grpc.StatusCode.NOT_FOUND
        assert f"your user '{ghost}' has no account" in (s.error.details() or "")
        assert await traces_of(redis_client, ghost) == NOTHING
        # the same calls of a user with an account are recorded, and confirmed once
        (amy,) = await m.users("amy")
        ok = await stub.ReportLocation(unary(*ORIGIN), metadata=who(amy))
        assert ok.disposition == ACCEPTED
        assert await redis_client.exists(keys.account(amy))
        assert 0 < await redis_client.pttl(keys.account(amy)) <= keys.ACCOUNT_CONFIRM_MS
        # Redis lost the marker (a restart without persistence): asked again
        await redis_client.delete(keys.account(amy))
        sa = await m.connect(amy, *ORIGIN)
        await sa.wait_for(lambda x: x.snapshots())
        assert await redis_client.exists(keys.account(amy))
        await sa.close()


async def test_a_batch_rejects_only_its_unknown_users(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    async with mesh(fast_settings(settings)) as m:
        (amy,) = await m.users("amy")
        ghost = uid("nobody")
        stub = li_grpc.LocationIngestServiceStub(m.channel(m.location))
        fix = events_pb2.PositionFix(latitude=ORIGIN[0], longitude=ORIGIN[1])
        resp = await stub.ReportLocations(
            li.ReportLocationsRequest(
                reports=[
                    li.LocationReport(user_id=ghost, fix=fix, check_account=True),
                    li.LocationReport(user_id=amy, fix=fix, check_account=True),
                ]
            )
        )
        bad, good = resp.results
        assert bad.rejection.field == "user_id" and bad.rejection.reason == "CALLER_NOT_FOUND"
        assert "has no account" in bad.rejection.description
        assert not bad.disposition
        assert good.disposition == ACCEPTED and not good.HasField("rejection")
        assert await traces_of(redis_client, ghost) == NOTHING
        assert (await traces_of(redis_client, amy))["presence"] is not None


async def test_confirmation_needs_friend_svc_and_only_then(settings: Settings) -> None:
    """A user confirmed earlier reports while friend_svc is down; a user not
    confirmed yet gets UNAVAILABLE (retry), not a wrong NOT_FOUND."""
    async with (
        with_accounts(settings.replace(min_report_interval_s=0.0), "amy", "bea") as known,
        running(LocationApp(known, history_writer=False)) as loc,
        grpc.aio.insecure_channel(loc) as ch,
    ):
        stub = location_service_pb2_grpc.LocationServiceStub(ch)
        first = await stub.ReportLocation(unary(1.0, 1.0), metadata=who("amy"))
        assert first.disposition == ACCEPTED
    # friend_svc has stopped
    async with (
        running(LocationApp(known, history_writer=False)) as loc,
        grpc.aio.insecure_channel(loc) as ch,
    ):
        stub = location_service_pb2_grpc.LocationServiceStub(ch)
        again = await stub.ReportLocation(unary(1.5, 1.0), metadata=who("amy"))
        assert again.disposition == ACCEPTED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ReportLocation(unary(1.0, 1.0), metadata=who("bea"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "account" in (err.value.details() or "")
