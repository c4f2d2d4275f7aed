"""Chaos at the edge: what one call with oversized metadata does to the other
streams of the same HTTP/2 connection through the real Envoy.

Envoy's `max_request_headers_kb` is 64 (stack/envoy_config.py). On one
connection a stream is open (it answers every message it gets) while another
call carries too much metadata:

- a 40 KiB header (a block under the limit): the call reaches the backend,
  whose gRPC answers RESOURCE_EXHAUSTED; the stream goes on;
- 90 KiB in three 30 KiB headers (a block over the limit): Envoy resets that
  one stream (the call fails with INTERNAL); the stream goes on;
- one 70 KiB header: Envoy's HPACK decoder takes no header over 64 KiB and
  ends the whole connection (GOAWAY COMPRESSION_ERROR), whatever the limit:
  the open stream fails with UNAVAILABLE, which clients (the SDK) answer by
  reconnecting; the channel's next call works.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc

from stack.envoy_config import EdgeConfig
from tests.support.stub_edge import StubEdge, StubServicer, stub_edge


class Echo(StubServicer):
    """Connect answers each request with a heartbeat."""

    async def Connect(self, request_iterator: Any, context: Any) -> Any:
        async for _ in request_iterator:
            yield pb.ConnectResponse(heartbeat=pb.Heartbeat())


@pytest.fixture(scope="module")
async def edge() -> AsyncIterator[StubEdge]:
    async with stub_edge([Echo()], "headers") as e:
        yield e


async def answers(call: Any) -> bool:
    """The open stream still answers a message."""
    await call.write(pb.ConnectRequest())
    reply = await asyncio.wait_for(call.read(), 10)
    return isinstance(reply, pb.ConnectResponse)


async def oversized(
    edge: StubEdge, headers: list[tuple[str, str]]
) -> tuple[Any, grpc.StatusCode, grpc.aio.Channel]:
    """Open a stream, make one call with `headers` on the same connection;
    returns the stream, the call's status and the channel (to close)."""
    md = [("authorization", f"Bearer {edge.token}")]
    channel = grpc.aio.insecure_channel(edge.addr)
    stub = pb_grpc.NearbyServiceStub(channel)
    stream = stub.Connect(metadata=md)
    assert await answers(stream)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListNearbyFriends(
            pb.ListNearbyFriendsRequest(), metadata=md + headers, timeout=10
        )
    return stream, err.value.code(), channel


def test_the_limit_is_set_deliberately() -> None:
    assert EdgeConfig().max_request_headers_kb == 64


async def test_a_block_under_the_limit_fails_only_that_call(edge: StubEdge) -> None:
    stream, code, channel = await oversized(edge, [("x-big", "a" * 40 * 1024)])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await answers(stream)
    stream.cancel()
    await channel.close()


async def test_a_block_over_the_limit_resets_only_that_stream(edge: StubEdge) -> None:
    stream, code, channel = await oversized(
        edge, [(f"x-big{i}", "a" * 30 * 1024) for i in range(3)]
    )
    assert code == grpc.StatusCode.INTERNAL
    assert await answers(stream)
    stream.cancel()
    await channel.close()


async def test_one_header_over_64_kib_ends_the_connection(edge: StubEdge) -> None:
    stream, code, channel = await oversized(edge, [("x-big", "a" * 70 * 1024)])
    assert code == grpc.StatusCode.UNAVAILABLE
    # the open stream ended with the connection
    assert await asyncio.wait_for(stream.code(), 10) == grpc.StatusCode.UNAVAILABLE
    # the channel reconnects: its next call works
    stub = pb_grpc.NearbyServiceStub(channel)
    await stub.ListNearbyFriends(
        pb.ListNearbyFriendsRequest(),
        metadata=[("authorization", f"Bearer {edge.token}")],
        timeout=10,
    )
    await channel.close()
