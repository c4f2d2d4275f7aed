"""Tell both users' live streams that a friendship began or ended.

Published after the transaction committed, on `inbox:{uid}` of each user, as
`InboxEvent` protobuf bytes. Redis pub/sub is at-most-once: a failed publish
is logged and counted but does not fail the call (the change is committed;
streams resync their friend list when they reconnect).
"""

from __future__ import annotations

import logging

from prometheus_client import Counter
from redis.exceptions import RedisError

from mesh import keys, resp
from mesh.clock import now_ms
from mesh.errors import Unavailable
from mesh.outages import RETRY_AFTER_S
from mesh.redis import RedisEngine, check

log = logging.getLogger("friend_svc.inbox")

PUBLISH_FAILURES = Counter(
    "friend_inbox_publish_failures_total", "Inbox events that could not be published"
)


class Inbox:
    def __init__(self, engine: RedisEngine) -> None:
        self.engine = engine

    async def friends_added(self, a_id: str, a_name: str, b_id: str, b_name: str) -> None:
        """Each user's event carries the OTHER user's id and display name."""
        now = now_ms()
        await self._publish(
            [
                (a_id, keys.friend_added_event(b_id, b_name, now)),
                (b_id, keys.friend_added_event(a_id, a_name, now)),
            ]
        )

    async def friends_removed(self, a_id: str, b_id: str) -> None:
        now = now_ms()
        await self._publish(
            [
                (a_id, keys.friend_removed_event(b_id, now)),
                (b_id, keys.friend_removed_event(a_id, now)),
            ]
        )

    async def account_deleted(self, user_id: str, friend_ids: list[str]) -> None:
        """The deleted user's streams end; each friend's stream drops the user
        (UNFRIENDED). Unlike the others this raises UNAVAILABLE when it could
        not publish: DeleteUser fails and its retry publishes again (a repeat
        is harmless), so no stream keeps showing a deleted user."""
        now = now_ms()
        events = [(fid, keys.friend_removed_event(user_id, now)) for fid in friend_ids]
        events.append((user_id, keys.account_deleted_event(now)))
        if not await self._publish(events):
            raise Unavailable(
                "could not tell the live streams about the deletion: retry",
                reason="REDIS_UNAVAILABLE",
                retry_after_s=RETRY_AFTER_S,
            )

    async def _publish(self, events: list[tuple[str, bytes]]) -> bool:
        """One round trip per node (the users' channels may be on several);
        False when it failed (logged and counted)."""
        commands = [
            (channel, resp.command(self.engine.publish, channel, payload))
            for channel, payload in ((keys.inbox_channel(uid), p) for uid, p in events)
        ]
        try:
            check(await self.engine.execute(commands))
            return True
        except (RedisError, OSError):
            PUBLISH_FAILURES.inc(len(events))
            log.warning(
                "could not publish inbox events",
                exc_info=True,
                extra={"users": [user_id for user_id, _ in events]},
            )
            return False
