"""Scenario 3: idle streams held by one fan-out process, and a connect storm.

N clients open their Connect streams all at once through Envoy (a storm: no
batching, no pacing; a stream counts as connected when its snapshot arrived),
then stay idle. Resident memory of the fan-out process is read before and
after; each user has a few friends (their channels are subscribed, as in
production). The ceiling: a bare grpc.aio server holding the same number of
idle bidi streams, opened the same way (directly: it has no Envoy in front).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench import ceilings, graph
from bench.config import Config
from bench.harness import Harness, LoadClient
from bench.procstat import rss_bytes
from bench.stats import scenario

FRIENDS_PER_USER = 10.0


async def streams_once(h: Harness, cfg: Config) -> dict[str, Any]:
    n = cfg.idle_streams
    redis_url, _ = h.redis()
    db = h.database("streams")
    mesh = h.start_mesh(redis_url, db, fanout_replicas=1)
    load: LoadClient | None = None
    try:
        g = graph.clustered(n, FRIENDS_PER_USER, seed=21, prefix="s")
        await graph.load(db, g)
        envoy = h.start_envoy(mesh)
        fan = mesh.children["fanout-0"]
        users = [
            [uid, lat, lng, h.token(uid)] for uid, (lat, lng) in zip(g.ids, g.home, strict=True)
        ]
        load = await LoadClient.start(h, f"127.0.0.1:{mesh.envoy_port}")
        await asyncio.sleep(1.0)
        rss0, envoy0 = rss_bytes(fan.proc.pid), rss_bytes(envoy.proc.pid)
        conn = await load.call(cmd="connect", users=users, batch=0, wait_s=600)
        await asyncio.sleep(2.0)
        rss1, envoy1 = rss_bytes(fan.proc.pid), rss_bytes(envoy.proc.pid)
        st = await load.call(cmd="stats")
        ok = max(1, conn["connected"])
        return {
            "streams": n,
            "connected": conn["connected"],
            "failed": conn["failed"],
            "errors": conn["errors"],
            "error_samples": conn.get("error_samples", []),
            "ended_after": st["ended"],
            "storm_s": conn["seconds"],
            "rss_before_mb": round(rss0 / 2**20, 1),
            "rss_after_mb": round(rss1 / 2**20, 1),
            "rss_per_stream_kib": round((rss1 - rss0) / ok / 1024, 2),
            "envoy_rss_per_stream_kib": round((envoy1 - envoy0) / ok / 1024, 2),
        }
    finally:
        if load is not None:
            await load.close()
        h.stop_mesh(mesh)
        h.stop_redis()


async def run(h: Harness, cfg: Config) -> dict[str, Any]:
    runs, ceiling_runs = [], []
    for _ in range(cfg.runs):
        ceiling_runs.append(await ceilings.bare_idle(h, cfg.idle_streams))
        runs.append(await streams_once(h, cfg))
    out = scenario(
        runs,
        ceiling_runs,
        {
            "streams": ("connected", "connected"),
            "rss": ("rss_per_stream_kib", "rss_per_stream_kib"),
        },
        friends_per_user=FRIENDS_PER_USER,
        worst={"failed": max(r["failed"] for r in runs)},
    )
    med = out["median"]
    notes = []
    if med["rss_per_stream_kib"] > 40:
        notes.append(
            f"RSS per stream {med['rss_per_stream_kib']:.1f} KiB (bar 40 KiB, over by "
            f"{med['rss_per_stream_kib'] / 40 - 1:.0%}); a bare grpc.aio stream costs "
            f"{out['ceiling']['median']['rss_per_stream_kib']:.1f} KiB here. The rest is the "
            "session's state (friend table, queue, tasks): see tracemalloc on the fan-out."
        )
    failed = [r for r in runs if r["failed"]]
    if failed:
        samples = sorted({x for r in failed for x in r["error_samples"]})
        notes.append(
            f"Connect storm of {med['streams']:,} through Envoy: streams failed in "
            f"{len(failed)} of {len(runs)} runs ({', '.join(str(r['failed']) for r in runs)} "
            f"failed per run; median {med['failed']:,}). The fan-out ended them with "
            f"{'; '.join(samples[:3])}: during the storm every connect calls friend_svc "
            "(ListAllFriends) and location_svc (ReportLocations, BatchGetLocations) and some of "
            "those calls exceed the fan-out's deadline. Closing it: a longer deadline or a "
            "bounded queue for connect-time loads in the fan-out, and more friend_svc replicas."
        )
    if notes:
        out["missed_notes"] = notes
    return out
