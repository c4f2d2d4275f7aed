"""The Redis side of the hub: pub/sub transports behind one small interface.

The hub (hub.py) needs five things from a pub/sub transport: send
SUBSCRIBE/UNSUBSCRIBE for many channels at once, hear each message, hear the
confirmation of each batch of subscriptions (in the order they were asked
for), learn that the whole transport is gone, and learn that some channels
were lost and are subscribed again (so their listeners resync).

- `RedisSubscriber` (here): one standalone Redis, one connection.
- `ShardedSubscriber` (sharded.py): Redis Cluster sharded pub/sub, one
  connection per master, following slot moves, MOVED and failovers itself.

Both read with an asyncio protocol feeding the hiredis reader, so a message
costs one parse and one synchronous callback, with no await per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlparse

import hiredis

from fanout_svc import metrics
from mesh.resp import command

log = logging.getLogger("fanout_svc.subscriber")

READY_TIMEOUT_S = 60.0
"""How long a connection waits for a Redis that is loading its data to be ready."""
READY_POLL_MAX_S = 0.25

OnMessage = Callable[[bytes, bytes], None]
"""(channel, payload) of a published message."""
OnSubscribed = Callable[[bytes], None]
"""Subscriptions up to this channel are confirmed (in the order asked for; a
transport may report only the last channel of each `subscribe_many`)."""
OnLost = Callable[[BaseException | None], None]
"""The transport is gone; every subscription with it."""
OnRecovered = Callable[[Sequence[bytes]], None]
"""These channels were lost (a slot moved, a node died) and are subscribed
again: whatever was published on them in between is lost."""


def _ignore(channel: bytes, data: bytes) -> None:
    pass


class Subscriber(Protocol):
    """A pub/sub transport owned by exactly one hub."""

    async def connect(
        self,
        on_message: OnMessage,
        on_subscribed: OnSubscribed,
        on_lost: OnLost,
        on_recovered: OnRecovered,
    ) -> None:
        """Open the connection(s); raises OSError when Redis is unreachable."""
        ...

    def subscribe_many(self, channels: Sequence[bytes]) -> None:
        """Send the subscriptions (does not wait; confirmations arrive later)."""
        ...

    def unsubscribe_many(self, channels: Sequence[bytes]) -> None:
        """Send the unsubscriptions (does not wait)."""
        ...

    def close(self) -> None:
        """Drop the connection(s) (on_lost is not called)."""
        ...


class RespConnection(asyncio.Protocol):
    """One RESP2 connection read by hiredis: connect, AUTH and CLIENT SETNAME
    (`open`), plain commands before the connection subscribes (`call`), then
    the subclass's `data_received` takes over."""

    def __init__(self, url: str, connect_timeout_s: float) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.on_message: OnMessage = _ignore  # set by the subscriber that owns it
        self._replies: asyncio.Queue[Any] = asyncio.Queue()

    async def open(self, name: bytes = b"nearby-fanout-hub") -> None:
        u = urlparse(self.url)
        loop = asyncio.get_running_loop()
        try:
            if u.scheme == "unix":
                conn = loop.create_unix_connection(lambda: self, u.path)
            else:
                conn = loop.create_connection(
                    lambda: self, u.hostname or "127.0.0.1", u.port or 6379
                )
            await asyncio.wait_for(conn, self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise OSError(f"cannot connect to Redis at {self.url}: {exc}") from exc
        if u.password:
            auth = [unquote(u.password).encode()]
            if u.username:
                auth.insert(0, unquote(u.username).encode())
            await self.call(b"AUTH", *auth)
        await self.call(b"CLIENT", b"SETNAME", name)
        await self.wait_ready()

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """PING until Redis answers PONG, not `-LOADING`.

        A restarted Redis accepts connections, and even SUBSCRIBE, while it
        loads its AOF, but answers every read with LOADING: streams that
        resynchronised then would find no cached location. So the hub
        subscribes (and its streams resync) only once Redis is ready."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = 0.02
        logged = False
        while True:
            reply = await self._exchange(b"PING")
            if not isinstance(reply, hiredis.ReplyError):
                if logged:
                    log.info("Redis at %s finished loading its data", self.url)
                return
            if not str(reply).startswith("LOADING"):
                self.close()
                raise OSError(f"Redis at {self.url}: {reply}")
            if not logged:
                logged = True
                log.warning("Redis at %s is loading its data; waiting for it", self.url)
            if loop.time() + delay > deadline:
                self.close()
                raise OSError(
                    f"Redis at {self.url} is still loading its data after {timeout_s:g} s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, READY_POLL_MAX_S)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    async def call(self, *parts: bytes) -> Any:
        """A plain command before subscribing (the reply comes back in order)."""
        reply = await self._exchange(*parts)
        if isinstance(reply, BaseException):
            self.close()
            raise OSError(f"Redis at {self.url}: {reply}")
        return reply

    async def _exchange(self, *parts: bytes) -> Any:
        """Send one command, return its reply (an error reply too)."""
        if self.transport is None:
            raise OSError(f"Redis at {self.url} closed the connection")
        self.transport.write(command(*parts))
        try:
            reply = await asyncio.wait_for(self._replies.get(), self.connect_timeout_s)
        except TimeoutError as exc:
            self.close()
            raise OSError(f"Redis at {self.url} did not answer {parts[0]!r}") from exc
        if isinstance(reply, ConnectionError):
            raise OSError(f"Redis at {self.url} closed the connection")
        return reply

    def data_received(self, data: bytes) -> None:
        """The hot loop: a published message is one parse and one synchronous
        `on_message` call; every other reply goes to `on_reply`."""
        reader = self.reader
        reader.feed(data)
        on_message = self.on_message
        while True:
            reply: Any = reader.gets()
            if reply is False:
                return
            if type(reply) is list and len(reply) == 3:
                kind = reply[0]
                if kind == b"message" or kind == b"smessage":
                    on_message(reply[1], reply[2])
                    continue
            self.on_reply(reply)

    def on_reply(self, reply: Any) -> None:
        """A reply to `call` (errors included); subclasses handle subscription replies."""
        self._replies.put_nowait(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._replies.put_nowait(ConnectionError("connection closed"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class _Protocol(RespConnection):
    """The standalone connection: confirmations in order, any error is fatal."""

    def __init__(self, owner: RedisSubscriber) -> None:
        super().__init__(owner.url, owner.connect_timeout_s)
        self.owner = owner
        self.on_message = owner.on_message
        self.live = False  # set once connected: errors are fatal from then on

    def on_reply(self, reply: Any) -> None:
        if type(reply) is list and len(reply) == 3:
            if reply[0] == b"subscribe":
                self.owner.on_subscribed(reply[1])
        elif isinstance(reply, hiredis.ReplyError) and self.live:
            self.owner.fail(ConnectionError(f"redis replied with an error: {reply}"))
        else:
            super().on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.owner.lost(exc)


class RedisSubscriber:
    """One standalone-Redis pub/sub connection (RESP2), from a redis:// URL."""

    def __init__(self, url: str, connect_timeout_s: float = 5.0) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.on_message: OnMessage = lambda c, d: None
        self.on_subscribed: OnSubscribed = lambda c: None
        self._on_lost: OnLost | None = None
        self._conn: _Protocol | None = None

    async def connect(
        self,
        on_message: OnMessage,
        on_subscribed: OnSubscribed,
        on_lost: OnLost,
        on_recovered: OnRecovered | None = None,
    ) -> None:
        """`on_recovered` is never called: a lost connection loses everything."""
        self.on_message, self.on_subscribed = on_message, on_subscribed
        conn = _Protocol(self)
        await conn.open()
        conn.live = True
        self._conn = conn
        self._on_lost = on_lost

    def fail(self, exc: BaseException) -> None:
        if self._conn is not None:
            self._conn.close()

    def subscribe_many(self, channels: Sequence[bytes]) -> None:
        conn = self._conn
        if conn is not None and conn.transport is not None and channels:
            conn.transport.write(command(b"SUBSCRIBE", *channels))
            metrics.HUB_COMMANDS.inc()

    def unsubscribe_many(self, channels: Sequence[bytes]) -> None:
        conn = self._conn
        if conn is not None and conn.transport is not None and channels:
            conn.transport.write(command(b"UNSUBSCRIBE", *channels))
            metrics.HUB_COMMANDS.inc()

    def lost(self, exc: BaseException | None) -> None:
        cb, self._on_lost = self._on_lost, None
        if cb is not None:
            cb(exc)

    def close(self) -> None:
        self._on_lost = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
