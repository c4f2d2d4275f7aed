"""Ceilings: what the machine does with no application logic, measured in the
same run as the scenarios, so each scenario's figure is also a ratio.

(a) bare grpc.aio server pushing one-update messages to N streams
    (messages per server CPU-second);
(b) bare grpc.aio server holding N idle bidi streams behind Envoy (storm time,
    RSS per stream: bench/streams.py);
(c) raw Redis pipelined writes: per update the same commands the mesh issues
    (HSET + PEXPIRE of the cache, PUBLISH, ZADD presence, XADD history);
(d) bare binary COPY of history rows into the same location_history table.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import time
from typing import Any

import psycopg
import redis.asyncio as aioredis

from bench.harness import Harness, LoadClient, measured
from bench.procstat import CpuMeter, Proc, cpu_seconds
from mesh import keys
from mesh.internal.v1 import events_pb2
from stack import infra
from stack.procs import Child


def bare_server(h: Harness, *args: str) -> Child:
    """The bare grpc.aio server (bench/bare.py) on a free port, healthy."""
    port = infra.free_port()
    return h.spawn(
        "bare",
        "bench.bare",
        ["--port", str(port), *args],
        health_service="nearby.v1.NearbyService",
        port=port,
    )


async def paced_rounds(
    load: LoadClient,
    trigger: Any,
    rounds: int,
    per_round: int,
    *,
    in_flight: float = 1.5,
    stall_s: float = 2.0,
) -> tuple[int, float]:
    """Fire `rounds` rounds of `per_round` expected deliveries, keeping at most
    `in_flight` rounds undelivered; returns (delivered, seconds). `trigger()`
    starts one round (may be a coroutine function)."""
    t0 = time.monotonic()
    delivered = 0
    for r in range(rounds):
        res = trigger()
        if asyncio.iscoroutine(res):
            await res
        # wait until the backlog is below `in_flight` rounds (or it stalls)
        last, since = -1, time.monotonic()
        while True:
            delivered = (await load.call(cmd="stats"))["updates"]
            if delivered >= (r + 1 - in_flight) * per_round or r == rounds - 1:
                break
            if delivered != last:
                last, since = delivered, time.monotonic()
            elif time.monotonic() - since > stall_s:
                break
            await asyncio.sleep(0.005)
    # drain: until everything expected arrived or nothing moved for stall_s
    last, since = -1, time.monotonic()
    t_last = time.monotonic()
    while delivered < rounds * per_round:
        delivered = (await load.call(cmd="stats"))["updates"]
        now = time.monotonic()
        if delivered != last:
            last, since, t_last = delivered, now, now
        elif now - since > stall_s:
            break
        await asyncio.sleep(0.005)
    else:
        t_last = time.monotonic()
    return delivered, t_last - t0


async def bare_push(h: Harness, streams: int, per_stream: int, rounds: int) -> dict[str, Any]:
    """(a): messages per server CPU-second, one friend update per message."""
    child = bare_server(h, "--per-stream", str(per_stream))
    load = await LoadClient.start(h, child.addr)
    try:
        users = [[f"u{i:06d}", 48.85, 2.35, ""] for i in range(streams)]
        conn = await load.call(cmd="connect", users=users, batch=500)
        await load.call(cmd="stats", reset=True)
        meter = CpuMeter([measured(child)]).start()
        delivered, seconds = await paced_rounds(
            load, lambda: os.kill(child.proc.pid, signal.SIGUSR1), rounds, streams * per_stream
        )
        cpu = meter.stop()["bare"]
        return {
            "streams": streams,
            "connected": conn["connected"],
            "messages": delivered,
            "expected": rounds * streams * per_stream,
            "seconds": round(seconds, 3),
            "server_cpu_s": round(cpu, 3),
            "msgs_per_s": delivered / seconds if seconds else 0.0,
            "msgs_per_cpu_s": delivered / cpu if cpu else 0.0,
        }
    finally:
        await load.close()
        h.stop(child)


def fix_bytes(lat: float, lng: float, ms: int) -> bytes:
    return events_pb2.PositionFix(
        latitude=lat, longitude=lng, recorded_at_ms=ms
    ).SerializeToString()


async def redis_writes(
    h: Harness, updates: int, pipeline: int = 500, writers: int = 4, users: int = 10_000
) -> dict[str, Any]:
    """(c): updates per Redis CPU-second, each update being the mesh's writes."""
    url, redis_proc = h.redis()
    r = aioredis.Redis.from_url(url, max_connections=writers + 2)
    try:
        me = Proc("writer", os.getpid())
        per_writer = updates // writers

        async def writer(w: int) -> None:
            rnd = random.Random(w)
            done = 0
            while done < per_writer:
                pipe = r.pipeline(transaction=False)
                now = int(time.time() * 1000)
                for _ in range(min(pipeline, per_writer - done)):
                    uid = f"u{rnd.randrange(users):06d}"
                    v = fix_bytes(48.85 + rnd.random() / 100, 2.35 + rnd.random() / 100, now)
                    event = events_pb2.LocationEvent(
                        user_id=uid,
                        moved=events_pb2.PositionFix(latitude=48.85, longitude=2.35),
                        published_at_ms=now,
                    ).SerializeToString()
                    k = keys.location(uid)
                    pipe.hset(k, mapping={"v": v, "t": now, "a": now, "p": now})
                    pipe.pexpire(k, 600_000)
                    pipe.publish(keys.location_channel(uid), event)
                    pipe.zadd(keys.presence_index_of(uid), {uid: now})
                    pipe.xadd(keys.history_stream_of(uid), {"r": v})
                    done += 1
                await pipe.execute()

        meter = CpuMeter([redis_proc, me]).start()
        t0 = time.monotonic()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        seconds = time.monotonic() - t0
        used = meter.stop()
        total = per_writer * writers
        return {
            "updates": total,
            "pipeline": pipeline,
            "commands_per_update": 5,
            "seconds": round(seconds, 3),
            "redis_cpu_s": round(used["redis"], 3),
            "writer_cpu_s": round(used["writer"], 3),
            "updates_per_s": total / seconds,
            "updates_per_redis_cpu_s": total / used["redis"] if used["redis"] else 0.0,
            "updates_per_cpu_s": total / meter.total if meter.total else 0.0,
        }
    finally:
        await r.aclose()
        h.stop_redis()


def history_rows(n: int, users: int = 10_000, seed: int = 7) -> list[tuple[str, int, float, float]]:
    """`n` distinct (user_id, recorded_at_ms, lat, lng) rows of today."""
    rnd = random.Random(seed)
    base = int(time.time() * 1000) - 3_600_000
    return [
        (
            f"u{i % users:06d}",
            base + (i // users) * 1000 + rnd.randrange(1000),
            48.85 + rnd.random() / 10,
            2.35 + rnd.random() / 10,
        )
        for i in range(n)
    ]


async def prepare_history_db(url: str) -> None:
    """location_svc's own schema and today's partitions, as in production."""
    from location_svc import store
    from mesh.db import migrate, open_pool

    pool = await open_pool(url)
    try:
        await migrate(pool, "location_svc", "location_svc")
        await store.maintain(pool, dt.datetime.now(dt.UTC).date(), 1, 30)
    finally:
        await pool.close()


async def bare_copy(h: Harness, rows: int, batch: int = 5000) -> dict[str, Any]:
    """(d): binary COPY of the same rows into location_history, batch by batch
    (one transaction per batch, like the writer), rows/s."""
    from location_svc import store

    url = h.database("copy")
    await prepare_history_db(url)
    encoded = [store.encode_row(*row) for row in history_rows(rows)]
    pg = h.postgres_proc()
    conn = await psycopg.AsyncConnection.connect(url)
    try:
        meter = CpuMeter([pg]).start()
        t0 = time.monotonic()
        for i in range(0, len(encoded), batch):
            async with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(
                    "COPY location_history (user_id, recorded_at, latitude, longitude) "
                    "FROM STDIN (FORMAT BINARY)"
                ) as cp,
            ):
                await cp.write(store.copy_payload(encoded[i : i + batch]))
        seconds = time.monotonic() - t0
        used = meter.stop()
        cur2 = await conn.execute("SELECT count(*) FROM location_history")
        row = await cur2.fetchone()
        return {
            "rows": row[0] if row else 0,
            "batch": batch,
            "seconds": round(seconds, 3),
            "postgres_cpu_s": round(used["postgres"], 3),
            "rows_per_s": rows / seconds,
        }
    finally:
        await conn.close()


def self_cpu() -> float:
    return cpu_seconds(os.getpid())


async def redis_pubsub(
    h: Harness, publishes: int, subscribers: int, channels: int = 1000
) -> dict[str, Any]:
    """Redis CPU per published and per delivered message.

    `subscribers` redis-cli processes each SUBSCRIBE to the same `channels`
    channels (`loc:{...}` names); redis-benchmark publishes ~60-byte payloads
    to random ones, pipelined (both C clients, so Redis is the bottleneck).
    CPU is Redis's own, until every subscriber's output buffer is drained.
    """
    from stack import infra as _infra

    url, redis_proc = h.redis("client-output-buffer-limit", "pubsub 0 0 0")
    port = url.rsplit(":", 1)[1].split("/")[0]
    names = [f"loc:{{{i:012d}}}" for i in range(channels)]
    cli = _infra.find_binary("redis-cli")
    subs = [
        await asyncio.create_subprocess_exec(
            cli,
            "-p",
            port,
            "SUBSCRIBE",
            *names,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(subscribers)
    ]
    r = aioredis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 30
        while True:
            counts = await r.pubsub_numsub(names[0], names[-1])
            if all(n >= subscribers for _, n in counts):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("redis-cli subscribers did not subscribe")
            await asyncio.sleep(0.05)
        meter = CpuMeter([redis_proc]).start()
        t0 = time.monotonic()
        bench = await asyncio.create_subprocess_exec(
            _infra.find_binary("redis-benchmark"),
            "-p",
            port,
            "-n",
            str(publishes),
            "-P",
            "50",
            "-c",
            "4",
            "-r",
            str(channels),
            "-q",
            "PUBLISH",
            "loc:{__rand_int__}",
            "x" * 60,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await bench.wait()
        while True:  # until every subscriber got everything
            clients = await r.client_list(_type="pubsub")
            if all(int(c.get("omem", 0)) == 0 for c in clients):
                break
            await asyncio.sleep(0.02)
        seconds = time.monotonic() - t0
        cpu = meter.stop()["redis"]
        deliveries = publishes * subscribers
        return {
            "publishes": publishes,
            "subscribers": subscribers,
            "seconds": round(seconds, 3),
            "redis_cpu_s": round(cpu, 3),
            "msgs_per_cpu_s": (publishes + deliveries) / cpu if cpu else 0.0,
            "publishes_per_cpu_s": publishes / cpu if cpu else 0.0,
        }
    finally:
        await r.aclose()
        for p in subs:
            if p.returncode is None:
                p.terminate()
                await p.wait()
        h.stop_redis()
