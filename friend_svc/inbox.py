"""Tell both users' live streams that a friendship began or ended.

Published after the transaction committed, on `inbox:{uid}` of each user, as
`InboxEvent` protobuf bytes. Redis pub/sub is at-most-once: a failed publish
is logged and counted but does not fail the call (the change is committed;
streams resync their friend list when they reconnect).
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from nearby.internal.v1 import events_pb2
from prometheus_client import Counter
from redis.exceptions import RedisError

from mesh import keys
from mesh.clock import now_ms

log = logging.getLogger("friend_svc.inbox")

PUBLISH_FAILURES = Counter(
    "friend_inbox_publish_failures_total", "Inbox events that could not be published"
)


class Inbox:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def friends_added(self, a_id: str, a_name: str, b_id: str, b_name: str) -> None:
        """Each user's event carries the OTHER user's id and display name."""
        now = now_ms()
        await self._publish(
            [
                (
                    a_id,
                    events_pb2.InboxEvent(
                        friend_added=events_pb2.FriendAdded(friend_id=b_id, display_name=b_name),
                        published_at_ms=now,
                    ),
                ),
                (
                    b_id,
                    events_pb2.InboxEvent(
                        friend_added=events_pb2.FriendAdded(friend_id=a_id, display_name=a_name),
                        published_at_ms=now,
                    ),
                ),
            ]
        )

    async def friends_removed(self, a_id: str, b_id: str) -> None:
        now = now_ms()
        await self._publish(
            [
                (
                    a_id,
                    events_pb2.InboxEvent(
                        friend_removed=events_pb2.FriendRemoved(friend_id=b_id),
                        published_at_ms=now,
                    ),
                ),
                (
                    b_id,
                    events_pb2.InboxEvent(
                        friend_removed=events_pb2.FriendRemoved(friend_id=a_id),
                        published_at_ms=now,
                    ),
                ),
            ]
        )

    async def _publish(self, events: list[tuple[str, events_pb2.InboxEvent]]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for user_id, event in events:
                    pipe.publish(keys.inbox_channel(user_id), event.SerializeToString())
                await pipe.execute()
        except (RedisError, OSError):
            PUBLISH_FAILURES.inc(len(events))
            log.warning(
                "could not publish inbox events",
                exc_info=True,
                extra={"users": [user_id for user_id, _ in events]},
            )
