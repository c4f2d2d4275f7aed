"""Faults at the edge, against stub NearbyService backends behind a real Envoy.

- Back-pressure: a client that stops reading makes the backend's writes block
  (so the fan-out's stall watchdog can end that stream) instead of Envoy
  buffering the backlog. The client is a raw HTTP/2 client (h2) that opens
  `Connect`, reads the socket (so no kernel buffer hides anything) but never
  returns flow-control credit: what a frozen app looks like to the edge.
- A dead replica: new streams land on the live one at once (route retries of
  refused connections, outlier ejection), long before a health check notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc

from mesh.server import Runner
from tests.support.stub_edge import StubServicer, stub_edge

CHUNK = 16 * 1024
#: What may sit between a frozen client and the backend: the client's stream
#: window, Envoy's buffers on both sides, the upstream window and gRPC's own
#: write buffer. Envoy's defaults (256 MiB stream windows) let it take far more.
BACKLOG_BOUND = 4 * 1024 * 1024


class Flood(StubServicer):
    """Writes CHUNK-sized messages until the stream ends; counts what was written."""

    def __init__(self) -> None:
        self.opened = 0
        self.written = 0
        self.last_write = 0.0
        self.started = asyncio.Event()
        self.ended = asyncio.Event()

    async def Connect(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        msg = pb.ConnectResponse()
        msg.reconnect.reason = "x" * CHUNK
        size = msg.ByteSize()
        self.opened += 1
        self.started.set()
        if dict(context.invocation_metadata()).get("x-quiet"):
            await asyncio.sleep(3600)
        try:
            while True:
                await context.write(msg)
                self.written += size
                self.last_write = time.monotonic()
        finally:
            self.ended.set()


@dataclass
class Edge:
    port: int
    token: str
    backends: list[Flood]
    runners: list[Runner]

    @property
    def backend(self) -> Flood:
        return self.backends[0]


@contextlib.asynccontextmanager
async def start_edge(replicas: int = 1, health_interval_s: float = 0.5) -> AsyncIterator[Edge]:
    backends = [Flood() for _ in range(replicas)]
    async with stub_edge(backends, "frozen", health_interval_s=health_interval_s) as e:
        yield Edge(e.port, e.token, backends, e.runners)


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    async with start_edge() as e:
        yield e


@contextlib.contextmanager
def frozen_client(port: int, token: str) -> Iterator[socket.socket]:
    """Open Connect over raw HTTP/2 and never grant flow-control credit."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", f"127.0.0.1:{port}"),
            (":path", "/nearby.v1.NearbyService/Connect"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("authorization", f"Bearer {token}"),
        ],
    )
    conn.send_data(sid, b"\x00\x00\x00\x00\x00")  # one empty ConnectRequest, stream open
    sock.sendall(conn.data_to_send())
    try:
        yield sock
    finally:
        sock.close()


def drain_socket(sock: socket.socket, seconds: float) -> int:
    """Read (and discard) what arrives for `seconds`, granting no window; bytes read."""
    sock.settimeout(0.1)
    got = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            continue
        if not data:
            break
        got += len(data)
    return got


async def test_a_client_that_stops_reading_blocks_the_backend(edge: Edge) -> None:
    with frozen_client(edge.port, edge.token) as sock:
        await asyncio.wait_for(edge.backend.started.wait(), 10)
        # the backlog settles: the backend's writes stop completing
        deadline = time.monotonic() + 30
        while True:
            received = await asyncio.to_thread(drain_socket, sock, 0.5)
            idle = time.monotonic() - edge.backend.last_write
            if received == 0 and edge.backend.last_write and idle > 1.0:
                break
            assert edge.backend.written < BACKLOG_BOUND, (
                f"the backend wrote {edge.backend.written} bytes to a client that reads "
                "nothing: Envoy is buffering the backlog instead of pushing back"
            )
            assert time.monotonic() < deadline, "the backend's writes never blocked"
        assert edge.backend.written < BACKLOG_BOUND
        assert not edge.backend.ended.is_set()  # blocked, not ended: the watchdog decides


async def test_new_streams_skip_a_dead_replica_before_any_health_check() -> None:
    """One of two replicas dies; health checks are 60 s apart, so only the
    route's retries and outlier ejection can keep new streams off it."""
    async with start_edge(replicas=2, health_interval_s=60.0) as edge:
        dead, live = edge.runners[0], edge.backends[1]
        await dead.stop()  # its port now refuses connections
        md = [("authorization", f"Bearer {edge.token}"), ("x-quiet", "1")]
        streams = 40
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            stub = pb_grpc.NearbyServiceStub(channel)
            calls = [stub.Connect(metadata=md) for _ in range(streams)]
            try:
                for call in calls:
                    await call.write(pb.ConnectRequest())
                deadline = time.monotonic() + 30
                while live.opened < streams:
                    failed = [c for c in calls if c.done()]
                    assert not failed, f"a stream failed: {await failed[0].code()}"
                    assert time.monotonic() < deadline, f"{live.opened} of {streams} opened"
                    await asyncio.sleep(0.05)
            finally:
                for call in calls:
                    call.cancel()
