"""The ceiling server: a bare grpc.aio NearbyService with no logic at all.

`python -m bench.bare --port P --per-stream K`: answers each Connect with an
empty snapshot and holds the stream. On SIGUSR1 it pushes K messages to every
open stream, each carrying ONE friend update (the unbatched cost a fan-out
server would pay per update). With `--rate R --seconds T`, SIGUSR1 instead
starts T seconds of paced pushes, R messages per second in 10 ms ticks, taken
in turn by the open streams, each a fresh one-update message stamped with the
time it was made (the client's latency sample). Same server options, event
loop (uvloop) and grpc.health.v1 service as the services, so the only
difference with the real path is the work the real path does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nearby.v1 import geo_pb2, nearby_service_pb2, nearby_service_pb2_grpc

from mesh.server import SERVER_OPTIONS

pb = nearby_service_pb2


def update_message(i: int) -> pb.ConnectResponse:
    ts = Timestamp()
    ts.FromMilliseconds(int(time.time() * 1000))
    friend = pb.NearbyFriend(
        user_id=f"friend{i:06d}",
        display_name=f"Friend {i}",
        position=geo_pb2.LatLng(latitude=48.8566 + i * 1e-5, longitude=2.3522),
        distance_meters=100.0 + i,
        update_time=ts,
    )
    event = pb.NearbyEvent(friend_update=pb.FriendUpdate(friend=friend))
    return pb.ConnectResponse(events=pb.NearbyEvents(events=[event]))


class BareNearby(nearby_service_pb2_grpc.NearbyServiceServicer):
    def __init__(self, per_stream: int, rate: float = 0.0, seconds: float = 0.0) -> None:
        self.per_stream = per_stream
        self.rate, self.seconds = rate, seconds
        self.queues: set[asyncio.Queue[pb.ConnectResponse]] = set()
        self.messages = [update_message(i) for i in range(per_stream)]
        self.pacing: asyncio.Task[None] | None = None

    async def ListNearbyFriends(
        self, request: pb.ListNearbyFriendsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListNearbyFriendsResponse:
        return pb.ListNearbyFriendsResponse()

    async def Watch(  # type: ignore[override]
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """The baseline measures Connect only."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server has no Watch")

    def burst(self) -> None:
        if self.rate:
            if self.pacing is None or self.pacing.done():
                self.pacing = asyncio.create_task(self.paced())
            return
        for q in self.queues:
            for m in self.messages:
                q.put_nowait(m)

    async def paced(self) -> None:
        tick, i = 0.01, 0
        queues = list(self.queues)
        start = time.monotonic()
        end = start + self.seconds
        while queues and time.monotonic() < end:
            t = time.monotonic()
            due = int((t - start) * self.rate)
            while i < due:
                queues[i % len(queues)].put_nowait(update_message(i % 40))
                i += 1
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - t)))

    async def Connect(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[pb.ConnectRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        await context.write(pb.ConnectResponse(snapshot=pb.Snapshot(radius_meters=8047.0)))
        q: asyncio.Queue[pb.ConnectResponse] = asyncio.Queue()
        self.queues.add(q)

        async def drain_reads() -> None:
            while await context.read() is not grpc.aio.EOF:
                pass

        reader = asyncio.create_task(drain_reads())
        try:
            while not reader.done():
                getter = asyncio.ensure_future(q.get())
                await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                await context.write(getter.result())
        finally:
            self.queues.discard(q)
            reader.cancel()


async def serve(port: int, per_stream: int, rate: float = 0.0, seconds: float = 0.0) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    servicer = BareNearby(per_stream, rate, seconds)
    nearby_service_pb2_grpc.add_NearbyServiceServicer_to_server(servicer, server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    for name in ("", "nearby.v1.NearbyService"):
        await checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, servicer.burst)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--per-stream", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0, help="paced: messages per second")
    parser.add_argument("--seconds", type=float, default=0.0, help="paced: for how long")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.port, args.per_stream, args.rate, args.seconds))


if __name__ == "__main__":
    main()
