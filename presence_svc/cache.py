"""Redis side of presence_svc: ghost-mode flags and presence lookups."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from nearby.internal.v1 import events_pb2

from mesh import keys
from mesh.clock import now_ms

_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class PresenceInfo:
    user_id: str
    active: bool
    last_active_ms: int
    hidden: bool


class PresenceCache:
    def __init__(self, redis: aioredis.Redis, timeout_s: float) -> None:
        self.redis = redis
        self.timeout_ms = int(timeout_s * 1000)

    async def hide(self, user_id: str) -> None:
        """Set the flag and tell the user's friends (one MULTI on the user's slot)."""
        event = events_pb2.LocationEvent(
            user_id=user_id, hidden=events_pb2.UserHidden(), published_at_ms=now_ms()
        )
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.hidden(user_id), b"1")
        pipe.publish(keys.location_channel(user_id), event.SerializeToString())
        await pipe.execute()

    async def show(self, user_id: str) -> None:
        """Clear the flag: friends see the user again at their next update."""
        await self.redis.delete(keys.hidden(user_id))

    async def apply_flags(self, hidden: Iterable[str], visible: Iterable[str] = ()) -> None:
        """Mirror flags loaded from Postgres (no events: friends were told already)."""
        pipe = self.redis.pipeline(transaction=False)
        queued = 0
        for uid in hidden:
            pipe.set(keys.hidden(uid), b"1")
            queued += 1
            if queued % _CHUNK == 0:
                await pipe.execute()
        for uid in visible:
            pipe.delete(keys.hidden(uid))
            queued += 1
            if queued % _CHUNK == 0:
                await pipe.execute()
        await pipe.execute()

    async def synced(self) -> bool:
        return bool(await self.redis.exists(keys.VISIBILITY_SYNCED))

    async def mark_synced(self) -> None:
        await self.redis.set(keys.VISIBILITY_SYNCED, b"1")

    async def batch_presence(self, user_ids: Sequence[str]) -> list[PresenceInfo]:
        pipe = self.redis.pipeline(transaction=False)
        for uid in user_ids:
            pipe.hget(keys.location(uid), "a")
            pipe.exists(keys.hidden(uid))
        res = await pipe.execute()
        cutoff = now_ms() - self.timeout_ms
        out = []
        for i, uid in enumerate(user_ids):
            raw = res[2 * i]
            last = int(raw) if raw is not None else 0
            active = last > cutoff
            out.append(PresenceInfo(uid, active, last if active else 0, bool(res[2 * i + 1])))
        return out
