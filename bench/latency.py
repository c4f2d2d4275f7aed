"""Scenario 2: end-to-end latency through Envoy at 25/50/75% of the maximum.

Like `nearby run`, it starts one fan-out replica per core behind Envoy (the
load levels are shares of the ONE-process maximum of scenario 1, so each
replica carries about half of it on 2 cores).

The fan-in graph of scenario 1 (every client has F mover friends), plus probe
users: P connected users each befriended by K other connected users. All
clients connect through Envoy with JWTs. For each load level, a paced
publisher keeps the fan-out delivering `level%` of scenario 1's maximum
(moves of the movers, spread evenly in 10 ms ticks), while each probe sends a
real location update on its stream every few hundred ms. The latency of a
sample is the time from the probe's fix (set by the sending client, ms
precision) to the moment a friend's client reads the update: client → Envoy →
fan-out → location_svc → Redis → fan-out → Envoy → client.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

from bench import graph
from bench.config import Config
from bench.fanout import Publisher, traced_share
from bench.harness import Harness, LoadClient, measured
from bench.procstat import CpuMeter, Proc, busy_share, system_ticks
from bench.stats import median_of, not_measured

PROBE_FRIENDS = 5


async def paced(pub: Publisher, per_s: float, seconds: float) -> int:
    """Publish `per_s` mover moves per second for `seconds`, in 10 ms ticks."""
    tick = 0.01
    owed = 0.0
    sent = 0
    i = 0
    t_end = time.monotonic() + seconds
    movers = pub.movers
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        owed += per_s * tick
        k = int(owed)
        owed -= k
        if k:
            await pub.publish([movers[(i + j) % len(movers)] for j in range(k)])
            i += k
            sent += k
        await asyncio.sleep(max(0.0, tick - (time.monotonic() - t0)))
    return sent


async def latency_once(h: Harness, cfg: Config, max_per_s: float) -> list[dict[str, Any]]:
    redis_url, redis_proc = h.redis()
    db = h.database("latency")
    replicas = cfg.latency_fanout_replicas or (os.cpu_count() or 1)
    mesh = h.start_mesh(redis_url, db, fanout_replicas=replicas)
    load: LoadClient | None = None
    pub: Publisher | None = None
    try:
        n = cfg.fanout_streams
        g = graph.fan_in(n, cfg.fanout_movers, cfg.fanout_friends)
        probes = list(range(cfg.latency_probes))
        for p in probes:
            for k in range(1, PROBE_FRIENDS + 1):
                g.add(p, (p + k * 97) % n)
        await graph.load(db, g)
        envoy = h.start_envoy(mesh)
        users = [[g.ids[i], *g.home[i], h.token(g.ids[i])] for i in range(n)]
        load = await LoadClient.start(h, f"127.0.0.1:{mesh.envoy_port}")
        conn = await load.call(cmd="connect", users=users, batch=250, retries=5)
        if conn["failed"]:
            raise RuntimeError(f"{conn['failed']} streams failed: {conn.get('error_samples')}")
        pub = Publisher(
            redis_url,
            g,
            list(range(n, n + cfg.fanout_movers)),
            traced_share=traced_share(mesh.settings),
        )
        await pub.round()  # everyone's movers enter their lists
        await asyncio.sleep(1.0)
        subscribers = n * cfg.fanout_friends / cfg.fanout_movers
        procs = [
            Proc("envoy", envoy.proc.pid),
            *(measured(c) for c in mesh.fanouts),
            measured(mesh.children["location"]),
            redis_proc,
            Proc("clients", load.pid),
            Proc("publisher", os.getpid()),
        ]
        levels = []
        for percent in cfg.latency_levels:
            target = max_per_s * percent / 100
            await load.call(cmd="stats", reset=True)
            meter = CpuMeter(procs).start()
            ticks = system_ticks()
            t0 = time.monotonic()
            probe_task = asyncio.create_task(
                load.call(
                    cmd="send",
                    users=[g.ids[p] for p in probes],
                    interval_s=cfg.latency_probe_interval_s,
                    duration_s=cfg.latency_seconds,
                )
            )
            await paced(pub, target / subscribers, cfg.latency_seconds)
            sent = await probe_task
            await asyncio.sleep(0.3)
            seconds = time.monotonic() - t0
            used = meter.stop()
            fan_cpu = sum(v for k, v in used.items() if k.startswith("fanout-"))
            st = await load.call(cmd="stats", reset=True)
            relayed = st["updates"] + sent["sent"]
            levels.append(
                {
                    "percent": percent,
                    "offered_per_s": target,
                    "delivered_per_s": st["updates"] / seconds,
                    "messages_per_s": st["messages"] / seconds,
                    "e2e_ms": st["e2e_ms"],
                    "pub_ms": st["pub_ms"],
                    "probe_updates_sent": sent["sent"],
                    "fanout_replicas": replicas,
                    "cpu_s": {k: round(v, 3) for k, v in used.items()},
                    "fanout_cpu_s": round(fan_cpu, 3),
                    "envoy_msgs_per_cpu_s": relayed / used["envoy"] if used["envoy"] else 0.0,
                    "fanout_updates_per_cpu_s": (st["updates"] / fan_cpu if fan_cpu else 0.0),
                    # share of the machine's cores busy with the measured processes
                    "machine_busy": meter.total / (seconds * (os.cpu_count() or 1)),
                    # the same for everything running on the machine (/proc/stat)
                    "machine_busy_all": busy_share(ticks),
                    "errors": st["errors"],
                }
            )
        return levels
    finally:
        if pub is not None:
            await pub.close()
        if load is not None:
            await load.close()
        h.stop_mesh(mesh)
        h.stop_redis()


async def run(h: Harness, cfg: Config) -> dict[str, Any]:
    fan = cfg.results.get("scenarios", {}).get("fanout", {})
    if fan.get("status") != "measured":
        return not_measured("needs the maximum throughput of scenario 1, which did not run")
    max_per_s = float(fan["median"]["updates_per_s"])
    runs = [await latency_once(h, cfg, max_per_s) for _ in range(cfg.runs)]
    levels = [median_of([r[i] for r in runs]) for i in range(len(cfg.latency_levels))]
    envoy = statistics.median(lv["envoy_msgs_per_cpu_s"] for r in runs for lv in r)
    out: dict[str, Any] = {
        "status": "measured",
        "max_per_s_from_fanout": max_per_s,
        "runs": runs,
        "levels": levels,
        "median": {"envoy_msgs_per_cpu_s": envoy},
    }
    notes = []
    fan_max = float(fan["median"]["updates_per_cpu_s"])
    for lv in levels:
        if lv["percent"] != 50:
            continue
        p50, p99 = lv["e2e_ms"].get("p50"), lv["e2e_ms"].get("p99")
        busy, busy_all = lv["machine_busy"], lv["machine_busy_all"]
        pub99 = lv["pub_ms"].get("p99", 0.0)
        why = (
            f"the measured processes kept {busy:.0%} of the machine's cores busy "
            f"({lv['fanout_replicas']} fan-out replicas {lv['fanout_cpu_s']:.1f}, clients {lv['cpu_s']['clients']:.1f}, Envoy "
            f"{lv['cpu_s']['envoy']:.1f}, publisher {lv['cpu_s']['publisher']:.1f} CPU-s) and "
            f"the whole machine was {busy_all:.0%} busy; the fan-out delivered "
            f"{lv['fanout_updates_per_cpu_s']:,.0f} updates per CPU-second against "
            f"{fan_max:,.0f} in scenario 1's rounds (a smooth arrival packs fewer updates per "
            f"stream message, so each costs more). The tail is mostly after Redis: moves "
            f"published straight to Redis reached the clients with p99 {pub99:.0f} ms, so the "
            "wait is in the fan-out event loops (hub, flushes of the streams, the "
            "probes' reports) and on the way back through Envoy to the clients, which share "
            "the same 2 cores"
        )
        if p99 is not None and p99 > 50:
            notes.append(
                f"Latency p99 {p99:.1f} ms at 50% load (bar 50 ms, over by {p99 / 50 - 1:.0%}): "
                f"{why}. What would close it: clients and Envoy off the fan-out's cores (here "
                "everything shares 2), each replica at a lower share of its maximum (the chart "
                "shows the knee), and the fan-out's nearby_fanout_push_latency_seconds "
                "histogram with py-spy to split hub time from flush time."
            )
        if p50 is not None and p50 > 10:
            notes.append(
                f"Latency p50 {p50:.1f} ms at 50% load (bar 10 ms, over by {p50 / 10 - 1:.0%}); "
                "the lightest level shows the floor of the path (client → Envoy → fan-out → "
                "location_svc → Redis → fan-out → Envoy → client, two flush windows of "
                "FANOUT_FLUSH_MS plus the fan-out's report batching)."
            )
    if notes:
        out["missed_notes"] = notes
    return out
