"""Who may hold a stream, and for how long: the per-user stream cap and the
token's expiry. Any stream kind of the fan-out gets both through
`Admission.admit` (the session calls it before anything else and closes what
it returns when it ends); neither touches the push path.

- **Cap** (`STREAMS_PER_USER`, default 5): each stream holds a slot in the
  user's Redis sorted set (`mesh.keys.user_streams`: member = the stream,
  score = lease end, server time). Opening one more than the cap is refused
  with RESOURCE_EXHAUSTED, the streams already open are left alone (the
  newest is refused: a client's own reconnect never kills its live stream).
  Each replica renews its streams' leases every `STREAM_LEASE_S`/3 in one
  batched round trip; a replica that dies stops renewing and its slots lapse
  within `STREAM_LEASE_S`, so nothing leaks. The key carries the user id as
  hash tag: one slot, so the Lua scripts run on Redis Cluster too.
- **Expiry**: Envoy hands the verified token's `exp` to the backend
  (`x-nearby-token-exp`). `margin` before it (TOKEN_REFRESH_MARGIN_S, at
  most half the token's remaining life) the stream is sent a `Reconnect`
  (the client reconnects with a fresh token and the stream goes on until
  it does); at `exp` it ends with UNAUTHENTICATED. Two timer handles per
  stream on the event loop, nothing per message.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from typing import Protocol

from google.protobuf import duration_pb2
from nearby.v1 import nearby_service_pb2 as pb

from mesh import keys, resp
from mesh.errors import ResourceExhausted, ServiceError, Unauthenticated
from mesh.identity import token_expiry
from mesh.redis import RedisEngine, Script
from mesh.settings import Settings
from mesh.types import Context

log = logging.getLogger("fanout_svc.admission")

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
ACQUIRE_LUA = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
)
"""KEYS: user_streams(uid); ARGV: lease ms, cap, member. 1: admitted."""
RENEW_LUA = (
    _NOW_MS
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
)
"""KEYS: user_streams(uid); ARGV: lease ms, member."""


class Stream(Protocol):
    """What admission needs of a stream (session.Session provides it)."""

    user_id: str
    context: Context

    def ask_reconnect(self, reconnect: pb.Reconnect) -> None:
        """Send Reconnect now; the stream goes on."""
        ...

    def end(self, error: ServiceError | None) -> None: ...


class Admitted:
    """One admitted stream: its slot and its expiry timers; `close` frees both."""

    __slots__ = ("_handle", "_slot", "_slots", "exp", "stream")

    def __init__(self, stream: Stream, slots: StreamSlots | None, slot: bytes | None) -> None:
        self.stream = stream
        self._slots, self._slot = slots, slot
        self._handle: asyncio.TimerHandle | None = None
        self.exp: float | None = None

    def watch_expiry(self, exp: float, margin_s: float) -> None:
        left = exp - time.time()
        self.exp = exp
        loop = asyncio.get_running_loop()
        remind_in = left - min(margin_s, left / 2)
        self._handle = loop.call_later(remind_in, self._remind)

    def _remind(self) -> None:
        assert self.exp is not None
        left = max(0.0, self.exp - time.time())
        # jittered, so that tokens minted together do not reconnect together
        self.stream.ask_reconnect(reconnect("token expires soon", min(1.0, left / 4)))
        self._handle = asyncio.get_running_loop().call_later(left, self._expire)

    def _expire(self) -> None:
        self._handle = None
        self.stream.end(
            Unauthenticated(
                "your token expired: reconnect with a fresh token", reason="TOKEN_EXPIRED"
            )
        )

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._slots is not None and self._slot is not None:
            self._slots.release(self.stream.user_id, self._slot)
            self._slot = None


def reconnect(reason: str, spread_s: float) -> pb.Reconnect:
    wait = random.uniform(0.0, spread_s)
    d = duration_pb2.Duration(seconds=int(wait), nanos=int((wait % 1) * 1e9))
    return pb.Reconnect(reason=reason, retry_after=d)


class StreamSlots:
    """The per-user cap over every replica (module doc): slots in Redis."""

    def __init__(self, engine: RedisEngine, cap: int, lease_s: float) -> None:
        self.engine, self.cap = engine, cap
        self.lease_ms = max(1000, int(lease_s * 1000))
        self._acquire: Script = engine.script(ACQUIRE_LUA)
        self._renew: Script = engine.script(RENEW_LUA)
        self._prefix = os.urandom(6).hex().encode()
        self._ids = itertools.count()
        self.held: dict[bytes, str] = {}  # member -> user id
        self._releases: list[tuple[str, bytes]] = []
        self._flush: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_loop(), name="stream-slot-renewal")

    async def close(self) -> None:
        for task in (self._renewer, self._flush):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def acquire(self, user_id: str) -> bytes:
        member = b"%s:%d" % (self._prefix, next(self._ids))
        key = keys.user_streams(user_id)
        (ok,) = await self.engine.execute(
            [self._acquire.call([key], self.lease_ms, self.cap, member)]
        )
        if not ok:
            raise ResourceExhausted(
                f"you already have {self.cap} open streams (the limit per user): "
                "close one, or retry after one of them ended",
                reason="TOO_MANY_STREAMS",
                retry_after_s=5.0,
                limit=str(self.cap),
            )
        self.held[member] = user_id
        return member

    def release(self, user_id: str, member: bytes) -> None:
        """Free a slot (batched: one round trip for the slots freed meanwhile)."""
        self.held.pop(member, None)
        self._releases.append((user_id, member))
        if self._flush is None:
            self._flush = asyncio.create_task(self._release_batch())

    async def _release_batch(self) -> None:
        await asyncio.sleep(0)
        batch, self._releases = self._releases, []
        self._flush = None
        cmds = [
            (keys.user_streams(u), resp.command(b"ZREM", keys.user_streams(u), m)) for u, m in batch
        ]
        try:
            await self.engine.execute(cmds, partial=True)
        except Exception as exc:  # the lease frees them anyway
            log.warning("freeing %d stream slots failed (%r); their leases lapse", len(cmds), exc)

    async def _renew_loop(self) -> None:
        period = self.lease_ms / 3000.0
        while True:
            await asyncio.sleep(period)
            held = list(self.held.items())
            if not held:
                continue
            cmds = [self._renew.call([keys.user_streams(u)], self.lease_ms, m) for m, u in held]
            try:
                await self.engine.execute(cmds, partial=True)
            except Exception as exc:
                log.warning("renewing %d stream slots failed: %r", len(cmds), exc)


class Admission:
    """The process's gate for new streams (cap: None when STREAMS_PER_USER=0)."""

    def __init__(self, settings: Settings, slots: StreamSlots | None) -> None:
        self.margin_s = settings.token_refresh_margin_s
        self.slots = slots

    async def admit(self, stream: Stream) -> Admitted:
        """Admit `stream` or raise (UNAUTHENTICATED: expired; RESOURCE_EXHAUSTED: cap)."""
        exp = token_expiry(stream.context)
        if exp is not None and exp <= time.time():
            # Envoy's leeway (JWT_CLOCK_SKEW_S) let it through; a stream would end at once
            raise Unauthenticated(
                "your token expired: reconnect with a fresh token", reason="TOKEN_EXPIRED"
            )
        slot = await self.slots.acquire(stream.user_id) if self.slots is not None else None
        admitted = Admitted(stream, self.slots, slot)
        if exp is not None:
            admitted.watch_expiry(exp, self.margin_s)
        return admitted

    async def close(self) -> None:
        if self.slots is not None:
            await self.slots.close()
