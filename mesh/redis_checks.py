"""Start-up checks of a Redis Cluster: what is wrong with it, in one line
(unreachable, uncovered slots, `fail` state, not a cluster at all), for the
launcher (synchronous) and the services (asynchronous)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from mesh import keys


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_info(raw: Any) -> dict[str, str]:
    if isinstance(raw, dict):
        return {_text(k): _text(v) for k, v in raw.items()}
    lines = _text(raw).splitlines()
    return dict(line.strip().split(":", 1) for line in lines if ":" in line)


def cluster_problem_of(
    url: str, info: Mapping[str, str] | None, error: Exception | None
) -> str | None:
    """What is wrong with the cluster behind `url`, in one line, or None.

    `info` is its CLUSTER INFO, `error` what asking for it raised."""
    if error is not None:
        if isinstance(error, ResponseError) and "cluster support disabled" in str(error):
            return (
                f"REDIS_URL={url} is a standalone Redis, not a cluster node: unset "
                "REDIS_CLUSTER or point REDIS_URL at a node of the cluster"
            )
        return f"the Redis Cluster seed node {url} is unreachable ({error})"
    assert info is not None
    assigned = int(info.get("cluster_slots_assigned", "0"))
    if assigned < keys.SLOTS:
        return (
            f"the Redis Cluster at {url} has uncovered slots: {keys.SLOTS - assigned} of "
            f"{keys.SLOTS} are served by no master (assign them: redis-cli --cluster fix)"
        )
    state = info.get("cluster_state", "?")
    if state != "ok":
        return (
            f"the Redis Cluster at {url} is in `{state}` state "
            f"({info.get('cluster_slots_fail', '?')} slots on failed masters, "
            f"{info.get('cluster_known_nodes', '?')} known nodes): wait for the failover "
            "or repair the failed masters"
        )
    return None


def cluster_problem(url: str) -> str | None:
    """`cluster_problem_of` for a seed node, asked synchronously (the launcher)."""
    try:
        conn = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        try:
            raw = conn.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
        finally:
            conn.close()
    except (RedisError, OSError, ValueError) as exc:
        return cluster_problem_of(url, None, exc)
    return cluster_problem_of(url, _parse_info(raw), None)


async def cluster_problem_async(url: str) -> str | None:
    try:
        conn = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        try:
            raw = await conn.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
        finally:
            await conn.aclose()
    except (RedisError, OSError, ValueError) as exc:
        return cluster_problem_of(url, None, exc)
    return cluster_problem_of(url, _parse_info(raw), None)
