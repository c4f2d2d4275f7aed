"""Scenario 4: location updates accepted per second and per mesh CPU-second.

Clients hold Connect streams on one fan-out process and stream location
updates on them; the fan-out batches them to location_svc (ReportLocations),
which runs its report script per update in one pipelined round trip. Accepted
updates are location_svc's own counter (location_reports_total{disposition=
"accepted"}); CPU is fan-out + location + presence + Redis over the window
from the first update sent to the last one accepted. The ceiling is raw
pipelined Redis writes of the same commands from a Python client.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import ceilings, graph
from bench import profile as prof
from bench.config import Config
from bench.harness import Harness, LoadClient, measured, metric
from bench.procstat import CpuMeter
from bench.stats import scenario
from mesh import keys


async def accepted(child: Any) -> float:
    return await asyncio.to_thread(metric, child, "location_reports_total", disposition="accepted")


async def ingest_once(
    h: Harness, cfg: Config, profile: bool = False, masters: int = 0
) -> dict[str, Any]:
    """One run; `masters` > 0: on a Redis Cluster of that many masters."""
    if masters:
        redis_url, redis_procs = h.redis_cluster(masters)
    else:
        redis_url, redis_proc = h.redis()
        redis_procs = [redis_proc]
    db = h.database("ingest")
    mesh = h.start_mesh(redis_url, db, fanout_replicas=1, cluster=bool(masters))
    load: LoadClient | None = None
    try:
        g = graph.clustered(cfg.ingest_streams, 0.0, seed=11, prefix="i")
        await graph.load(db, g)
        fan = mesh.children["fanout-0"]
        loc = mesh.children["location"]
        load = await LoadClient.start(h, mesh.addr("fanout-0"))
        users = [[uid, lat, lng, ""] for uid, (lat, lng) in zip(g.ids, g.home, strict=True)]
        conn = await load.call(cmd="connect", users=users, batch=250, retries=5)
        if conn["failed"]:
            raise RuntimeError(f"{conn['failed']} streams failed to connect: {conn['errors']}")
        await asyncio.sleep(1.0)
        a0 = await accepted(loc)
        procs = [measured(fan), measured(loc), measured(mesh.children["presence"]), *redis_procs]
        meter = CpuMeter(procs).start()
        t0 = time.monotonic()
        profiles: list[asyncio.Task[dict[str, Any]]] = []
        if profile:
            secs = max(1.0, cfg.ingest_seconds - 2)
            profiles = [
                asyncio.create_task(
                    prof.profile(c.proc.pid, secs, Path(h.logs) / f"{c.name}.pyspy")
                )
                for c in (fan, loc)
            ]
        sent = await load.call(
            cmd="send",
            users=g.ids,
            interval_s=cfg.ingest_interval_s,
            duration_s=cfg.ingest_seconds,
        )
        if profiles:
            done = await asyncio.gather(*profiles)
            return {"profiles": {"fanout": done[0], "location": done[1]}}
        # drain: until the count stops moving for half a second
        last, t_last = await accepted(loc), time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            now_count = await accepted(loc)
            if now_count != last:
                last, t_last = now_count, time.monotonic()
            elif time.monotonic() - t_last > 0.5:
                break
        used = meter.stop()
        n = last - a0
        seconds = t_last - t0
        mesh_cpu = meter.total
        per_master = {k: v for k, v in used.items() if k.startswith("redis")}
        redis_cpu = sum(per_master.values())
        if masters:
            used = {k: v for k, v in used.items() if k not in per_master}
            used["redis"] = redis_cpu
        r: Any = (aioredis.RedisCluster if masters else aioredis.Redis).from_url(redis_url)
        try:
            sizes = [await r.memory_usage(keys.location(uid)) or 0 for uid in g.ids[:50]]
        finally:
            await r.aclose()
        return {
            "streams": cfg.ingest_streams,
            "connect_retried": conn.get("retried", 0),
            "sent": sent["sent"],
            "accepted": n,
            "seconds": round(seconds, 3),
            "cpu_s": {k: round(v, 3) for k, v in used.items()},
            "redis_cpu_per_master_s": {k: round(v, 3) for k, v in per_master.items()},
            "updates_per_s": n / seconds if seconds else 0.0,
            "updates_per_cpu_s": n / mesh_cpu if mesh_cpu else 0.0,
            "updates_per_redis_cpu_s": n / redis_cpu if redis_cpu else 0.0,
            "redis_bytes_per_user": sum(sizes) / max(1, len(sizes)),
        }
    finally:
        if load is not None:
            await load.close()
        h.stop_mesh(mesh)
        h.stop_redis()


async def run(h: Harness, cfg: Config) -> dict[str, Any]:
    runs, ceiling_runs = [], []
    for _ in range(cfg.runs):
        ceiling_runs.append(await ceilings.redis_writes(h, 100_000 if not cfg.quick else 50_000))
        runs.append(await ingest_once(h, cfg))
    out = scenario(
        runs,
        ceiling_runs,
        {
            "per_s": ("updates_per_s", "updates_per_s"),
            "per_cpu_s": ("updates_per_cpu_s", "updates_per_cpu_s"),
            "per_redis_cpu_s": ("updates_per_redis_cpu_s", "updates_per_redis_cpu_s"),
        },
    )
    med = out["median"]
    ratio = out["ratios"]["per_cpu_s"]
    notes: list[str] = []
    if ratio < 1.2:
        cpu = med["cpu_s"]
        top = max(cpu, key=lambda k: cpu[k])
        notes.append(
            f"Ingest at {med['updates_per_cpu_s']:,.0f} updates per mesh CPU-second, "
            f"{ratio:.2f}x the raw pipelined Redis writes of the same run (bar 1.2x); the "
            f"largest share of CPU is {top} ({cpu[top]:.1f} of {sum(cpu.values()):.1f} CPU-s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
            + "). Where each process spends it: the py-spy lines below (an extra, unmeasured "
            "run; `make bench ARGS=--profile`)."
        )
    if ratio < 1.2 or cfg.profile:
        profiled = await ingest_once(h, cfg, profile=True)
        out["profiles"] = profiled["profiles"]
        for name, p in profiled["profiles"].items():
            line = prof.describe(name, p)
            if line:
                notes.append(line)
    if notes:
        out["missed_notes"] = notes
    return out
