"""Redis side of location_svc: the latest-location cache, live publishing,
presence touches, history buffering and batch reads.

A batch of reports costs one round trip per node it touches (the engine
groups the commands per node and sends to the nodes concurrently): a Lua
script per report on the user's slot; and a second one for the presence
touches (one ZADD per presence shard) of the users the script recorded and
the history entries of the reports it kept (with one WAIT per node when
history must reach a replica). A report whose account is to be checked and
has no marker (accounts.py) gets UNKNOWN from the script and nothing anywhere.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nearby.v1 import location_service_pb2
from opentelemetry.trace import Span
from redis.exceptions import ResponseError

from mesh import keys, resp, tracing
from mesh.internal.v1 import events_pb2
from mesh.outages import outage_of
from mesh.redis import RedisEngine, Routed, check

ACCEPTED = location_service_pb2.REPORT_DISPOSITION_ACCEPTED
COALESCED = location_service_pb2.REPORT_DISPOSITION_COALESCED
STALE = location_service_pb2.REPORT_DISPOSITION_STALE
UNKNOWN = -1
"""Not a disposition: a report whose account was to be checked had no
account marker; nothing was recorded (accounts.py)."""

# KEYS: loc:{uid}, hidden:{uid}[, acct:{uid} when the account is to be checked:
# without it, UNKNOWN and nothing done]. ARGV: fix bytes, fix ms, now ms, ttl ms,
# minimum interval ms, LocationEvent bytes to publish. Channel = KEYS[1]
# (same slot: the publish verb may be SPUBLISH, which Redis 7.0 allows in a
# script for a channel of the script's own node).
# A fix whose time equals the cached one is either this very call re-sent by
# the engine (`a` = this call's now: answer as the first run did) or a repeat
# (STALE: not published again; history deduplicates it by its key).
REPORT_LUA = string.Template("""
if #KEYS > 2 and redis.call('EXISTS', KEYS[3]) == 0 then return $unknown end
local cur = redis.call('HMGET', KEYS[1], '$t', '$p', '$a')
local now = tonumber(ARGV[3])
if cur[1] then
  local t = tonumber(cur[1])
  local fix = tonumber(ARGV[2])
  if t == fix and cur[3] == ARGV[3] then
    if cur[2] == ARGV[3] then return $accepted end
    return $coalesced
  end
  if t >= fix then
    redis.call('HSET', KEYS[1], '$a', ARGV[3])
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    return $stale
  end
end
if cur[2] and now - tonumber(cur[2]) < tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], '$v', ARGV[1], '$t', ARGV[2], '$a', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return $coalesced
end
redis.call('HSET', KEYS[1], '$v', ARGV[1], '$t', ARGV[2], '$a', ARGV[3], '$p', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('$publish', KEYS[1], ARGV[6])
end
return $accepted
""")


def report_lua(publish: str) -> str:
    """The report script for a publish verb (PUBLISH or SPUBLISH)."""
    return REPORT_LUA.substitute(
        t=keys.FIX_MS,
        p=keys.SHARED_MS,
        a=keys.ACTIVE_MS,
        v=keys.FIX,
        publish=publish,
        stale=STALE,
        coalesced=COALESCED,
        accepted=ACCEPTED,
        unknown=UNKNOWN,
    )


@dataclass(frozen=True, slots=True)
class Report:
    """A validated report."""

    user_id: str
    latitude: float
    longitude: float
    recorded_at_ms: int
    #: the report's trace context (W3C traceparent), "" when not traced
    traceparent: str = ""
    #: record it only if the user has an account (accounts.py)
    check_account: bool = False


Outcome = int | Exception
"""A report's disposition, or why Redis could not record it."""


class LocationCache:
    def __init__(
        self,
        engine: RedisEngine,
        ttl_s: float,
        min_interval_s: float,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        self.engine = engine
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.gap_ms = int(min_interval_s * 1000)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.script = engine.script(report_lua(engine.publish))

    async def record(self, reports: Sequence[Report], now_ms: int) -> list[Outcome]:
        """Cache and publish; each report's disposition (UNKNOWN: its account
        was to be checked and has no marker, nothing done), or the error of the
        node that failed it (the others are recorded). Presence is touched by
        `finish`."""
        calls: list[Routed] = []
        ttl, gap = self.ttl_ms, self.gap_ms
        sha, command, moved = self.script.sha, resp.command, keys.moved_event
        spans = traced_publish(reports) if tracing.TRACER is not None else None
        for i, r in enumerate(reports):
            uid = r.user_id
            fix = events_pb2.PositionFix(
                latitude=r.latitude, longitude=r.longitude, recorded_at_ms=r.recorded_at_ms
            )
            key = keys.location(uid)
            calls.append(
                (
                    key,
                    command(
                        b"EVALSHA",
                        sha,
                        *(
                            (3, key, keys.hidden(uid), keys.account(uid))
                            if r.check_account
                            else (2, key, keys.hidden(uid))
                        ),
                        fix.SerializeToString(),
                        r.recorded_at_ms,
                        now_ms,
                        ttl,
                        gap,
                        moved(
                            uid, fix, now_ms, spans[i][0] if spans and i in spans else r.traceparent
                        ),
                    ),
                )
            )
        try:
            replies = await self.engine.execute(calls, partial=True)
        finally:
            if spans:
                end_publish(spans)
        return [reply if type(reply) is int else _outcome(reply) for reply in replies]

    async def finish(
        self, touched: Sequence[str], entries: Sequence[tuple[str, bytes]], now_ms: int
    ) -> tuple[list[Any], list[Any], int]:
        """The second round trip: mark `touched` users active in the presence
        index and append (user_id, encoded row) `entries` to the history
        streams. Per touched user and per entry None or its error, and how many
        entries were not confirmed by replicas."""
        touches: dict[str, tuple[list[int | str], list[int]]] = {}
        for i, uid in enumerate(touched):
            members, owners = touches.setdefault(keys.presence_index_of(uid), ([], []))
            members.extend((now_ms, uid))
            owners.append(i)
        zadds: list[Routed] = [
            (index, resp.command(b"ZADD", index, *m)) for index, (m, _) in touches.items()
        ]
        xadds: list[Routed] = [
            (stream, resp.command(b"XADD", stream, b"*", keys.HISTORY_ROW, row))
            for stream, row in ((keys.history_stream_of(uid), row) for uid, row in entries)
        ]
        if not zadds and not xadds:
            return [], [], 0
        if self.wait_replicas > 0 and xadds:
            # presence touches need no replica: a pipeline of their own, at once
            durable = self.engine.execute_durable(xadds, self.wait_replicas, self.wait_timeout_ms)
            if zadds:
                (replies, unconfirmed), zreplies = await asyncio.gather(
                    durable, self.engine.execute(zadds, partial=True)
                )
            else:
                (replies, unconfirmed), zreplies = await durable, []
        else:
            both = await self.engine.execute(zadds + xadds, partial=True)
            zreplies, replies, unconfirmed = both[: len(zadds)], both[len(zadds) :], 0
        touch_errors: list[Any] = [None] * len(touched)
        for (_, owners), reply in zip(touches.values(), zreplies, strict=True):
            if isinstance(reply, Exception):
                # not in the presence index: the user would never be swept offline
                for i in owners:
                    touch_errors[i] = _error(reply)
        history_errors = [_error(r) if isinstance(r, Exception) else None for r in replies]
        return touch_errors, history_errors, unconfirmed

    async def batch_get(
        self, user_ids: Sequence[str], include_hidden: bool
    ) -> list[tuple[str, bytes]]:
        """(user id, PositionFix bytes) of the cached, visible users, in order."""
        commands: list[tuple[str, bytes]] = []
        for uid in user_ids:
            key = keys.location(uid)
            commands.append((key, resp.command(b"HGET", key, keys.FIX)))
            if not include_hidden:
                flag = keys.hidden(uid)
                commands.append((flag, resp.command(b"EXISTS", flag)))
        res = await self.engine.execute(commands)
        check(res)
        out: list[tuple[str, bytes]] = []
        step = 1 if include_hidden else 2
        for i, uid in enumerate(user_ids):
            value = res[i * step]
            if value is None or (not include_hidden and res[i * step + 1]):
                continue
            out.append((uid, value))
        return out


def traced_publish(reports: Sequence[Report]) -> dict[int, tuple[str, Span]]:
    """A publish span per traced report: index -> (the span's traceparent, which
    the published LocationEvent carries, and the span)."""
    out: dict[int, tuple[str, Span]] = {}
    for i, r in enumerate(reports):
        span = tracing.publish_span(r.traceparent, r.user_id) if r.traceparent else None
        if span is not None:
            out[i] = (tracing.traceparent(span), span)
    return out


def end_publish(spans: dict[int, tuple[str, Span]]) -> None:
    for _, span in spans.values():
        span.end()


def _outcome(reply: Any) -> Outcome:
    if isinstance(reply, Exception):
        return _error(reply)
    return int(reply)


def _error(reply: Exception) -> Exception:
    """Redis-side failures stay as they are (the caller answers UNAVAILABLE);
    a refused command becomes a ResponseError."""
    if outage_of(reply) is not None or not resp.is_error(reply):
        return reply
    return ResponseError(str(reply))
