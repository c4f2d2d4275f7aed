"""Scenario 1: friend updates delivered per second and per fan-out CPU-second.

One fan-out process holds N streams (clients connect straight to it, with the
identity header, so Envoy's cost is not in this figure; scenario 2 includes
it). Every stream's user has F "mover" friends, all within the radius. Each
round publishes one `moved` LocationEvent (the location service's payload)
on `loc:{mover}` for every mover, straight into Redis; the fan-out's hub,
distance filter and per-stream batching turn that into N x F friend updates,
which the clients count. Rounds are paced so that at most 1.5 rounds are
undelivered (a closed loop, the same as for the ceiling), which finds the
maximum sustained rate without unbounded queues.

The ceiling: a bare grpc.aio server pushing the same N x F updates per round
to N streams, one update per message (what a server without batching pays).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from bench import ceilings, graph, privacy
from bench.config import Config
from bench.harness import Harness, LoadClient, Mesh, measured
from bench.procstat import CpuMeter
from bench.stats import median_of, scenario
from mesh import keys
from mesh.internal.v1 import events_pb2
from mesh.settings import Settings


def traced_share(settings: Settings) -> float:
    """The share of published events that carry a sampled trace context when the
    services trace with these settings (OTEL_EXPORTER_OTLP_ENDPOINT set), by
    OTEL_TRACES_SAMPLER(_ARG): what location_svc's publish would pass on."""
    if not settings.otlp_endpoint:
        return 0.0
    name = settings.traces_sampler.removeprefix("parentbased_")
    if name in ("always_on", "always_off"):
        return 1.0 if name == "always_on" else 0.0
    return settings.traces_sampler_arg


class Publisher:
    """Publishes moves of mover users straight into Redis, pipelined, in the
    location service's payload (`SPUBLISH` to the slot's owner on a cluster)."""

    def __init__(
        self,
        redis_url: str,
        g: graph.Graph,
        movers: list[int],
        *,
        cluster: bool = False,
        traced_share: float = 0.0,
    ) -> None:
        self.r: Any = (
            aioredis.RedisCluster.from_url(redis_url)
            if cluster
            else aioredis.Redis.from_url(redis_url)
        )
        self.cluster = cluster
        self.g = g
        self.movers = movers
        self.pos = {m: g.home[m] for m in movers}
        self.rnd = random.Random(3)
        self.published = 0
        # the mesh traces: this share of events carries a trace context, as
        # location_svc's publish would set it (see traced_share)
        self.traced_share = traced_share

    async def round(self) -> None:
        """One move of every mover."""
        await self.publish(self.movers)

    async def publish(self, movers: Sequence[int]) -> None:
        now = int(time.time() * 1000)
        pipe = self.r.pipeline(transaction=False)
        verb = pipe.spublish if self.cluster else pipe.publish
        for m in movers:
            lat, lng = self.pos[m]
            lat += self.rnd.uniform(-2e-5, 2e-5)
            lng += self.rnd.uniform(-2e-5, 2e-5)
            self.pos[m] = (lat, lng)
            uid = self.g.ids[m]
            ev = events_pb2.LocationEvent(
                user_id=uid,
                moved=events_pb2.PositionFix(latitude=lat, longitude=lng, recorded_at_ms=now),
                published_at_ms=now,
            )
            if self.traced_share and self.rnd.random() < self.traced_share:
                ev.traceparent = (
                    f"00-{self.rnd.getrandbits(128):032x}-{self.rnd.getrandbits(64):016x}-01"
                )
            verb(keys.location_channel(uid), ev.SerializeToString())
        await pipe.execute()
        self.published += len(movers)

    async def close(self) -> None:
        await self.r.aclose()


async def start_fan_in(
    h: Harness,
    streams: int,
    movers: int,
    friends: int,
    mix: Config | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Mesh, graph.Graph, Any]:
    """The mesh (its services' settings changed by `env`) and the fan-in graph;
    with `mix`, its privacy mix on the movers."""
    redis_url, redis_proc = h.redis()
    db = h.database("fanout")
    mesh = h.start_mesh(redis_url, db, fanout_replicas=1, env=env)
    g = graph.fan_in(streams, movers, friends)
    await graph.load(db, g)
    if mix is not None:
        await privacy.apply_mix(
            db,
            redis_url,
            g,
            list(range(streams, streams + movers)),
            mix.privacy_approximate,
            mix.privacy_only,
        )
    return mesh, g, redis_proc


async def fanout_once(
    h: Harness,
    cfg: Config,
    movers: int,
    friends: int,
    rounds: int,
    *,
    mix: bool = False,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One run: `rounds` paced rounds of every mover moving; `env` changes the
    services' settings (e.g. the OTEL_* variables of scenario 7)."""
    mesh, g, redis_proc = await start_fan_in(
        h, cfg.fanout_streams, movers, friends, cfg if mix else None, env
    )
    load: LoadClient | None = None
    pub: Publisher | None = None
    try:
        fan = mesh.children["fanout-0"]
        n = cfg.fanout_streams
        load = await LoadClient.start(h, mesh.addr("fanout-0"))
        users = [[g.ids[i], *g.home[i], ""] for i in range(n)]
        conn = await load.call(cmd="connect", users=users, batch=250, retries=5)
        if conn["failed"]:
            raise RuntimeError(f"{conn['failed']} streams failed to connect: {conn['errors']}")
        pub = Publisher(
            mesh.redis_url, g, list(range(n, n + movers)), traced_share=traced_share(mesh.settings)
        )
        await pub.round()  # warm-up: every mover enters every list once
        per_round = n * friends
        await ceilings.paced_rounds(load, pub.round, 1, per_round)
        await load.call(cmd="stats", reset=True)
        pub.published = 0
        meter = CpuMeter([measured(fan), redis_proc]).start()
        delivered, seconds = await ceilings.paced_rounds(load, pub.round, rounds, per_round)
        used = meter.stop()
        st = await load.call(cmd="stats")
        expected = rounds * per_round
        redis_msgs = pub.published * 2  # each publish is received once and delivered once
        return {
            "streams": n,
            "connect_retried": conn.get("retried", 0),
            "movers": movers,
            "friends_per_user": friends,
            "delivered": delivered,
            "expected": expected,
            "delivered_share": delivered / expected,
            "messages": st["messages"],
            "updates_per_message": delivered / st["messages"] if st["messages"] else 0.0,
            "seconds": round(seconds, 3),
            "fanout_cpu_s": round(used["fanout-0"], 3),
            "redis_cpu_s": round(used["redis"], 3),
            "updates_per_s": delivered / seconds if seconds else 0.0,
            "updates_per_cpu_s": delivered / used["fanout-0"] if used["fanout-0"] else 0.0,
            "redis_msgs_per_cpu_s": redis_msgs / used["redis"] if used["redis"] else 0.0,
            "pub_ms": st["pub_ms"],
        }
    finally:
        if pub is not None:
            await pub.close()
        if load is not None:
            await load.close()
        h.stop_mesh(mesh)
        h.stop_redis()


async def redis_pubsub_cost(h: Harness, cfg: Config) -> dict[str, Any]:
    """Redis CPU per publish and per delivery, from runs with 1 and 10
    subscribers per channel (cpu = publishes * a + deliveries * b)."""
    n = 200_000 if cfg.quick else 500_000
    one, ten = [], []
    for _ in range(cfg.runs):
        one.append(await ceilings.redis_pubsub(h, n, 1))
        ten.append(await ceilings.redis_pubsub(h, n, 10))
    m1, m10 = median_of(one), median_of(ten)
    per_delivery = (m10["redis_cpu_s"] - m1["redis_cpu_s"]) / (9 * n)
    per_publish = m1["redis_cpu_s"] / n - per_delivery
    return {
        "runs_1_subscriber": one,
        "runs_10_subscribers": ten,
        "median": {
            "msgs_per_cpu_s_1": m1["msgs_per_cpu_s"],
            "msgs_per_cpu_s_10": m10["msgs_per_cpu_s"],
            "publish_us": per_publish * 1e6,
            "delivery_us": per_delivery * 1e6,
        },
    }


async def run(h: Harness, cfg: Config) -> dict[str, Any]:
    ratios = {
        "per_s": ("updates_per_s", "msgs_per_s"),
        "per_cpu_s": ("updates_per_cpu_s", "msgs_per_cpu_s"),
    }
    n = cfg.fanout_streams
    runs, ceiling_runs, runs_1, ceiling_runs_1 = [], [], [], []
    mix_runs: list[dict[str, Any]] = []
    for i in range(cfg.runs):
        # batched: every stream gets `fanout_friends` updates per round
        ceiling_runs.append(await ceilings.bare_push(h, n, cfg.fanout_friends, cfg.fanout_rounds))
        shape = (cfg.fanout_movers, cfg.fanout_friends, cfg.fanout_rounds)
        if cfg.privacy_compare and i % 2:  # alternate which goes first
            mix_runs.append(await fanout_once(h, cfg, *shape, mix=True))
        runs.append(await fanout_once(h, cfg, *shape))
        if cfg.privacy_compare and not i % 2:
            mix_runs.append(await fanout_once(h, cfg, *shape, mix=True))
        # one update per stream per round: nothing to batch (the brief's rates)
        ceiling_runs_1.append(await ceilings.bare_push(h, n, 1, cfg.fanout_single_rounds))
        runs_1.append(await fanout_once(h, cfg, max(1, n // 20), 1, cfg.fanout_single_rounds))
    out = scenario(runs, ceiling_runs, ratios)
    out["single"] = scenario(runs_1, ceiling_runs_1, ratios)
    out["redis_pubsub"] = await redis_pubsub_cost(h, cfg)
    if mix_runs:
        out["privacy"] = privacy.summary(cfg, runs, mix_runs)
    med = out["median"]
    if med["updates_per_cpu_s"] < 100_000:
        out["missed_notes"] = [
            f"Fan-out at {med['updates_per_cpu_s']:,.0f} friend updates per CPU-second (bar "
            f"100,000, missed by {1 - med['updates_per_cpu_s'] / 100_000:.0%}) with "
            f"{med['updates_per_message']:.1f} updates per stream message. More updates per "
            "message (a longer FANOUT_FLUSH_MS, within the latency bar) amortise the "
            "per-message cost of grpc.aio; profile with py-spy on the fan-out process."
        ]
    return out
