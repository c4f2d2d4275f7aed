"""Envoy's limits and stream timeouts, against a minimal NearbyService backend:
more streams than Envoy's default circuit breaker allows, and what an idle
stream sees."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc

from tests.support.stub_edge import StubServicer, stub_edge

#: Envoy's default circuit breaker allows 1,024 concurrent requests per cluster
STREAMS = 1_500
IDLE_TIMEOUT_S = 1.0
#: how long the 1,500 streams may take to reach the backend
CONNECT_WINDOW_S = 60.0
#: grpc shares connections between identical channels; Envoy closes a connection
#: on which many streams were reset early (its "rapid reset" protection), as the
#: first test does, so every test gets its own
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


class Backend(StubServicer):
    """Holds streams open; with `x-beat`, writes that many messages 0.3 s apart."""

    def __init__(self) -> None:
        self.open = 0
        self.opened = asyncio.Event()

    async def Connect(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[pb.ConnectResponse]:
        md = dict(context.invocation_metadata())
        beats = int(md.get("x-beat", "0"))
        if beats:
            for _ in range(beats):
                await asyncio.sleep(IDLE_TIMEOUT_S * 0.3)
                yield pb.ConnectResponse()
            return
        self.open += 1
        if self.open >= STREAMS:
            self.opened.set()
        try:
            await asyncio.sleep(3600)
        finally:
            self.open -= 1


@dataclass
class Edge:
    addr: str
    token: str
    backend: Backend


@contextlib.asynccontextmanager
async def start_edge(idle_timeout_s: float) -> AsyncIterator[Edge]:
    """A stub backend behind a real Envoy whose stream idle timeout is given."""
    backend = Backend()
    async with stub_edge([backend], "limits", stream_idle_timeout_s=idle_timeout_s) as e:
        yield Edge(e.addr, e.token, backend)


@pytest.fixture(scope="module")
async def edge() -> AsyncIterator[Edge]:
    """Envoy with a 1 s stream idle timeout (the timeout tests)."""
    async with start_edge(IDLE_TIMEOUT_S) as e:
        yield e


@pytest.fixture
async def patient_edge() -> AsyncIterator[Edge]:
    """Envoy whose idle timeout outlasts opening 1,500 streams on a busy 2-core
    machine: with the 1 s timeout, the first streams opened could be ended as
    idle before the last one reached the backend (a flaky count)."""
    async with start_edge(CONNECT_WINDOW_S * 2) as e:
        yield e


async def test_more_streams_than_envoys_default_circuit_breaker(patient_edge: Edge) -> None:
    edge = patient_edge
    async with grpc.aio.insecure_channel(edge.addr, options=OWN_CONNECTION) as channel:
        stub = pb_grpc.NearbyServiceStub(channel)
        md = [("authorization", f"Bearer {edge.token}")]
        calls = [stub.Connect(metadata=md) for _ in range(STREAMS)]
        try:
            # every stream reaches the backend: none is refused with 503 overflow
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CONNECT_WINDOW_S
            while not edge.backend.opened.is_set() and loop.time() < deadline:
                refused = [c for c in calls if c.done()]
                assert not refused, await refused[0].code()
                await asyncio.sleep(0.05)
            assert edge.backend.open == STREAMS
        finally:
            for call in calls:
                call.cancel()


async def test_idle_stream_is_told_to_reconnect(edge: Edge) -> None:
    """Silent past stream_idle_timeout (before any response): UNAVAILABLE, not UNKNOWN."""
    async with grpc.aio.insecure_channel(edge.addr, options=OWN_CONNECTION) as channel:
        call = pb_grpc.NearbyServiceStub(channel).Connect(
            metadata=[("authorization", f"Bearer {edge.token}")]
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "reconnect" in (err.value.details() or "")


async def test_stream_with_heartbeats_outlives_the_idle_timeout(edge: Edge) -> None:
    """Messages more often than the idle timeout keep a stream alive past it."""
    beats = 8  # 8 x 0.3 s = 2.4 x the idle timeout
    async with grpc.aio.insecure_channel(edge.addr, options=OWN_CONNECTION) as channel:
        call = pb_grpc.NearbyServiceStub(channel).Connect(
            metadata=[("authorization", f"Bearer {edge.token}"), ("x-beat", str(beats))]
        )
        received = [m async for m in call]
        assert await call.code() == grpc.StatusCode.OK
    assert len(received) == beats
