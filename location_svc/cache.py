"""Redis side of location_svc: the latest-location cache, live publishing,
presence touches, history buffering and batch reads.

A report costs one pipelined round trip for a whole batch (a Lua script per
report on the user's slot, plus one ZADD per presence shard) and a second one
for the history entries of the reports that the script kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from nearby.internal.v1 import events_pb2
from nearby.v1 import location_service_pb2
from redis.exceptions import ResponseError

from mesh import keys, resp

ACCEPTED = location_service_pb2.REPORT_DISPOSITION_ACCEPTED
COALESCED = location_service_pb2.REPORT_DISPOSITION_COALESCED
STALE = location_service_pb2.REPORT_DISPOSITION_STALE

# KEYS: loc:{uid}, hidden:{uid}. ARGV: fix bytes, fix ms, now ms, ttl ms,
# minimum interval ms, LocationEvent bytes to publish. Channel = KEYS[1].
REPORT_LUA = """
local cur = redis.call('HMGET', KEYS[1], 't', 'p')
local now = tonumber(ARGV[3])
if cur[1] and tonumber(cur[1]) > tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'a', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {stale}
end
if cur[2] and now - tonumber(cur[2]) < tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 't', ARGV[2], 'a', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {coalesced}
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 't', ARGV[2], 'a', ARGV[3], 'p', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('PUBLISH', KEYS[1], ARGV[6])
end
return {accepted}
"""
REPORT_LUA = REPORT_LUA.format(stale=STALE, coalesced=COALESCED, accepted=ACCEPTED)
REPORT_SHA = hashlib.sha1(REPORT_LUA.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Report:
    """A validated report."""

    user_id: str
    latitude: float
    longitude: float
    recorded_at_ms: int


class LocationCache:
    def __init__(self, redis: aioredis.Redis, ttl_s: float, min_interval_s: float) -> None:
        self.redis = redis
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.gap_ms = int(min_interval_s * 1000)

    async def record(self, reports: Sequence[Report], now_ms: int) -> list[int]:
        """Cache, publish and touch presence; returns each report's disposition."""
        calls: list[bytes] = []
        touches: dict[str, list[int | str]] = {}
        ttl, gap = self.ttl_ms, self.gap_ms
        for r in reports:
            fix = events_pb2.PositionFix(
                latitude=r.latitude, longitude=r.longitude, recorded_at_ms=r.recorded_at_ms
            )
            event = events_pb2.LocationEvent(
                user_id=r.user_id, moved=fix, published_at_ms=now_ms
            ).SerializeToString()
            calls.append(
                resp.command(
                    b"EVALSHA",
                    REPORT_SHA,
                    2,
                    keys.location(r.user_id),
                    keys.hidden(r.user_id),
                    fix.SerializeToString(),
                    r.recorded_at_ms,
                    now_ms,
                    ttl,
                    gap,
                    event,
                )
            )
            touches.setdefault(keys.presence_index_of(r.user_id), []).extend((now_ms, r.user_id))
        zadds = [resp.command(b"ZADD", index, *members) for index, members in touches.items()]
        replies = await resp.execute(self.redis, calls + zadds)
        out = replies[: len(calls)]
        for reply in replies[len(calls) :]:
            _raise(reply)
        missing = [i for i, reply in enumerate(out) if resp.is_error(reply, "NOSCRIPT")]
        if missing:  # Redis restarted or flushed its scripts: load and rerun those
            await self.redis.script_load(REPORT_LUA)
            again = await resp.execute(self.redis, [calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                out[i] = reply
        for reply in out:
            _raise(reply)
        return [int(reply) for reply in out]

    async def buffer_history(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """Append (user_id, encoded row) entries to the history streams."""
        replies = await resp.execute(
            self.redis,
            [
                resp.command(b"XADD", keys.history_stream_of(user_id), b"*", b"r", row)
                for user_id, row in entries
            ],
        )
        for reply in replies:
            _raise(reply)

    async def batch_get(
        self, user_ids: Sequence[str], include_hidden: bool
    ) -> list[tuple[str, bytes]]:
        """(user id, PositionFix bytes) of the cached, visible users, in order."""
        commands: list[bytes] = []
        for uid in user_ids:
            commands.append(resp.command(b"HGET", keys.location(uid), b"v"))
            if not include_hidden:
                commands.append(resp.command(b"EXISTS", keys.hidden(uid)))
        res = await resp.execute(self.redis, commands)
        for reply in res:
            _raise(reply)
        out: list[tuple[str, bytes]] = []
        step = 1 if include_hidden else 2
        for i, uid in enumerate(user_ids):
            value = res[i * step]
            if value is None or (not include_hidden and res[i * step + 1]):
                continue
            out.append((uid, value))
        return out


def _raise(reply: Any) -> None:
    if isinstance(reply, Exception):
        raise ResponseError(str(reply))
