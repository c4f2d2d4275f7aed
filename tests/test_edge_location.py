"""Through the real Envoy: a user reports and reads only their own location
and history, whatever identity header or user id the client sends."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from nearby.v1 import geo_pb2, location_service_pb2, location_service_pb2_grpc

from mesh.internal.v1 import location_ingest_service_pb2, location_ingest_service_pb2_grpc
from mesh.settings import Settings
from tests.support.edge_stack import EdgeStack, edge_stack


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[EdgeStack]:
    async with edge_stack(settings, services=("friend_svc", "location_svc")) as s:
        yield s


async def test_a_user_reports_and_reads_only_their_own_location(stack: EdgeStack) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    await stack.create_user(alice)
    stub = location_service_pb2_grpc.LocationServiceStub(stack.channel())
    # Alice's token with Bob's identity header: the report is Alice's.
    resp = await stub.ReportLocation(
        location_service_pb2.ReportLocationRequest(
            position=geo_pb2.LatLng(latitude=48.85, longitude=2.35)
        ),
        metadata=[*stack.auth(alice), ("x-nearby-user-id", bob)],
        timeout=10,
    )
    assert resp.location.user_id == alice

    async with grpc.aio.insecure_channel(stack.backends["location_svc"][0]) as direct:
        cached = await location_ingest_service_pb2_grpc.LocationIngestServiceStub(
            direct
        ).BatchGetLocations(
            location_ingest_service_pb2.BatchGetLocationsRequest(user_ids=[alice, bob])
        )
    assert [c.user_id for c in cached.locations] == [alice]

    # Bob cannot read Alice's history through the edge, with or without a forged header.
    for extra in ([], [("x-nearby-user-id", alice)]):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.ListLocationHistory(
                location_service_pb2.ListLocationHistoryRequest(user_id=alice),
                metadata=[*stack.auth(bob), *extra],
                timeout=10,
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
