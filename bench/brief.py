"""Scenario 1b: the fan-out at the brief's shape, at several flush windows.

Each of N streams has F nearby friends (F = 40 by default: 400 friends, 10%
nearby and active) and each friend reports every P seconds (P = 30, the real
cadence), so a stream receives F / P ≈ 1.3 updates per second; the load on
the process grows with N, never with the cadence. With 10M users spread over
many fan-out processes a user's nearby friends almost always sit on other
processes, so each friend's channel has ONE subscriber here (`share`): every
delivered update costs the process one pub/sub message, as it would at scale.
Friends' moves are published straight into Redis in the location service's
payload, each friend every P seconds at its own phase; each stream also
reports its own location every P seconds on its stream (the ingest a fan-out
process carries at the brief's rates, through location_svc).

For each flush window (FANOUT_FLUSH_MS: the default, then larger ones up to
1 s) a fresh fan-out process is started, the N streams connect, and after a
warm-up the window measures delivered updates per fan-out CPU-second,
updates per stream message and the latency from the friend's publish to the
client reading it (p50/p99). The ceiling, in the same run: the bare grpc.aio
server (bench/bare.py) pushing the same number of one-update messages per
second to the same number of streams, paced the same way; its latency is the
floor of a push on this machine at this load.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Mapping
from typing import Any

from bench import ceilings, graph, privacy
from bench.config import Config
from bench.fanout import Publisher, traced_share
from bench.harness import Harness, LoadClient, Mesh, measured, metric
from bench.procstat import CpuMeter, Proc, busy_share, system_ticks
from bench.stats import median_of

TICK_S = 0.01


class Cadence:
    """Every mover published once per `period_s`, each at its own phase."""

    def __init__(self, pub: Publisher, period_s: float, seed: int = 5) -> None:
        self.pub = pub
        self.period_s = period_s
        self.order = list(pub.movers)
        random.Random(seed).shuffle(self.order)
        self.done = 0
        self.t0 = 0.0

    async def run(self, seconds: float) -> int:
        """Publish at cadence for `seconds` (10 ms ticks); returns publishes."""
        order, n = self.order, len(self.order)
        if not self.t0:
            self.t0 = time.monotonic()
        start = self.done
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.monotonic()
            due = int((t - self.t0) * n / self.period_s)
            if due > self.done:
                await self.pub.publish([order[i % n] for i in range(self.done, due)])
                self.done = due
            await asyncio.sleep(max(0.0, TICK_S - (time.monotonic() - t)))
        return self.done - start


async def steady(load: LoadClient, cfg: Config) -> float:
    """Warm up for brief_warmup_s, then on (up to 3x that) until one second's
    deliveries are within 10% of the rate owed: no connect-time backlog left."""
    t0 = time.monotonic()
    await asyncio.sleep(cfg.brief_warmup_s)
    rate = rate_per_s(cfg)
    last = (await load.call(cmd="stats"))["updates"]
    while time.monotonic() - t0 < 3 * cfg.brief_warmup_s:
        await asyncio.sleep(1.0)
        now = (await load.call(cmd="stats"))["updates"]
        if abs(now - last - rate) <= 0.1 * rate:
            break
        last = now
    return time.monotonic() - t0


def rate_per_s(cfg: Config) -> float:
    """Friend updates owed per second to all streams."""
    return cfg.brief_streams * cfg.brief_friends / cfg.brief_period_s


async def hub_messages(child: Any) -> float:
    return await asyncio.to_thread(metric, child, "nearby_fanout_hub_messages_total")


def result(
    st: dict[str, Any], cpu: dict[str, float], seconds: float, expected: float, cpu_key: str
) -> dict[str, Any]:
    """The figures of one measured window (nearby or bare)."""
    updates, messages = st["updates"], st["messages"]
    used = cpu[cpu_key]
    return {
        "seconds": round(seconds, 3),
        "delivered": updates,
        "delivered_share": updates / expected if expected else 0.0,
        "messages": messages,
        "updates_per_message": updates / messages if messages else 0.0,
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "process_busy": used / seconds if seconds else 0.0,
        "updates_per_cpu_s": updates / used if used else 0.0,
        "latency_ms": st["pub_ms"],
        "errors": st["errors"],
    }


async def window_once(
    h: Harness,
    cfg: Config,
    mesh: Mesh,
    g: graph.Graph,
    flush_ms: float,
    redis_procs: list[Proc],
    *,
    profile_to: str = "",
    native: bool = False,
) -> dict[str, Any]:
    """One fan-out process at one flush window under the brief's load."""
    n = cfg.brief_streams
    fan = h.add_fanout(mesh, {"FANOUT_FLUSH_MS": str(flush_ms)})
    load: LoadClient | None = None
    pub: Publisher | None = None
    try:
        load = await LoadClient.start(h, fan.addr)
        users = [[g.ids[i], *g.home[i], ""] for i in range(n)]
        conn = await load.call(cmd="connect", users=users, batch=250, retries=5, wait_s=600)
        if conn["failed"]:
            raise RuntimeError(f"{conn['failed']} streams failed to connect: {conn['errors']}")
        pub = Publisher(
            mesh.redis_url,
            g,
            list(range(n, len(g.ids))),
            cluster=cluster_of(mesh),
            traced_share=traced_share(mesh.settings),
        )
        cadence = Cadence(pub, cfg.brief_period_s)
        total = 3 * cfg.brief_warmup_s + cfg.brief_seconds + 1.0  # the longest it can take
        await load.call(
            cmd="send",
            users=g.ids[:n],
            interval_s=cfg.brief_period_s,
            duration_s=total,
            background=True,
        )
        # the cadence runs on through the measured window and past its end, so
        # that the updates in flight at its start and at its end balance out
        publishing = asyncio.create_task(cadence.run(total))
        await steady(load, cfg)
        await load.call(cmd="stats", reset=True)
        hub0 = await hub_messages(fan)
        meter = CpuMeter([measured(fan), *redis_procs, Proc("clients", load.pid)]).start()
        ticks = system_ticks()
        t0 = time.monotonic()
        profiling = None
        if profile_to:
            from bench import profile as prof

            secs = max(1.0, cfg.brief_seconds - 1)
            profiling = asyncio.create_task(
                prof.profile(fan.proc.pid, secs, h.logs / profile_to, native=native)
            )
        await asyncio.sleep(cfg.brief_seconds)
        st = await load.call(cmd="stats")
        cpu = meter.stop()
        seconds = time.monotonic() - t0
        machine_busy = busy_share(ticks)
        hub1 = await hub_messages(fan)
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)
        expected = rate_per_s(cfg) * seconds
        out = result(st, cpu, seconds, expected, fan.name)
        out.update(
            flush_ms=flush_ms,
            streams=n,
            connect_s=conn["seconds"],
            machine_busy_all=machine_busy,
            hub_messages_per_update=(hub1 - hub0) / st["updates"] if st["updates"] else 0.0,
        )
        redis_cpu = sum(v for k, v in cpu.items() if k.startswith("redis"))
        out["redis_cpu_us_per_update"] = redis_cpu / st["updates"] * 1e6 if st["updates"] else 0.0
        if profiling is not None:
            out["profile"] = await profiling
        return out
    finally:
        if pub is not None:
            await pub.close()
        if load is not None:
            await load.close()
        h.stop(fan)
        mesh.children.pop(fan.name, None)


async def mixed_once(
    h: Harness, cfg: Config, mesh: Mesh, g: graph.Graph, flush_ms: float, redis_procs: list[Proc]
) -> dict[str, Any]:
    """window_once with the privacy mix on the movers (bench/privacy.py);
    the mesh is left without any policy afterwards."""
    movers = list(range(cfg.brief_streams, len(g.ids)))
    cluster = cluster_of(mesh)
    mix = await privacy.apply_mix(
        mesh.database_url,
        mesh.redis_url,
        g,
        movers,
        cfg.privacy_approximate,
        cfg.privacy_only,
        cluster=cluster,
    )
    try:
        out = await window_once(h, cfg, mesh, g, flush_ms, redis_procs)
    finally:
        await privacy.clear_mix(mesh.database_url, mesh.redis_url, g, cluster=cluster)
    out["privacy_mix"] = mix
    return out


def cluster_of(mesh: Mesh) -> bool:
    return bool(mesh.settings.redis_cluster)


async def bare_once(h: Harness, cfg: Config) -> dict[str, Any]:
    """The ceiling: bare grpc.aio pushing the same paced load of one-update messages."""
    n = cfg.brief_streams
    total = cfg.brief_warmup_s + cfg.brief_seconds
    child = ceilings.bare_server(h, "--rate", str(rate_per_s(cfg)), "--seconds", str(total + 1))
    load = await LoadClient.start(h, child.addr)
    try:
        users = [[f"u{i:06d}", 48.85, 2.35, ""] for i in range(n)]
        conn = await load.call(cmd="connect", users=users, batch=500, wait_s=600)
        os.kill(child.proc.pid, signal.SIGUSR1)
        await asyncio.sleep(cfg.brief_warmup_s)
        await load.call(cmd="stats", reset=True)
        meter = CpuMeter([measured(child), Proc("clients", load.pid)]).start()
        ticks = system_ticks()
        t0 = time.monotonic()
        await asyncio.sleep(cfg.brief_seconds)
        st = await load.call(cmd="stats")
        cpu = meter.stop()
        seconds = time.monotonic() - t0
        out = result(st, cpu, seconds, rate_per_s(cfg) * seconds, "bare")
        out.update(streams=n, connected=conn["connected"], machine_busy_all=busy_share(ticks))
        return out
    finally:
        await load.close()
        h.stop(child)


async def start_brief_mesh(
    h: Harness, cfg: Config, masters: int = 0, env: Mapping[str, str] | None = None
) -> tuple[Mesh, graph.Graph, list[Proc]]:
    """friend, location and presence services on a fresh Redis (a cluster of
    `masters` masters when > 0) and a database holding the brief's graph;
    `env` changes the services' settings (fan-outs added later inherit it)."""
    if masters:
        url, redis_procs = h.redis_cluster(masters)
    else:
        url, proc = h.redis()
        redis_procs = [proc]
    db = h.database("brief")
    n, f = cfg.brief_streams, cfg.brief_friends
    mesh = h.start_mesh(
        url,
        db,
        services=("friend_svc", "location_svc", "presence_svc"),
        cluster=bool(masters),
        env=env,
    )
    g = graph.fan_in(n, max(1, n * f // cfg.brief_share), f)
    await graph.load(db, g)  # after friend_svc created its tables
    return mesh, g, redis_procs


def paired(runs: list[dict[str, Any]], ceiling: list[dict[str, Any]]) -> dict[str, float]:
    """Median over runs of each figure as a ratio to the bare run it was paired with."""
    import statistics

    def med(f: Any) -> float:
        vals = [f(r, c) for r, c in zip(runs, ceiling, strict=False)]
        vals = [v for v in vals if v is not None]
        return round(statistics.median(vals), 3) if vals else 0.0

    def lat(q: str) -> Any:
        def f(r: dict[str, Any], c: dict[str, Any]) -> float | None:
            a, b = r["latency_ms"].get(q), c["latency_ms"].get(q)
            return a / b if a is not None and b else None

        return f

    return {
        "per_cpu_s": med(
            lambda r, c: (
                r["updates_per_cpu_s"] / c["updates_per_cpu_s"] if c["updates_per_cpu_s"] else None
            )
        ),
        "latency_p50": med(lat("p50")),
        "latency_p99": med(lat("p99")),
    }


async def run(h: Harness, cfg: Config) -> dict[str, Any]:
    windows = cfg.brief_windows
    per_window: dict[float, list[dict[str, Any]]] = {w: [] for w in windows}
    ceiling_runs: list[dict[str, Any]] = []
    mix_runs: list[dict[str, Any]] = []
    for i in range(cfg.long_runs):
        ceiling_runs.append(await bare_once(h, cfg))
        mesh, g, redis_procs = await start_brief_mesh(h, cfg)
        try:
            for w in windows:
                if w == windows[0] and cfg.privacy_compare and i % 2:
                    mix_runs.append(await mixed_once(h, cfg, mesh, g, w, redis_procs))
                per_window[w].append(await window_once(h, cfg, mesh, g, w, redis_procs))
                if w == windows[0] and cfg.privacy_compare and not i % 2:
                    mix_runs.append(await mixed_once(h, cfg, mesh, g, w, redis_procs))
        finally:
            h.stop_mesh(mesh)
            h.stop_redis()
    profiles: dict[str, Any] = {}
    if cfg.profile:  # one more run at the default window, sampled by py-spy (not measured)
        mesh, g, redis_procs = await start_brief_mesh(h, cfg)
        try:
            for native in (False, True):
                name = f"fanout-brief{'-native' if native else ''}.pyspy"
                r = await window_once(
                    h, cfg, mesh, g, windows[0], redis_procs, profile_to=name, native=native
                )
                profiles["native" if native else "python"] = r.get("profile", {})
        finally:
            h.stop_mesh(mesh)
            h.stop_redis()
    levels = []
    for w in windows:
        runs = per_window[w]
        levels.append(
            {
                "flush_ms": w,
                "runs": runs,
                "median": median_of(runs),
                "ratios": paired(runs, ceiling_runs),
            }
        )
    out: dict[str, Any] = {
        "status": "measured",
        "shape": {
            "streams": cfg.brief_streams,
            "friends_per_stream": cfg.brief_friends,
            "period_s": cfg.brief_period_s,
            "subscribers_per_friend": cfg.brief_share,
            "updates_per_s": rate_per_s(cfg),
            "updates_per_stream_per_s": cfg.brief_friends / cfg.brief_period_s,
        },
        "ceiling": {"runs": ceiling_runs, "median": median_of(ceiling_runs)},
        "levels": levels,
        "default_flush_ms": windows[0],
        **({"profiles": profiles} if profiles else {}),
    }
    if mix_runs:
        out["privacy"] = privacy.summary(cfg, per_window[windows[0]], mix_runs)
    out["missed_notes"] = notes(levels[0], out["ceiling"]["median"], profiles)
    return out


def notes(default: dict[str, Any], bare: dict[str, Any], profiles: dict[str, Any]) -> list[str]:
    from bench import profile as prof

    found: list[str] = []
    ratio = default["ratios"].get("per_cpu_s", 0.0)
    m = default["median"]
    if ratio < 0.9:
        found.append(
            f"At the brief's shape and the default window ({default['flush_ms']:g} ms) the "
            f"fan-out delivered {m['updates_per_cpu_s']:,.0f} updates per CPU-second with "
            f"{m['updates_per_message']:.2f} updates per message, {ratio:.2f}x the bare "
            f"grpc.aio server's {bare['updates_per_cpu_s']:,.0f} at the same load (bar 0.9x). "
            "What the process does besides the gRPC write: the py-spy lines below "
            "(`make bench ARGS=--profile`)."
        )
    what = {
        "python": "Python frames, idle threads not sampled",
        "native": "native frames too; the process is paused per sample, so idle threads "
        "(blocked in poll) are sampled as well",
    }
    for kind, p in profiles.items():
        line = prof.describe(f"the fan-out at the brief's shape ({what.get(kind, kind)})", p)
        if line:
            found.append(line)
    return found
