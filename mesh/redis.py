"""Redis clients (asyncio, hiredis parser)."""

from __future__ import annotations

import redis.asyncio as aioredis


def client(url: str, *, max_connections: int = 64, wait_s: float = 10.0) -> aioredis.Redis:
    """A pooled client that returns bytes (payloads are protobuf).

    The pool blocks (up to `wait_s`) when all its connections are busy instead
    of failing: under a burst (a reconnect storm) calls queue for a connection
    rather than erroring with "Too many connections".
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=wait_s,
        health_check_interval=30,
        socket_keepalive=True,
        decode_responses=False,
    )
    return aioredis.Redis.from_pool(pool)


async def check(r: aioredis.Redis, url: str) -> None:
    """Fail fast, with a clear message, when Redis is unreachable."""
    try:
        await r.ping()
    except Exception as exc:
        raise OSError(f"cannot connect to Redis at {url}: {exc}") from exc
