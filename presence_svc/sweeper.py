"""The inactivity sweeper: publishes `offline` for users past the timeout.

Every interval, for each presence shard `presence:{k}` (a sorted set of user
ids scored by last-active ms, written by location_svc on every report):

1. take the shard's short lock (SET NX PX), so replicas split the shards;
2. read the users whose score is at or before the cutoff (now - timeout);
3. for each, a script on the user's slot publishes LocationEvent(offline) on
   `loc:{uid}` only if `loc:{uid}` field `a` is absent or also before the
   cutoff, so a user who has just reported is never reported offline;
4. remove those users from the shard, each only if its score is still at or
   before the cutoff (a report that came in meanwhile keeps the user).

Publishing comes before removing: a replica that crashes between the two
leaves the users in the index, and the next sweep publishes again. An
offline event can therefore be duplicated (harmless: subscribers drop a user
that is already gone) but never missed. Redis key-expiry notifications are
not used: they can fire late.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from nearby.internal.v1 import events_pb2
from redis.exceptions import RedisError

from mesh import keys
from mesh.clock import now_ms
from presence_svc import metrics

log = logging.getLogger("presence_svc.sweeper")

LOCK_MS = 2000
PAGE = 500
MAX_PAGES = 20  # per shard and sweep: up to 10,000 users

# KEYS: loc:{uid}. ARGV: cutoff ms, LocationEvent bytes. Channel = KEYS[1].
OFFLINE_LUA = """
local a = redis.call('HGET', KEYS[1], 'a')
if a and tonumber(a) > tonumber(ARGV[1]) then return 0 end
redis.call('PUBLISH', KEYS[1], ARGV[2])
return 1
"""
# KEYS: presence:{k}. ARGV: cutoff ms, members...
REMOVE_LUA = """
local n = 0
local cutoff = tonumber(ARGV[1])
for i = 2, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) <= cutoff then
    redis.call('ZREM', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""
# KEYS: lock. ARGV: owner id.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Sweeper:
    def __init__(self, redis: aioredis.Redis, timeout_s: float, interval_s: float) -> None:
        self.redis = redis
        self.timeout_ms = int(timeout_s * 1000)
        self.interval_s = interval_s
        self.owner = uuid.uuid4().hex
        self._offline = redis.register_script(OFFLINE_LUA)
        self._remove = redis.register_script(REMOVE_LUA)
        self._release = redis.register_script(RELEASE_LUA)

    async def sweep(self) -> int:
        """One pass over the shards; returns the offline events published."""
        now = now_ms()
        cutoff = now - self.timeout_ms
        pipe = self.redis.pipeline(transaction=False)
        for k in range(keys.PRESENCE_SHARDS):
            pipe.set(keys.presence_sweep_lock(k), self.owner, nx=True, px=LOCK_MS)
            pipe.zrangebyscore(
                keys.presence_index(k), "-inf", cutoff, start=0, num=PAGE, withscores=True
            )
        res = await pipe.execute()
        locked = [k for k in range(keys.PRESENCE_SHARDS) if res[2 * k]]
        published = 0
        try:
            for k in locked:
                members: list[tuple[bytes, float]] = res[2 * k + 1]
                pages = 1
                while members:
                    published += await self._sweep_page(k, members, cutoff, now)
                    if len(members) < PAGE or pages >= MAX_PAGES:
                        break
                    more: Any = await self.redis.zrangebyscore(
                        keys.presence_index(k), "-inf", cutoff, start=0, num=PAGE, withscores=True
                    )
                    members = more
                    pages += 1
        finally:
            if locked:
                pipe = self.redis.pipeline(transaction=False)
                for k in locked:
                    await self._release(
                        keys=[keys.presence_sweep_lock(k)], args=[self.owner], client=pipe
                    )
                await pipe.execute()
        metrics.OFFLINE_EVENTS.inc(published)
        return published

    async def _sweep_page(
        self, shard: int, members: list[tuple[bytes, float]], cutoff: int, now: int
    ) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for member, score in members:
            uid = member.decode()
            event = events_pb2.LocationEvent(
                user_id=uid,
                offline=events_pb2.UserOffline(last_active_ms=int(score)),
                published_at_ms=now,
            )
            await self._offline(
                keys=[keys.location(uid)], args=[cutoff, event.SerializeToString()], client=pipe
            )
        results = await pipe.execute()
        gone = [m for (m, _), r in zip(members, results, strict=True) if r == 1]
        if gone:
            await self._remove(keys=[keys.presence_index(shard)], args=[cutoff, *gone])
        return len(gone)

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                with metrics.SWEEP_SECONDS.time():
                    await self.sweep()
            except (RedisError, OSError) as exc:
                log.warning("presence sweep failed (%s); retrying", exc)
            except Exception:
                log.exception("presence sweep failed; retrying")
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))
