"""The inactivity sweeper: publishes `offline` for users past the timeout.

Every interval, for each presence shard `presence:{k}` (a sorted set of user
ids scored by last-active ms, written by location_svc on every report; 48
shards spread evenly over the masters of a cluster), all shards at once, so
that a step costs one round trip per node:

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
from string import Template
from typing import Any

from redis.exceptions import RedisError

from mesh import keys, resp
from mesh.clock import now_ms
from mesh.redis import RedisEngine, Routed, check
from presence_svc import metrics

log = logging.getLogger("presence_svc.sweeper")

LOCK_MS = 2000
PAGE = 500
MAX_PAGES = 20  # per shard and sweep: up to 10,000 users

# KEYS: loc:{uid}. ARGV: cutoff ms, LocationEvent bytes. Channel = KEYS[1].
OFFLINE_LUA = Template("""
local a = redis.call('HGET', KEYS[1], '$active')
if a and tonumber(a) > tonumber(ARGV[1]) then return 0 end
redis.call('$publish', KEYS[1], ARGV[2])
return 1
""")
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


def _candidates(shard: int, cutoff: int) -> Routed:
    index = keys.presence_index(shard)
    return (
        index,
        resp.command(b"ZRANGEBYSCORE", index, b"-inf", cutoff, b"WITHSCORES", b"LIMIT", 0, PAGE),
    )


def _pairs(reply: Any) -> list[tuple[bytes, float]]:
    """(member, score) from WITHSCORES: pairs (RESP3) or a flat list (RESP2)."""
    if reply and isinstance(reply[0], list):
        return [(member, float(score)) for member, score in reply]
    return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]


class Sweeper:
    def __init__(self, engine: RedisEngine, timeout_s: float, interval_s: float) -> None:
        self.engine = engine
        self.timeout_ms = int(timeout_s * 1000)
        self.interval_s = interval_s
        self.owner = uuid.uuid4().hex
        self._offline = engine.script(
            OFFLINE_LUA.substitute(active=keys.ACTIVE_MS, publish=engine.publish)
        )
        self._remove = engine.script(REMOVE_LUA)
        self._release = engine.script(RELEASE_LUA)

    async def sweep(self) -> int:
        """One pass over the shards; returns the offline events published."""
        now = now_ms()
        cutoff = now - self.timeout_ms
        commands: list[Routed] = []
        for k in range(keys.PRESENCE_SHARDS):
            lock = keys.presence_sweep_lock(k)
            commands.append((lock, resp.command(b"SET", lock, self.owner, b"NX", b"PX", LOCK_MS)))
            commands.append(_candidates(k, cutoff))
        res = await self.engine.execute(commands)
        check(res)
        locked = [k for k in range(keys.PRESENCE_SHARDS) if res[2 * k]]
        pages = {k: _pairs(res[2 * k + 1]) for k in locked if res[2 * k + 1]}
        published = 0
        try:
            for _ in range(MAX_PAGES):
                if not pages:
                    break
                published += await self._sweep_pages(pages, cutoff, now)
                full = [k for k, members in pages.items() if len(members) >= PAGE]
                if not full:
                    break
                more = await self.engine.execute([_candidates(k, cutoff) for k in full])
                check(more)
                pages = {k: _pairs(reply) for k, reply in zip(full, more, strict=True) if reply}
        finally:
            if locked:
                await self.engine.execute(
                    [self._release.call([keys.presence_sweep_lock(k)], self.owner) for k in locked]
                )
        metrics.OFFLINE_EVENTS.inc(published)
        return published

    async def _sweep_pages(
        self, pages: dict[int, list[tuple[bytes, float]]], cutoff: int, now: int
    ) -> int:
        """Publish offline for a page of each shard, then remove who was published."""
        calls: list[Routed] = []
        for members in pages.values():
            for member, score in members:
                uid = member.decode()
                calls.append(
                    self._offline.call(
                        [keys.location(uid)], cutoff, keys.offline_event(uid, int(score), now)
                    )
                )
        results = await self.engine.execute(calls)
        check(results)
        gone: dict[int, list[bytes]] = {}
        i = 0
        for shard, members in pages.items():
            for member, _ in members:
                if results[i] == 1:
                    gone.setdefault(shard, []).append(member)
                i += 1
        if gone:
            await self._remove_published(gone, cutoff)
        return sum(len(members) for members in gone.values())

    async def _remove_published(self, gone: dict[int, list[bytes]], cutoff: int) -> None:
        """Remove each published user whose score is still at or before the cutoff."""
        check(
            await self.engine.execute(
                [
                    self._remove.call([keys.presence_index(shard)], cutoff, *members)
                    for shard, members in gone.items()
                ]
            )
        )

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
