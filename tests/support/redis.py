"""Tests on both Redis engines: the target of a test (one Redis or the
cluster), a client for it, and pub/sub that subscribes the way the engine's
publishers publish (SUBSCRIBE, or SSUBSCRIBE on the channel's node)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from mesh import keys
from mesh.redis import RedisEngine

STANDALONE, CLUSTER = "standalone", "cluster"


@dataclass(frozen=True)
class RedisTarget:
    url: str
    cluster: bool

    def client(self) -> Any:
        """A plain redis-py client (a RedisCluster on the cluster)."""
        if self.cluster:
            return RedisCluster.from_url(self.url)
        return aioredis.Redis.from_url(self.url)

    def engine(self) -> RedisEngine:
        return RedisEngine(self.url, cluster=self.cluster)


class Subscription:
    """`get_message` as redis-py's PubSub has it, on either engine."""

    def __init__(self, client: Any, cluster: bool) -> None:
        self.cluster = cluster
        self.pubsub = client.pubsub()

    async def subscribe(self, *channels: str) -> None:
        if self.cluster:
            await self.pubsub.ssubscribe(*channels)
        else:
            await self.pubsub.subscribe(*channels)

    async def get_message(
        self,
        ignore_subscribe_messages: bool = True,
        timeout: float = 0.1,  # noqa: ASYNC109 - redis-py's PubSub signature
    ) -> dict[str, Any] | None:
        if self.cluster:
            msg: dict[str, Any] | None = await self.pubsub.get_sharded_message(
                ignore_subscribe_messages=ignore_subscribe_messages, timeout=timeout
            )
            if msg is not None and msg.get("type") in ("ssubscribe", b"ssubscribe"):
                return None if ignore_subscribe_messages else msg
            return msg
        got: dict[str, Any] | None = await self.pubsub.get_message(
            ignore_subscribe_messages=ignore_subscribe_messages, timeout=timeout
        )
        return got

    async def aclose(self) -> None:
        await self.pubsub.aclose()


def subscription(client: Any) -> Subscription:
    return Subscription(client, isinstance(client, RedisCluster))


async def stream_lengths(client: Any) -> int:
    """Entries in all history streams."""
    return sum([await client.xlen(s) for s in keys.history_streams()])
