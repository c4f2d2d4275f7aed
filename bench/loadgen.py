"""A load-generating client process, driven over stdin/stdout (JSON lines).

`python -m bench.loadgen --target HOST:PORT` holds many NearbyService.Connect
streams (direct to a backend with the identity header, or through Envoy with
a bearer token) and answers commands, one JSON object per line:

- `{"cmd": "connect", "users": [[id, lat, lng, token], ...], "batch": 0}`:
  opens the streams (all at once when batch is 0) and waits for each snapshot;
- `{"cmd": "send", "users": [id, ...], "interval_s": 0.2, "duration_s": 5}`:
  those streams send a location update every interval (recorded_at = now),
  answered when done (`"background": true`: answered at once, so that
  `stats` can be asked meanwhile);
- `{"cmd": "stats", "reset": true}`: friend updates received, messages,
  latency percentiles (e2e: from a friend's send in this process; pub: from
  the event's fix time), errors;
- `{"cmd": "close"}`: ends every stream and exits.

Load generators only ever target 127.0.0.1 and run for bounded times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from nearby.v1 import geo_pb2, nearby_service_pb2, nearby_service_pb2_grpc

pb = nearby_service_pb2
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    s = sorted(samples)

    def pick(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))], 2)

    return {"n": len(s), "p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": s[-1]}


def location(lat: float, lng: float) -> pb.ConnectRequest:
    ts = Timestamp()
    ts.FromMilliseconds(int(time.time() * 1000))
    return pb.ConnectRequest(
        location=pb.LocationUpdate(
            position=geo_pb2.LatLng(latitude=lat, longitude=lng), recorded_at=ts
        )
    )


class Load:
    def __init__(self, target: str, per_channel: int) -> None:
        self.target = target
        self.per_channel = per_channel
        self.channels: list[grpc.aio.Channel] = []
        self.calls: dict[str, Any] = {}
        self.pos: dict[str, tuple[float, float]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.senders: set[str] = set()
        self.reset()
        self.errors: Counter[str] = Counter()
        self.samples: list[str] = []
        self.retried = 0
        self.ended = 0

    def reset(self) -> None:
        self.updates = 0
        self.gone = 0
        self.messages = 0
        self.e2e: list[float] = []
        self.pub: list[float] = []
        self.pub_seen = 0
        self.since = time.monotonic()

    def _stub(self, i: int) -> nearby_service_pb2_grpc.NearbyServiceStub:
        ch = i // self.per_channel
        while len(self.channels) <= ch:
            self.channels.append(grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS))
        return nearby_service_pb2_grpc.NearbyServiceStub(self.channels[ch])

    async def _open(
        self, i: int, uid: str, lat: float, lng: float, token: str, retries: int
    ) -> Any:
        """Open the stream and wait for its snapshot; UNAVAILABLE before the
        snapshot is retried `retries` times with jittered backoff (as the SDK does)."""
        # straight to the fan-out: the headers Envoy would set, a 1-hour token's
        # exp included (so the stream's expiry timers are armed, as in production)
        md = (
            (("authorization", f"Bearer {token}"),)
            if token
            else (("x-nearby-user-id", uid), ("x-nearby-token-exp", str(int(time.time()) + 3600)))
        )
        for attempt in range(retries + 1):
            # grpc.aio: no request iterator = write()/read() on the call
            call: Any = self._stub(i).Connect(metadata=md)  # type: ignore[call-arg]
            self.calls[uid] = call
            try:
                await call.write(location(lat, lng))
                first = await call.read()
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == retries:
                    raise
                self.retried += 1
                await asyncio.sleep(random.uniform(0, 0.5 * 2**attempt))
                continue
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "snapshot":
                raise RuntimeError("no snapshot")
            return call
        raise RuntimeError("unreachable")

    async def _stream(
        self,
        i: int,
        uid: str,
        lat: float,
        lng: float,
        token: str,
        ready: asyncio.Future[bool],
        retries: int = 0,
    ) -> None:
        try:
            call = await self._open(i, uid, lat, lng, token, retries)
            ready.set_result(True)
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                self._count(msg)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.errors[exc.code().name] += 1
                if len(self.samples) < 5:
                    self.samples.append(f"{exc.code().name}: {exc.details()}")
        except Exception as exc:
            self.errors[type(exc).__name__] += 1
        finally:
            self.ended += 1
            if not ready.done():
                ready.set_result(False)

    def _count(self, msg: pb.ConnectResponse) -> None:
        self.messages += 1
        if msg.WhichOneof("kind") != "events":
            return
        now_ms = time.time() * 1000
        for ev in msg.events.events:
            if ev.WhichOneof("kind") == "friend_update":
                self.updates += 1
                f = ev.friend_update.friend
                ms = f.update_time.seconds * 1000 + f.update_time.nanos / 1e6
                if f.user_id in self.senders:
                    self.e2e.append(now_ms - ms)
                else:  # reservoir sample: every update equally likely to be kept
                    self.pub_seen += 1
                    if len(self.pub) < 100_000:
                        self.pub.append(now_ms - ms)
                    else:
                        j = random.randrange(self.pub_seen)
                        if j < 100_000:
                            self.pub[j] = now_ms - ms
            else:
                self.gone += 1

    async def connect(self, users: list[list[Any]], batch: int, retries: int = 0) -> dict[str, Any]:
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[bool]] = []
        base = len(self.tasks)
        step = batch or len(users)
        for start in range(0, len(users), step):
            chunk = []
            for j, (uid, lat, lng, token) in enumerate(users[start : start + step]):
                fut: asyncio.Future[bool] = loop.create_future()
                self.pos[uid] = (lat, lng)
                self.tasks.append(
                    asyncio.create_task(
                        self._stream(base + start + j, uid, lat, lng, token, fut, retries)
                    )
                )
                chunk.append(fut)
            futures.extend(chunk)
            if batch:
                await asyncio.gather(*chunk)
        results = await asyncio.gather(*futures)
        return {
            "connected": sum(results),
            "failed": len(results) - sum(results),
            "seconds": round(time.monotonic() - t0, 3),
            "errors": dict(self.errors),
            "error_samples": self.samples,
            "retried": self.retried,
        }

    async def send(self, users: list[str], interval_s: float, duration_s: float) -> dict[str, Any]:
        self.senders.update(users)
        sent = 0
        deadline = time.monotonic() + duration_s

        async def one(uid: str) -> None:
            nonlocal sent
            call = self.calls.get(uid)
            if call is None:
                return
            await asyncio.sleep(random.random() * interval_s)
            while time.monotonic() < deadline:
                lat, lng = self.pos[uid]
                lat += random.uniform(-1e-4, 1e-4)
                lng += random.uniform(-1e-4, 1e-4)
                self.pos[uid] = (lat, lng)
                try:
                    await call.write(location(lat, lng))
                except Exception:
                    self.errors["write"] += 1
                    return
                sent += 1
                await asyncio.sleep(interval_s)

        await asyncio.gather(*(one(u) for u in users))
        return {"sent": sent}

    def stats(self, reset: bool) -> dict[str, Any]:
        out = {
            "updates": self.updates,
            "gone": self.gone,
            "messages": self.messages,
            "seconds": round(time.monotonic() - self.since, 3),
            "e2e_ms": percentiles(self.e2e),
            "pub_ms": percentiles(self.pub),
            "errors": dict(self.errors),
            "ended": self.ended,
        }
        if reset:
            self.reset()
        return out

    async def close(self) -> None:
        for call in self.calls.values():
            call.cancel()
        for t in self.tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self.tasks, return_exceptions=True)
        for ch in self.channels:
            await ch.close()


async def serve(target: str, per_channel: int) -> None:
    load = Load(target, per_channel)
    background: set[asyncio.Task[dict[str, Any]]] = set()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "connect":
            out = await load.connect(
                req["users"], int(req.get("batch", 0)), int(req.get("retries", 0))
            )
        elif cmd == "send" and req.get("background"):
            task = asyncio.create_task(
                load.send(req["users"], req["interval_s"], req["duration_s"])
            )
            background.add(task)
            task.add_done_callback(background.discard)
            out = {"started": len(req["users"])}
        elif cmd == "send":
            out = await load.send(req["users"], req["interval_s"], req["duration_s"])
        elif cmd == "stats":
            out = load.stats(bool(req.get("reset")))
        elif cmd == "close":
            await load.close()
            print(json.dumps({"closed": True}), flush=True)
            return
        else:
            out = {"error": f"unknown command {cmd}"}
        print(json.dumps(out), flush=True)
    await load.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--per-channel", type=int, default=500)
    args = parser.parse_args()
    if not args.target.startswith("127.0.0.1:"):
        raise SystemExit("load generators only target 127.0.0.1")
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.target, args.per_channel))


if __name__ == "__main__":
    main()
