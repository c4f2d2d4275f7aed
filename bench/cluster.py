"""Scenario 6 (`--redis-cluster 1,2,3`): ingest and the brief-shaped fan-out
with the same client load on standalone Redis and on Redis Clusters of 1, 2,
3 ... masters (no replicas; the services get REDIS_CLUSTER=1 and a seed
node as REDIS_URL).

Per engine: scenario 4's ingest run and one window of scenario 1b at the
default FANOUT_FLUSH_MS (publishes go to each channel's slot owner with
SPUBLISH). Every redis-server's CPU is read from /proc, so the report gives
Redis CPU per master, how evenly it is spread (max / min over the masters)
and Redis CPU per delivered update, in total and per shard: on 2 cores the
Python mesh is the limit, so the Redis side is what shows the scaling.
"""

from __future__ import annotations

import statistics
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from bench import brief, ingest
from bench.config import Config
from bench.harness import Harness
from bench.stats import median_of, not_measured


def spread(per_master: dict[str, float]) -> float | None:
    """max / min CPU over the masters (None with fewer than two, or an idle one)."""
    vals = list(per_master.values())
    if len(vals) < 2 or min(vals) <= 0:
        return None
    return max(vals) / min(vals)


def redis_split(cpu: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in cpu.items() if k.startswith("redis")}


async def ingest_part(h: Harness, cfg: Config, masters: int) -> dict[str, Any]:
    r = await ingest.ingest_once(h, cfg, masters=masters)
    per_master = r.get("redis_cpu_per_master_s") or {"redis": r["cpu_s"]["redis"]}
    n = r["accepted"]
    return {
        **r,
        "redis_cpu_us_per_update": sum(per_master.values()) / n * 1e6 if n else 0.0,
        "redis_spread": spread(per_master),
    }


async def fanout_part(h: Harness, cfg: Config, masters: int) -> dict[str, Any]:
    mesh, g, redis_procs = await brief.start_brief_mesh(h, cfg, masters)
    try:
        r = await brief.window_once(h, cfg, mesh, g, cfg.brief_windows[0], redis_procs)
    finally:
        h.stop_mesh(mesh)
        h.stop_redis()
    per_master = redis_split(r["cpu_s"])
    n = r["delivered"]
    per_shard = {k: v / n * 1e6 for k, v in per_master.items()} if n else {}
    return {
        **r,
        "redis_cpu_per_master_s": per_master,
        "redis_spread": spread(per_master),
        "redis_cpu_us_per_update_per_shard": (
            statistics.mean(per_shard.values()) if per_shard else 0.0
        ),
        "redis_cpu_us_per_update_max_shard": max(per_shard.values()) if per_shard else 0.0,
    }


async def measure(
    h: Harness, cfg: Config, fn: Callable[[Harness, Config, int], Awaitable[dict[str, Any]]], m: int
) -> dict[str, Any]:
    runs = []
    for _ in range(cfg.cluster_runs):
        try:
            runs.append(await fn(h, cfg, m))
        except Exception as exc:
            (h.logs / f"cluster-{m}-{fn.__name__}.error.txt").write_text(traceback.format_exc())
            return not_measured(f"{type(exc).__name__}: {exc}".strip()[:300])
        finally:
            h.stop_redis()
    return {"status": "measured", "runs": runs, "median": median_of(runs)}


async def run(h: Harness, cfg: Config) -> dict[str, Any]:
    if not cfg.redis_cluster:
        return not_measured('not selected: make bench ARGS="--redis-cluster 1,2,3"')
    engines = []
    for masters in (0, *cfg.redis_cluster):  # 0: standalone Redis
        engines.append(
            {
                "masters": masters,
                "ingest": await measure(h, cfg, ingest_part, masters),
                "fanout": await measure(h, cfg, fanout_part, masters),
            }
        )
    return {"status": "measured", "engines": engines, "flush_ms": cfg.brief_windows[0]}
