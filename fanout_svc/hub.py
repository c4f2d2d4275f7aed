"""The process-wide pub/sub hub: one Redis connection (one per master on a
Redis Cluster) shared by every stream.

- Reference-counted subscriptions: N streams watching friend X are one
  `SUBSCRIBE loc:{X}`; the last one leaving sends the UNSUBSCRIBE.
- Batched commands: subscription changes collect in two pending sets that one
  callback flushes a millisecond later as a few SUBSCRIBE/UNSUBSCRIBE commands,
  so a connect storm costs a handful of commands, not one per stream.
- `barrier()` resolves once every subscription asked for so far is confirmed
  by Redis: a stream subscribes first, awaits the barrier, then reads its
  friends' cached locations, so no update can fall in between.
- Each payload is parsed once and dispatched synchronously to the listeners of
  its channel; listeners only update dicts and wake their writer.
- Connection loss: reconnect with backoff, resubscribe everything, then ask
  every listener to resync (pub/sub is at-most-once: what was published during
  the gap is lost, the streams re-read the cache and send a fresh snapshot).
- Partial loss (Redis Cluster: a slot migrated, a master failed over): the
  transport subscribes the lost channels again at their new owner and reports
  them (`on_recovered`); only the listeners of those channels resync.

The transport is a `subscriber.Subscriber`: `RedisSubscriber` for one Redis,
`sharded.ShardedSubscriber` for a Redis Cluster (`Hub.for_settings`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from google.protobuf.message import DecodeError
from nearby.v1 import nearby_service_pb2 as nearby_pb

from fanout_svc import metrics
from fanout_svc.sharded import ShardedSubscriber
from fanout_svc.subscriber import RedisSubscriber, Subscriber
from mesh import keys, tracing
from mesh.internal.v1 import events_pb2
from mesh.settings import Settings
from mesh.sharing import Policy
from mesh.startup import wait_for_store

log = logging.getLogger("fanout_svc.hub")

# prefixes of the channel names made by mesh.keys
_LOC = keys.location_channel("").encode().partition(b"{")[0]
_INBOX = keys.inbox_channel("").encode().partition(b"{")[0]
CHUNK = 1000
"""Channels per SUBSCRIBE/UNSUBSCRIBE command."""
FLUSH_DELAY_S = 0.001
RECONNECT_MAX_S = 1.0
"""Longest wait between two reconnect attempts of the pub/sub connection (one
connection per process: trying every second costs nothing, and the streams
resync sooner once Redis is back)."""


class Listener(Protocol):
    """What a stream exposes to the hub (all synchronous, all cheap)."""

    def on_moved(self, user_id: str, lat: float, lng: float, t_ms: int, pub_ms: int) -> None: ...

    def on_gone(self, user_id: str, reason: int) -> None:
        """reason: a FriendGoneReason (OFFLINE or HIDDEN)."""
        ...

    def on_inbox(self, event: events_pb2.InboxEvent) -> None: ...

    def on_sharing(self, user_id: str, policy: Policy) -> None:
        """The user's sharing policy changed (parsed once per process)."""
        ...

    def on_traced(self, user_id: str, tp: str, pub_ms: int) -> None:
        """Tracing on: the update just dispatched was traced (its traceparent)."""
        ...

    def resync(self) -> None:
        """Messages may have been lost: re-read everything, send a new snapshot."""
        ...


def loc_channel(user_id: str) -> bytes:
    return keys.location_channel(user_id).encode()


def inbox_channel(user_id: str) -> bytes:
    return keys.inbox_channel(user_id).encode()


GONE_OFFLINE = nearby_pb.FRIEND_GONE_REASON_OFFLINE
GONE_HIDDEN = nearby_pb.FRIEND_GONE_REASON_HIDDEN


class Hub:
    def __init__(
        self,
        redis_url: str,
        subscriber_factory: Callable[[], Subscriber] | None = None,
        *,
        startup_wait_s: float = 0.0,
    ) -> None:
        self._factory = subscriber_factory or (lambda: RedisSubscriber(redis_url))
        self._startup_wait_s = startup_wait_s
        self._sub: Subscriber | None = None
        # channel -> listeners (a list: most channels have one listener)
        self._listeners: dict[bytes, list[Listener]] = {}
        self._pending_sub: set[bytes] = set()
        self._pending_unsub: set[bytes] = set()
        self._flush_handle: asyncio.TimerHandle | None = None
        # barriers: futures waiting for the next flush, and flushed batches
        # waiting for the confirmation of their last channel (in order)
        self._waiting_next: list[asyncio.Future[None]] = []
        self._inflight: deque[tuple[bytes, list[asyncio.Future[None]]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._closing = False
        self.reconnects = 0
        self.traced = False  # set by open(): tracing starts after the app is made

    @classmethod
    def for_settings(cls, settings: Settings) -> Hub:
        """Sharded pub/sub on a Redis Cluster (REDIS_URL = a seed node), else one Redis."""
        url = settings.redis_url
        wait = settings.startup_wait_s
        if settings.redis_cluster:
            return cls(url, lambda: ShardedSubscriber(url), startup_wait_s=wait)
        return cls(url, startup_wait_s=wait)

    # --- lifecycle ------------------------------------------------------
    async def open(self) -> None:
        """Connect and start supervising. An unreachable Redis is waited for
        up to `startup_wait_s` (STARTUP_WAIT_S), then the OSError is raised."""
        self.traced = tracing.TRACER is not None
        await wait_for_store("Redis", self._connect, self._startup_wait_s)
        self._task = asyncio.create_task(self._supervise(), name="hub-supervisor")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        for fut in self._all_barrier_futures():
            if not fut.done():
                fut.cancel()

    @property
    def connected(self) -> bool:
        return self._sub is not None

    def channel_count(self) -> int:
        return len(self._listeners)

    def refcount(self, channel: bytes) -> int:
        return len(self._listeners.get(channel, ()))

    # --- subscriptions --------------------------------------------------
    def subscribe(self, channels: Iterable[bytes], listener: Listener) -> None:
        listeners = self._listeners
        new = False
        for ch in channels:
            ls = listeners.get(ch)
            if ls is None:
                listeners[ch] = [listener]
                self._pending_sub.add(ch)
                self._pending_unsub.discard(ch)
                new = True
            else:
                ls.append(listener)
        if new:
            metrics.HUB_CHANNELS.set(len(listeners))
            self._schedule_flush()

    def unsubscribe(self, channels: Iterable[bytes], listener: Listener) -> None:
        listeners = self._listeners
        gone = False
        for ch in channels:
            ls = listeners.get(ch)
            if ls is None:
                continue
            try:
                ls.remove(listener)
            except ValueError:
                continue
            if not ls:
                del listeners[ch]
                self._pending_unsub.add(ch)
                self._pending_sub.discard(ch)
                gone = True
        if gone:
            metrics.HUB_CHANNELS.set(len(listeners))
            self._schedule_flush()

    def barrier(self) -> asyncio.Future[None]:
        """Resolves when every subscription requested so far is confirmed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._pending_sub or self._sub is None:
            self._waiting_next.append(fut)
            self._schedule_flush()
        elif self._inflight:
            self._inflight[-1][1].append(fut)
        else:
            fut.set_result(None)
        return fut

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and self._sub is not None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(FLUSH_DELAY_S, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        sub = self._sub
        if sub is None:
            return
        listeners = self._listeners
        unsub = [c for c in self._pending_unsub if c not in listeners]
        subs = [c for c in self._pending_sub if c in listeners]
        self._pending_unsub.clear()
        self._pending_sub.clear()
        for i in range(0, len(unsub), CHUNK):
            sub.unsubscribe_many(unsub[i : i + CHUNK])
        for i in range(0, len(subs), CHUNK):
            sub.subscribe_many(subs[i : i + CHUNK])
        waiting, self._waiting_next = self._waiting_next, []
        if subs:
            self._inflight.append((subs[-1], waiting))
        elif self._inflight:
            self._inflight[-1][1].extend(waiting)
        else:
            for fut in waiting:
                if not fut.done():
                    fut.set_result(None)

    def _on_subscribed(self, channel: bytes) -> None:
        inflight = self._inflight
        if inflight and inflight[0][0] == channel:
            _, futures = inflight.popleft()
            for fut in futures:
                if not fut.done():
                    fut.set_result(None)

    # --- messages -------------------------------------------------------
    def _on_message(self, channel: bytes, data: bytes) -> None:
        ls = self._listeners.get(channel)
        if not ls:
            return
        metrics.HOT.hub_messages += 1
        try:
            if channel.startswith(_LOC):
                ev = events_pb2.LocationEvent.FromString(data)
                kind = ev.WhichOneof("kind")
                uid = ev.user_id
                if kind == "moved":
                    m = ev.moved
                    lat, lng, t_ms, pub_ms = (
                        m.latitude,
                        m.longitude,
                        m.recorded_at_ms,
                        ev.published_at_ms,
                    )
                    for s in tuple(ls) if len(ls) > 1 else ls:
                        s.on_moved(uid, lat, lng, t_ms, pub_ms)
                    if self.traced and ev.traceparent:
                        self._traced(ls, uid, ev.traceparent, pub_ms)
                elif kind == "offline" or kind == "hidden":
                    reason = GONE_OFFLINE if kind == "offline" else GONE_HIDDEN
                    for s in tuple(ls):
                        s.on_gone(uid, reason)
                elif kind == "sharing":  # parsed once, shared by every listener
                    policy = Policy.from_proto(ev.sharing)
                    for s in tuple(ls):
                        s.on_sharing(uid, policy)
            elif channel.startswith(_INBOX):
                inbox = events_pb2.InboxEvent.FromString(data)
                for s in tuple(ls):
                    s.on_inbox(inbox)
        except DecodeError:
            log.warning("undecodable payload on %r", channel)
        except Exception:
            log.exception("listener failed on %r", channel)

    def _traced(self, ls: Sequence[Listener], uid: str, tp: str, pub_ms: int) -> None:
        """A traced update was dispatched: listeners that trace pushes note it."""
        for s in tuple(ls):
            s.on_traced(uid, tp, pub_ms)

    # --- connection -----------------------------------------------------
    def _all_barrier_futures(self) -> list[asyncio.Future[None]]:
        futures = list(self._waiting_next)
        for _, fs in self._inflight:
            futures.extend(fs)
        return futures

    async def _connect(self) -> None:
        sub = self._factory()
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()

        def on_lost(exc: BaseException | None) -> None:
            if not lost.done():
                lost.set_result(None)

        await sub.connect(self._on_message, self._on_subscribed, on_lost, self._on_recovered)
        self._sub, self._lost = sub, lost
        # everything wanted is (re)subscribed in the next flush; barriers
        # still outstanding from a lost connection resolve with it
        self._waiting_next = self._all_barrier_futures()
        self._inflight.clear()
        self._pending_unsub.clear()
        self._pending_sub = set(self._listeners)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._flush()

    async def _supervise(self) -> None:
        while not self._closing:
            assert self._lost is not None
            await self._lost
            self._sub = None
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            log.warning("lost the Redis pub/sub connection; reconnecting")
            delay = 0.05
            while not self._closing:
                await asyncio.sleep(delay * (0.5 + random.random()))
                try:
                    await self._connect()
                    break
                except OSError as exc:
                    log.warning("Redis pub/sub reconnect failed: %s", exc)
                    delay = min(delay * 2, RECONNECT_MAX_S)
            self.reconnects += 1
            metrics.HUB_RECONNECTS.inc()
            await self.barrier()
            self._resync_all()

    def _resync_all(self) -> None:
        n = self._resync(list(self._listeners))
        log.info("resubscribed %d channels; %d streams resync", len(self._listeners), n)

    def _on_recovered(self, channels: Sequence[bytes]) -> None:
        """Lost channels are subscribed again: their listeners (only) resync."""
        n = self._resync(channels)
        log.info("%d channels resubscribed after a loss; %d streams resync", len(channels), n)

    def _resync(self, channels: Iterable[bytes]) -> int:
        listeners = self._listeners
        seen: dict[int, Listener] = {}
        for ch in channels:
            for s in listeners.get(ch, ()):
                seen.setdefault(id(s), s)
        for s in seen.values():
            s.resync()
        metrics.HUB_STREAMS_RESYNCED.inc(len(seen))
        return len(seen)
