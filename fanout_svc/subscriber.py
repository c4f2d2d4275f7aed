"""The Redis side of the hub: one pub/sub connection, behind a small interface.

The hub (hub.py) only needs four things from a pub/sub transport: send
SUBSCRIBE/UNSUBSCRIBE for many channels at once, hear each message, hear each
subscription confirmation (in order), and learn that the connection is gone.
`RedisSubscriber` does that for a standalone Redis on one connection: an
asyncio protocol feeding the hiredis reader, so a message costs one parse and
one synchronous callback, with no await per message. A Redis Cluster variant
(SSUBSCRIBE/SUNSUBSCRIBE per shard, e.g. redis-py's asyncio
`RedisCluster.pubsub()`) implements the same interface; the hub and the
streams do not change (docs/fanout.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import hiredis
from redis.crc import key_slot

from mesh.resp import command

OnMessage = Callable[[bytes, bytes], None]
"""(channel, payload) of a published message."""
OnSubscribed = Callable[[bytes], None]
"""A subscription to this channel is confirmed (confirmations come in order)."""
OnLost = Callable[[BaseException | None], None]
"""The connection is gone; every subscription with it."""


class Subscriber(Protocol):
    """A pub/sub transport owned by exactly one hub."""

    async def connect(
        self, on_message: OnMessage, on_subscribed: OnSubscribed, on_lost: OnLost
    ) -> None:
        """Open the connection; raises OSError when the server is unreachable."""
        ...

    def subscribe_many(self, channels: Sequence[bytes]) -> None:
        """Send the subscriptions (does not wait; confirmations arrive later)."""
        ...

    def unsubscribe_many(self, channels: Sequence[bytes]) -> None:
        """Send the unsubscriptions (does not wait)."""
        ...

    def close(self) -> None:
        """Drop the connection (on_lost is not called)."""
        ...


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: RedisSubscriber) -> None:
        self.owner = owner
        self.reader = hiredis.Reader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        owner = self.owner
        on_message = owner.on_message
        while True:
            reply: Any = reader.gets()
            if reply is False:
                return
            if isinstance(reply, list) and len(reply) == 3:
                kind = reply[0]
                if kind == b"message" or kind == b"smessage":
                    on_message(reply[1], reply[2])
                elif kind == b"subscribe" or kind == b"ssubscribe":
                    owner.on_subscribed(reply[1])
            elif isinstance(reply, hiredis.ReplyError):
                owner.fail(ConnectionError(f"redis replied with an error: {reply}"))
            else:
                owner.on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.lost(exc)


class RedisSubscriber:
    """One standalone-Redis pub/sub connection (RESP2), from a redis:// URL."""

    def __init__(self, url: str, connect_timeout_s: float = 5.0, *, sharded: bool = False) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._sub_cmd, self._unsub_cmd = (
            (b"SSUBSCRIBE", b"SUNSUBSCRIBE") if sharded else (b"SUBSCRIBE", b"UNSUBSCRIBE")
        )
        self.transport: asyncio.Transport | None = None
        self.on_message: OnMessage = lambda c, d: None
        self.on_subscribed: OnSubscribed = lambda c: None
        self._on_lost: OnLost | None = None
        self._replies: asyncio.Queue[Any] = asyncio.Queue()

    async def connect(
        self, on_message: OnMessage, on_subscribed: OnSubscribed, on_lost: OnLost
    ) -> None:
        u = urlparse(self.url)
        loop = asyncio.get_running_loop()
        self.on_message, self.on_subscribed = on_message, on_subscribed
        try:
            if u.scheme == "unix":
                conn = loop.create_unix_connection(lambda: _Protocol(self), u.path)
            else:
                conn = loop.create_connection(
                    lambda: _Protocol(self), u.hostname or "127.0.0.1", u.port or 6379
                )
            transport, _ = await asyncio.wait_for(conn, self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise OSError(f"cannot connect to Redis at {self.url}: {exc}") from exc
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if u.password:
            auth = [unquote(u.password).encode()]
            if u.username:
                auth.insert(0, unquote(u.username).encode())
            await self._call(b"AUTH", *auth)
        await self._call(b"CLIENT", b"SETNAME", b"nearby-fanout-hub")
        self._on_lost = on_lost

    async def _call(self, *parts: bytes) -> Any:
        """A plain command before subscribing (the reply comes back in order)."""
        assert self.transport is not None
        self.transport.write(command(*parts))
        try:
            reply = await asyncio.wait_for(self._replies.get(), self.connect_timeout_s)
        except TimeoutError as exc:
            self.close()
            raise OSError(f"Redis at {self.url} did not answer {parts[0]!r}") from exc
        if isinstance(reply, BaseException):
            self.close()
            raise OSError(f"Redis at {self.url}: {reply}")
        return reply

    def on_reply(self, reply: Any) -> None:
        self._replies.put_nowait(reply)

    def fail(self, exc: BaseException) -> None:
        if self._on_lost is None:
            self._replies.put_nowait(exc)
        elif self.transport is not None:
            self.transport.abort()

    def subscribe_many(self, channels: Sequence[bytes]) -> None:
        if self.transport is not None and channels:
            self.transport.write(command(self._sub_cmd, *channels))

    def unsubscribe_many(self, channels: Sequence[bytes]) -> None:
        if self.transport is not None and channels:
            self.transport.write(command(self._unsub_cmd, *channels))

    def lost(self, exc: BaseException | None) -> None:
        self.transport = None
        cb, self._on_lost = self._on_lost, None
        if cb is not None:
            cb(exc)
        else:
            self._replies.put_nowait(ConnectionError("connection closed"))

    def close(self) -> None:
        self._on_lost = None
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class ShardedSubscriber:
    """Redis Cluster sharded pub/sub (SSUBSCRIBE): one connection per master.

    The slot map comes from CLUSTER SLOTS at connect time. Channels are grouped
    by slot (one SSUBSCRIBE may not span slots) and sent to the slot's master.
    Confirmations from several connections are re-ordered so that the hub
    still sees them in the order it subscribed. Any lost connection, or an
    error reply such as MOVED after a slot migration, drops them all: the hub
    reconnects (with a fresh slot map), resubscribes and resyncs.
    """

    def __init__(self, url: str, connect_timeout_s: float = 5.0) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._nodes: dict[str, RedisSubscriber] = {}
        self._slots: list[str] = []  # slot -> node url
        self._batches: deque[tuple[list[bytes], set[bytes]]] = deque()
        self._on_subscribed: OnSubscribed = lambda c: None
        self._on_lost: OnLost | None = None

    async def connect(
        self, on_message: OnMessage, on_subscribed: OnSubscribed, on_lost: OnLost
    ) -> None:
        import redis.asyncio as aioredis

        u = urlparse(self.url)
        r = aioredis.Redis.from_url(self.url, socket_connect_timeout=self.connect_timeout_s)
        try:
            ranges = await r.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise OSError(f"cannot read the cluster slots from {self.url}: {exc}") from exc
        finally:
            await r.aclose()
        auth = f"{u.username or ''}:{u.password}@" if u.password else ""
        slots = [""] * 16384
        for item in ranges:
            start, end, master = item[0], item[1], item[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            node = f"redis://{auth}{host or u.hostname}:{int(master[1])}"
            for slot in range(int(start), int(end) + 1):
                slots[slot] = node
        self._slots = slots
        self._on_subscribed, self._on_lost = on_subscribed, on_lost
        self._batches.clear()
        try:
            for node in sorted(set(slots) - {""}):
                sub = RedisSubscriber(node, self.connect_timeout_s, sharded=True)
                await sub.connect(on_message, self._confirmed, self._lost)
                self._nodes[node] = sub
        except OSError:
            self.close()
            raise

    def _node_of(self, channel: bytes) -> RedisSubscriber | None:
        return self._nodes.get(self._slots[key_slot(channel)])

    def _by_slot(self, channels: Sequence[bytes]) -> dict[int, list[bytes]]:
        groups: dict[int, list[bytes]] = {}
        for ch in channels:
            groups.setdefault(key_slot(ch), []).append(ch)
        return groups

    def subscribe_many(self, channels: Sequence[bytes]) -> None:
        if not channels:
            return
        self._batches.append((list(channels), set(channels)))
        for slot, group in self._by_slot(channels).items():
            node = self._nodes.get(self._slots[slot])
            if node is None:
                self._lost(ConnectionError(f"no node serves slot {slot}"))
                return
            node.subscribe_many(group)

    def unsubscribe_many(self, channels: Sequence[bytes]) -> None:
        for slot, group in self._by_slot(channels).items():
            node = self._nodes.get(self._slots[slot])
            if node is not None:
                node.unsubscribe_many(group)

    def _confirmed(self, channel: bytes) -> None:
        for _, remaining in self._batches:
            if channel in remaining:
                remaining.discard(channel)
                break
        while self._batches and not self._batches[0][1]:
            done, _ = self._batches.popleft()
            for ch in done:
                self._on_subscribed(ch)

    def _lost(self, exc: BaseException | None) -> None:
        cb, self._on_lost = self._on_lost, None
        self.close()
        if cb is not None:
            cb(exc)

    def close(self) -> None:
        nodes, self._nodes = self._nodes, {}
        for node in nodes.values():
            node.close()
