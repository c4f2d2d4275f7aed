"""Redis clients (asyncio, hiredis parser)."""

from __future__ import annotations

import redis.asyncio as aioredis


def client(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    """A pooled client that returns bytes (payloads are protobuf)."""
    return aioredis.Redis.from_url(
        url,
        max_connections=max_connections,
        health_check_interval=30,
        socket_keepalive=True,
        decode_responses=False,
    )


async def check(r: aioredis.Redis, url: str) -> None:
    """Fail fast, with a clear message, when Redis is unreachable."""
    try:
        await r.ping()
    except Exception as exc:
        raise OSError(f"cannot connect to Redis at {url}: {exc}") from exc
