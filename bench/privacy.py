"""The privacy mix of the fan-out scenarios (1 and 1b): a share of the
movers share only an approximate location, another share only with a
selected list, measured against the same load without any policy, in the
same run (`privacy_compare`, `privacy_approximate`, `privacy_only`).

The policies are written where presence_svc keeps them (Postgres rows, with
COPY), and presence itself loads them into Redis: the bench removes the
markers `hidden-synced:{t}` and waits until presence has put them back,
which it does only after reloading every policy (the same path as after a
Redis restart). A selected-only mover lists every friend it has (the
streams that watch it), so the deliveries owed stay the same and the figures
compare like for like: what is priced is the filter, not fewer pushes (a
friend outside a list simply gets nothing, which costs less).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

import psycopg
import redis.asyncio as aioredis

from bench import graph
from bench.config import Config
from bench.stats import median_of
from mesh import keys
from mesh.sharing import ALL_FRIENDS, ONLY, PRECISION_APPROXIMATE, PRECISION_PRECISE


def _client(url: str, cluster: bool) -> Any:
    return aioredis.RedisCluster.from_url(url) if cluster else aioredis.Redis.from_url(url)


async def apply_mix(
    database_url: str,
    redis_url: str,
    g: graph.Graph,
    movers: list[int],
    approximate: float,
    only: float,
    *,
    cluster: bool = False,
    seed: int = 17,
) -> dict[str, int]:
    """Give `approximate` of the movers an approximate default precision and
    `only` of them an AUDIENCE_ONLY list of all their friends; wait until
    presence has loaded them into Redis."""
    rng = random.Random(seed)
    adj = g.friends()
    approx_ids, only_rows, only_ids = [], [], []
    for m in movers:
        r = rng.random()
        if r < approximate:
            approx_ids.append(g.ids[m])
        elif r < approximate + only:
            only_ids.append(g.ids[m])
            only_rows += [(g.ids[m], g.ids[f]) for f in adj[m]]
    conn = await psycopg.AsyncConnection.connect(database_url)
    async with conn, conn.transaction(), conn.cursor() as cur:
        async with cur.copy(
            "COPY sharing_settings (user_id, audience, default_precision, version) FROM STDIN"
        ) as cp:
            for i, uid in enumerate(approx_ids):
                await cp.write_row((uid, ALL_FRIENDS, PRECISION_APPROXIMATE, i + 1))
            for i, uid in enumerate(only_ids):
                await cp.write_row((uid, ONLY, PRECISION_PRECISE, len(approx_ids) + i + 1))
        async with cur.copy("COPY sharing_audience (user_id, member_id) FROM STDIN") as cp:
            for row in only_rows:
                await cp.write_row(row)
        await cur.execute(
            "SELECT setval('sharing_version', %s)", (len(approx_ids) + len(only_ids) + 1,)
        )
    await reload(redis_url, cluster)
    return {"approximate": len(approx_ids), "only": len(only_ids), "listed": len(only_rows)}


async def clear_mix(database_url: str, redis_url: str, g: graph.Graph, *, cluster: bool) -> None:
    """No policy left anywhere (Postgres rows and their Redis mirror)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("DELETE FROM sharing_settings RETURNING user_id")
        ids = [row[0] for row in await cur.fetchall()]
        await conn.commit()
    r = _client(redis_url, cluster)
    try:
        for i in range(0, len(ids), 1000):
            pipe = r.pipeline(transaction=False)
            for uid in ids[i : i + 1000]:
                pipe.delete(keys.sharing(uid))
            await pipe.execute()
    finally:
        await r.aclose()


async def reload(redis_url: str, cluster: bool, timeout_s: float = 120.0) -> float:
    """Make presence reload the policies into Redis; seconds it took."""
    markers = keys.visibility_synced_markers()
    r = _client(redis_url, cluster)
    t0 = time.monotonic()
    try:
        for m in markers:
            await r.delete(m)
        while True:
            present = [await r.exists(m) for m in markers]
            if all(present):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError("presence did not reload the sharing policies")
            await asyncio.sleep(0.2)
    finally:
        await r.aclose()


def summary(cfg: Config, plain: list[dict[str, Any]], mix: list[dict[str, Any]]) -> dict[str, Any]:
    """A scenario's `privacy` section: the mix, its runs and the comparison."""
    return {
        "approximate": cfg.privacy_approximate,
        "only": cfg.privacy_only,
        "runs": mix,
        "median": median_of(mix),
        **compare(plain, mix, "updates_per_cpu_s"),
    }


def compare(plain: list[dict[str, Any]], mix: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Median of `key` with and without the mix, and of their per-run ratios."""
    ratios = [m[key] / p[key] for p, m in zip(plain, mix, strict=False) if p.get(key)]
    return {
        "plain": statistics.median(p[key] for p in plain) if plain else 0.0,
        "mix": statistics.median(m[key] for m in mix) if mix else 0.0,
        "ratio": round(statistics.median(ratios), 3) if ratios else 0.0,
        "ratios": [round(x, 3) for x in ratios],
    }
