"""Redis Cluster sharded pub/sub for the hub: one connection per master.

`ShardedSubscriber` is the hub's transport on a cluster. Channels are grouped
by slot (one SSUBSCRIBE may not span slots) and sent to the slot's master on
that master's single connection; a message costs what it costs on standalone
(one hiredis parse, one synchronous callback).

It never loses a subscription silently. Each channel is tracked to the
connection holding it, and whatever removes it there brings it back at the
slot's owner, after which the hub resyncs the listeners of exactly those
channels (`on_recovered`: pub/sub is at-most-once, what was published in the
gap is lost):

- a `sunsubscribe` pushed by the server (the slot migrated away): resend to
  the old owner, whose `MOVED` names the new one;
- `MOVED` in reply to SSUBSCRIBE: take the slot's new owner from it, resend,
  and refresh the whole map;
- a lost connection (the master died): its channels wait, with backoff, for
  a slot map naming a reachable owner (the promoted replica), then move there;
- a slot map that changed (`CLUSTER SLOTS` every `TOPOLOGY_POLL_S` and after
  any of the above): channels whose slot changed owner move.

Our own SUNSUBSCRIBE and a pushed one look the same on the wire. Every
command is followed by a PING, so each command's replies end with its PONG:
an error reply belongs to the command in front, and a `sunsubscribe` for a
channel the command in front did not ask to drop was pushed by the server.

The hub's barrier keeps its meaning: a `subscribe_many` is confirmed once
each of its channels is confirmed wherever it ended up (or is no longer
wanted), and confirmations are reported in the order the hub asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import hiredis
from redis.crc import key_slot

from fanout_svc import metrics
from fanout_svc.slotmap import SLOTS, SlotMap, read_slot_map
from fanout_svc.subscriber import (
    OnLost,
    OnMessage,
    OnRecovered,
    OnSubscribed,
    RespConnection,
)
from mesh.resp import command

log = logging.getLogger("fanout_svc.sharded")

TOPOLOGY_POLL_S = 2.0
"""How often the slot map is re-read when nothing suggests it changed."""
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
REFRESH_GAP_S = 0.05
"""Least time between two reads of the slot map (a burst of MOVED is one read)."""
MAX_REDIRECTS = 5
"""MOVED replies for one slot between two map reads before waiting for the next read."""

_PING = command(b"PING")
_SSUBSCRIBE, _SUNSUBSCRIBE = b"SSUBSCRIBE", b"SUNSUBSCRIBE"


class _Batch:
    """Channels whose confirmations someone waits for."""

    __slots__ = ("channels", "remaining")

    def __init__(self, channels: list[bytes]) -> None:
        self.channels = channels
        self.remaining = set(channels)


class _Command:
    """An SSUBSCRIBE or SUNSUBSCRIBE whose PONG has not come back yet."""

    __slots__ = ("channels", "left", "sub")

    def __init__(self, sub: bool, channels: list[bytes]) -> None:
        self.sub = sub
        self.channels = channels
        # SUNSUBSCRIBE: the channels whose reply has not come yet
        self.left: set[bytes] | None = None if sub else set(channels)


class _NodeLink(RespConnection):
    """The connection to one master (named "host:port")."""

    def __init__(self, owner: ShardedSubscriber, name: str, url: str, timeout_s: float) -> None:
        super().__init__(url, timeout_s)
        self.owner = owner
        self.name = name
        self.ready = False  # handshake done: commands are written as they come
        self.dead = False
        self.task: asyncio.Task[None] | None = None
        self.sent: deque[_Command] = deque()  # waiting for their PONG, in order
        self._out: list[bytes] = []
        self._write_soon = False
        self.on_message = owner.on_message

    def send(self, sub: bool, channels: list[bytes]) -> None:
        self.sent.append(_Command(sub, channels))
        self._out.append(command(_SSUBSCRIBE if sub else _SUNSUBSCRIBE, *channels))
        self._out.append(_PING)
        metrics.HUB_COMMANDS.inc()
        if self.ready and not self._write_soon:
            self._write_soon = True
            asyncio.get_running_loop().call_soon(self._write)

    def start(self) -> None:
        self.ready = True
        self._write()

    def _write(self) -> None:
        self._write_soon = False
        if self.transport is not None and self._out:
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def on_reply(self, reply: Any) -> None:
        if type(reply) is list:
            n = len(reply)
            if n == 3:
                kind = reply[0]
                if kind == b"ssubscribe":
                    self.owner.confirmed(self, reply[1])
                elif kind == b"sunsubscribe":
                    self._unsubscribed(reply[1])
                return
            if n == 2 and reply[0] == b"pong":
                self._pong()
                return
        if not self.ready:
            super().on_reply(reply)
        elif reply == b"PONG":
            self._pong()
        elif isinstance(reply, hiredis.ReplyError):
            self._error(reply)
        else:
            log.warning("unexpected reply from %s: %r", self.name, reply)

    def _pong(self) -> None:
        if not self.sent:
            log.warning("%s answered a PING we did not send; reconnecting", self.name)
            self.close()
            return
        self.sent.popleft()

    def _error(self, err: hiredis.ReplyError) -> None:
        head = self.sent[0] if self.sent else None
        if head is None:
            log.warning("%s replied %s to no command; reconnecting", self.name, err)
            self.close()
        elif head.sub:
            owner = self.owner
            owner.rejected(self, head.channels, str(err))
        # a failed SUNSUBSCRIBE (MOVED): the slot, and the subscription, are gone here

    def _unsubscribed(self, channel: bytes) -> None:
        head = self.sent[0] if self.sent else None
        if head is not None and head.left is not None and channel in head.left:
            head.left.discard(channel)  # the reply to our own SUNSUBSCRIBE
        else:
            self.owner.pushed_away(self, channel)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.owner.link_lost(self, exc)


_GONE: Any = object()


class ShardedSubscriber:
    """Redis Cluster sharded pub/sub (SSUBSCRIBE), from a seed node's URL."""

    def __init__(
        self, url: str, connect_timeout_s: float = 5.0, poll_s: float = TOPOLOGY_POLL_S
    ) -> None:
        u = urlparse(url)
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.poll_s = poll_s
        self._auth = u.netloc.rpartition("@")[0] + "@" if "@" in u.netloc else ""
        self._seed = f"{u.hostname or '127.0.0.1'}:{u.port or 6379}"
        self._known: dict[str, None] = {self._seed: None}  # every node seen, in order
        self._map = SlotMap([None] * SLOTS, ())
        self._links: dict[str, _NodeLink] = {}
        self._down: dict[str, tuple[float, float]] = {}  # node -> (retry at, backoff)
        # channel -> the link holding it (or None: waiting for a reachable owner)
        self._where: dict[bytes, _NodeLink | None] = {}
        self._homeless: set[bytes] = set()
        self._unconfirmed: set[bytes] = set()
        self._batches: deque[_Batch] = deque()  # the hub's subscribe_many, in order
        self._recovering: list[_Batch] = []
        self._redirects: dict[int, int] = {}
        self._pushed: list[tuple[_NodeLink, bytes]] = []
        self._refresh = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.on_message: OnMessage = lambda c, d: None
        self._on_subscribed: OnSubscribed = lambda c: None
        self._on_recovered: OnRecovered = lambda cs: None

    # --- the Subscriber interface ----------------------------------------
    async def connect(
        self,
        on_message: OnMessage,
        on_subscribed: OnSubscribed,
        on_lost: OnLost,
        on_recovered: OnRecovered,
    ) -> None:
        """Read the slot map and connect to every master. `on_lost` is never
        called: losses are repaired here and reported with `on_recovered`."""
        self._apply(await read_slot_map([self._seed], self.url, self.connect_timeout_s))
        self.on_message, self._on_subscribed = on_message, on_subscribed
        self._on_recovered = on_recovered
        links = [self._link(name) for name in sorted(self._map.masters)]
        await asyncio.gather(*(lk.task for lk in links if lk and lk.task), return_exceptions=True)
        if not any(lk.ready for lk in self._links.values()):
            self.close()
            raise OSError(f"cannot connect to any master of the Redis Cluster at {self.url}")
        self._task = asyncio.create_task(self._watch(), name="hub-topology")

    def subscribe_many(self, channels: Sequence[bytes]) -> None:
        if not channels:
            return
        chs = list(channels)
        self._batches.append(_Batch(chs))
        self._unconfirmed.update(chs)
        self._route(chs)

    def unsubscribe_many(self, channels: Sequence[bytes]) -> None:
        groups: dict[tuple[_NodeLink, int], list[bytes]] = {}
        where = self._where
        for ch in channels:
            link = where.pop(ch, _GONE)
            if link is _GONE:
                continue
            self._unconfirmed.discard(ch)
            if link is None:  # nothing was sent: nothing will answer
                self._homeless.discard(ch)
                self._settle(ch)
            else:
                groups.setdefault((link, key_slot(ch)), []).append(ch)
        for (link, _), chs in groups.items():
            link.send(False, chs)

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        links, self._links = list(self._links.values()), {}
        for link in links:
            link.dead = True
            if link.task is not None:
                link.task.cancel()
            link.close()

    # --- introspection (tests, logs) --------------------------------------
    def node_of(self, channel: bytes) -> str | None:
        """The node holding a channel's subscription (None: not held now)."""
        link = self._where.get(channel)
        return None if link is None else link.name

    def connections(self) -> list[str]:
        return sorted(name for name, link in self._links.items() if link.ready)

    def quiet(self) -> bool:
        """No command sent to a node waits for its replies."""
        return all(not link.sent for link in self._links.values())

    # --- routing ----------------------------------------------------------
    def _link(self, name: str) -> _NodeLink | None:
        """The connection to a node, opened if needed; None while it is down."""
        link = self._links.get(name)
        if link is not None:
            return link
        down = self._down.get(name)
        if down is not None and asyncio.get_running_loop().time() < down[0]:
            return None
        link = _NodeLink(self, name, f"redis://{self._auth}{name}", self.connect_timeout_s)
        self._links[name] = link
        link.task = asyncio.create_task(self._open(link), name=f"hub-link-{name}")
        return link

    async def _open(self, link: _NodeLink) -> None:
        try:
            await link.open()
        except OSError as exc:
            log.warning("cannot connect to cluster node %s: %s", link.name, exc)
            self.link_lost(link, exc)
            return
        if not link.dead:
            self._down.pop(link.name, None)
            link.start()

    def _route(self, channels: list[bytes]) -> None:
        """Send SSUBSCRIBE for each channel to its slot's owner, one per slot."""
        owners = self._map.owners
        where, homeless = self._where, self._homeless
        groups: dict[tuple[_NodeLink, int], list[bytes]] = {}
        waiting = False
        for ch in channels:
            slot = key_slot(ch)
            name = owners[slot]
            link = None if name is None else self._link(name)
            where[ch] = link
            if link is None:
                homeless.add(ch)
                waiting = True
                continue
            if homeless:
                homeless.discard(ch)
            groups.setdefault((link, slot), []).append(ch)
        for (link, _), chs in groups.items():
            link.send(True, chs)
        if waiting:
            self._refresh.set()

    def _lose(self, channels: list[bytes]) -> None:
        """Subscriptions that are gone: subscribe again where they belong now;
        the listeners of those that had been confirmed resync once that is done."""
        unconfirmed = self._unconfirmed
        confirmed = [ch for ch in channels if ch not in unconfirmed]
        if confirmed:
            self._recovering.append(_Batch(confirmed))
            unconfirmed.update(confirmed)
        metrics.HUB_CHANNELS_MOVED.inc(len(channels))
        self._route(channels)

    def _settle(self, channel: bytes) -> None:
        """A channel is confirmed, or no longer wanted: batches waiting for it move on."""
        batches = self._batches
        for b in batches:
            if channel in b.remaining:
                b.remaining.discard(channel)
                break
        while batches and not batches[0].remaining:
            self._on_subscribed(batches.popleft().channels[-1])
        if self._recovering:
            for b in list(self._recovering):
                if channel in b.remaining:
                    b.remaining.discard(channel)
                    if not b.remaining:
                        self._recovering.remove(b)
                        self._on_recovered(b.channels)

    # --- what the node links report ------------------------------------
    def confirmed(self, link: _NodeLink, channel: bytes) -> None:
        held = self._where.get(channel, _GONE)
        if held is link:
            self._unconfirmed.discard(channel)
            self._settle(channel)
        elif held is _GONE:
            self._settle(channel)
        # else: confirmed at a node it has left since; its new home will confirm

    def rejected(self, link: _NodeLink, channels: list[bytes], error: str) -> None:
        where = self._where
        again = [ch for ch in channels if where.get(ch, _GONE) is link]
        for ch in channels:
            if ch not in where:
                self._settle(ch)
        if not again:
            return
        self._refresh.set()
        if error.startswith("MOVED "):
            metrics.HUB_MOVED.inc()
            _, slot_text, addr = error.split()[:3]
            slot = int(slot_text)
            host, _, port = addr.rpartition(":")
            redirects = self._redirects.get(slot, 0) + 1
            self._redirects[slot] = redirects
            if redirects <= MAX_REDIRECTS:
                self._map.move(slot, f"{host or link.name.rpartition(':')[0]}:{port}")
                self._route(again)
                return
        else:
            log.warning("cluster node %s refused SSUBSCRIBE: %s", link.name, error)
        for ch in again:  # until the next slot map
            where[ch] = None
            self._homeless.add(ch)

    def pushed_away(self, link: _NodeLink, channel: bytes) -> None:
        """The node dropped a subscription (its slot migrated away)."""
        metrics.HUB_SUNSUBSCRIBE_PUSHES.inc()
        if self._where.get(channel) is not link:
            return
        if not self._pushed:
            asyncio.get_running_loop().call_soon(self._repair_pushed)
        self._pushed.append((link, channel))
        self._refresh.set()

    def _repair_pushed(self) -> None:
        pushed, self._pushed = self._pushed, []
        lost = [ch for link, ch in pushed if self._where.get(ch) is link]
        if lost:
            log.info("%d shard channels were pushed off their node; resubscribing", len(lost))
            self._lose(lost)

    def link_lost(self, link: _NodeLink, exc: BaseException | None) -> None:
        if link.dead:
            return
        link.dead = True
        link.close()
        if self._links.get(link.name) is link:
            del self._links[link.name]
        if self._closed:
            return
        prev = self._down.get(link.name)
        backoff = BACKOFF_MIN_S if prev is None else min(prev[1] * 2, BACKOFF_MAX_S)
        retry_at = asyncio.get_running_loop().time() + backoff * (0.5 + random.random())
        self._down[link.name] = (retry_at, backoff)
        where = self._where
        for cmd in link.sent:  # confirmations that will never come
            if cmd.sub:
                for ch in cmd.channels:
                    if where.get(ch, _GONE) is _GONE:
                        self._settle(ch)
        lost = [ch for ch, held in where.items() if held is link]
        if link.ready:
            metrics.HUB_NODE_RECONNECTS.inc()
            log.warning(
                "lost the connection to cluster node %s (%s); %d channels move",
                link.name,
                exc,
                len(lost),
            )
        if lost:
            self._lose(lost)
        self._refresh.set()

    # --- topology -----------------------------------------------------------
    def _seeds(self) -> list[str]:
        """Nodes to ask for the map: connected masters, then every other node
        seen, the ones that failed last at the end."""
        up = [name for name, link in self._links.items() if link.ready]
        rest = [n for n in self._known if n not in self._links and n not in self._down]
        down = sorted(self._down, key=lambda n: self._down[n][0])
        return list(dict.fromkeys([*up, *rest, *down]))

    async def _watch(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            wait = backoff if self._homeless else self.poll_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh.wait(), wait)
            self._refresh.clear()
            try:
                new = await read_slot_map(self._seeds(), self.url, self.connect_timeout_s)
            except OSError as exc:
                log.warning("cannot read the cluster's slot map: %s", exc)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            try:
                self._apply(new)
            except Exception:  # a bug here must not stop the repairs for good
                log.exception("applying the cluster's slot map failed")
            backoff = min(backoff * 2, BACKOFF_MAX_S) if self._homeless else BACKOFF_MIN_S
            await asyncio.sleep(REFRESH_GAP_S)

    def _apply(self, new: SlotMap) -> None:
        """Adopt a freshly read map: channels whose slot changed owner move."""
        old, self._map = self._map, new
        self._redirects.clear()
        self._known.update(dict.fromkeys(sorted(new.nodes)))
        if not old.same_owners(new) and old.masters:
            metrics.HUB_TOPOLOGY_CHANGES.inc()
            log.info("the cluster's slot map changed: masters %s", sorted(new.masters))
            self._move_misplaced()
        if self._homeless:
            self._route(list(self._homeless))

    def _move_misplaced(self) -> None:
        owners = self._map.owners
        moved: list[bytes] = []
        stale: dict[tuple[_NodeLink, int], list[bytes]] = {}
        held: set[str] = set()
        for ch, link in self._where.items():
            if link is None:
                continue
            slot = key_slot(ch)
            if owners[slot] != link.name:
                moved.append(ch)
                stale.setdefault((link, slot), []).append(ch)
            else:
                held.add(link.name)
        for (link, _), chs in stale.items():  # best effort: it may have dropped them
            link.send(False, chs)
        if moved:
            log.info("%d channels changed owner with the slot map", len(moved))
            self._lose(moved)
        for name, link in list(self._links.items()):
            if name not in self._map.masters and name not in held and not link.sent:
                link.dead = True
                del self._links[name]
                link.close()
