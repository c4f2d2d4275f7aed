"""The Redis engine: one Redis, or a Redis Cluster (`settings.redis_cluster`).

Every service gets the same two things from it, on both:

- `client`: a pooled redis-py client for ordinary commands (in cluster mode
  a `redis.asyncio.cluster.RedisCluster`, which routes by key, follows
  MOVED/ASK and refreshes the topology itself);
- `execute(commands)`: the hot path. Commands are pre-packed RESP
  (`mesh.resp.command`), each with the key that routes it. They are grouped
  per node, each node's group goes as one write on one connection, the nodes
  concurrently, and the replies come back in the order of the commands. So a
  batch costs one round trip per node it touches.

What the engine absorbs, for `execute` as for `transactions`:

- `MOVED` (a slot moved for good): the slot map is patched and just those
  commands are re-sent to the new owner; `ASK` (a slot migrating): those
  commands are re-sent to the target, each preceded by `ASKING`. A command
  that got a redirect did not run, so nothing is lost or written twice.
- `TRYAGAIN` (a multi-key command during a slot migration), `CLUSTERDOWN`
  (a failover under way) and `LOADING` (a restarted Redis reading its AOF):
  those commands are re-sent with backoff for up to `retry_s`, then their
  error is returned.
- `NOSCRIPT`: the script (made with `script()`) is loaded on that node and
  the call re-sent.
- A pooled connection Redis closed (it restarted, or timed it out) is
  retried once on a fresh connection, if Redis answered nothing on it. A node
  that cannot be reached fails its commands (`partial=True` puts the error
  in their place, otherwise it is raised) and the topology is refreshed.

`execute_durable` adds one `WAIT numreplicas timeout` per node and round trip
after its writes, and counts the commands whose replicas did not confirm.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    MovedError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mesh import keys, resp
from mesh.redis_checks import cluster_problem_async

log = logging.getLogger("mesh.redis")

Routed = tuple[bytes | str, bytes]
"""(the key that routes it, the packed command)."""

REDIRECTS = Counter("redis_redirects_total", "Cluster redirects followed by the engine", ["kind"])
RETRIES = Counter(
    "redis_retries_total",
    "Commands re-sent by the engine (tryagain, clusterdown, loading, noscript, closed)",
    ["reason"],
)
REFRESHES = Counter(
    "redis_topology_refreshes_total", "Cluster topology refreshes after a node failed"
)

_MAX_REDIRECTS = 8
_MAX_BACKOFF_S = 0.5
_WAITED = {"TRYAGAIN": "tryagain", "CLUSTERDOWN": "clusterdown", "LOADING": "loading"}


def client(url: str, *, max_connections: int = 64, wait_s: float = 10.0) -> aioredis.Redis:
    """A pooled standalone client that returns bytes (payloads are protobuf).

    The pool blocks (up to `wait_s`) when all its connections are busy instead
    of failing: under a burst (a reconnect storm) calls queue for a connection
    rather than erroring with "Too many connections".
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=wait_s,
        health_check_interval=30,
        socket_keepalive=True,
        socket_connect_timeout=5,
        decode_responses=False,
    )
    return aioredis.Redis.from_pool(pool)


def cluster_client(url: str, *, max_connections: int = 64) -> RedisCluster:
    """A pooled cluster client (bytes replies), from any node's URL."""
    return RedisCluster.from_url(
        url,
        max_connections=max_connections,
        health_check_interval=30,
        socket_keepalive=True,
        socket_connect_timeout=5,
        decode_responses=False,
    )


# --- scripts -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script called by SHA (`call`); the engine loads it where missing."""

    text: str
    sha: str

    def call(self, script_keys: Sequence[str | bytes], *args: bytes | str | int | float) -> Routed:
        """EVALSHA routed by its first key (all keys must share its slot)."""
        return (
            script_keys[0],
            resp.command(b"EVALSHA", self.sha, len(script_keys), *script_keys, *args),
        )


# --- the engine --------------------------------------------------------------


@dataclass(slots=True)
class _Unit:
    """Commands that must go together on one connection: one command, or a
    MULTI ... EXEC block."""

    index: int
    key: bytes | str
    frames: list[bytes]
    tx: bool = False
    node: ClusterNode | None = None  # set by an ASK: the node to ask
    asking: bool = False
    load: bytes | None = None  # SCRIPT LOAD to send first (after NOSCRIPT)
    loaded: bool = False
    last: Any = None  # the last (error) reply, returned when retries run out


_MULTI = resp.command(b"MULTI")
_EXEC = resp.command(b"EXEC")
_ASKING = resp.command(b"ASKING")


class RedisEngine:
    """One Redis or a Redis Cluster, behind the same methods (see module doc)."""

    def __init__(
        self,
        url: str,
        *,
        cluster: bool = False,
        max_connections: int = 64,
        retry_s: float = 2.0,
        command_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.cluster = cluster
        self.retry_s = retry_s
        self.command_timeout_s = command_timeout_s
        self.publish = keys.publish_verb(cluster)
        self.client: aioredis.Redis | RedisCluster
        if cluster:
            # headroom above the engine's own round trips (at most
            # max_connections per node) for the client's ordinary commands
            self._cluster: RedisCluster | None = cluster_client(
                url, max_connections=max_connections + 16
            )
            self.client = self._cluster
        else:
            self._cluster = None
            self.client = client(url, max_connections=max_connections)
        self._scripts: dict[bytes, str] = {}
        self._refresh: asyncio.Task[None] | None = None
        # redis-py's cluster nodes fail (MaxConnectionsError) when their pool
        # is exhausted; round trips to a node queue here instead, like the
        # standalone BlockingConnectionPool.
        self._max_connections = max_connections
        self._per_node: dict[str, asyncio.Semaphore] = {}

    async def open(self) -> None:
        """Check the server; raises OSError with one clear line when unusable."""
        if self._cluster is not None:
            problem = await cluster_problem_async(self.url)
            if problem is not None:
                raise OSError(problem)
            try:
                await self._cluster.initialize()
            except (RedisError, OSError) as exc:
                raise OSError(f"cannot open the Redis Cluster at {self.url}: {exc}") from exc
            return
        try:
            info: Any = await self.client.info("cluster")
        except (RedisError, OSError) as exc:
            raise OSError(f"cannot connect to Redis at {self.url}: {exc}") from exc
        if str(info.get("cluster_enabled", "0")) == "1":
            raise OSError(
                f"REDIS_URL={self.url} is a node of a Redis Cluster: set REDIS_CLUSTER=1 "
                "(or point REDIS_URL at a standalone Redis)"
            )

    async def masters_all_replicated(self) -> bool:
        """True on a cluster in which every master (with slots) has a replica."""
        if self._cluster is None:
            return False
        nodes: dict[str, Any] = await self._cluster.cluster_nodes()
        masters = {
            n["node_id"]: 0
            for n in nodes.values()
            if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"]
        }
        for n in nodes.values():
            if "slave" in n["flags"] and "fail" not in n["flags"] and n["master_id"] in masters:
                masters[n["master_id"]] += 1
        return bool(masters) and min(masters.values()) >= 1

    async def aclose(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        await self.client.aclose()

    def script(self, text: str) -> Script:
        sha = hashlib.sha1(text.encode()).hexdigest()
        self._scripts[sha.encode()] = text
        return Script(text, sha)

    # --- public calls ----------------------------------------------------

    async def execute(
        self, commands: Sequence[Routed], *, partial: bool = False, timeout_s: float | None = None
    ) -> list[Any]:
        """Replies in order; error replies in place (`hiredis.ReplyError`).

        A node that could not be reached: with `partial`, its commands hold
        the exception; without, it is raised (after every node answered)."""
        if self._cluster is None:
            results, _ = await self._standalone(commands, None, timeout_s)
        else:
            units = [_Unit(i, key, [packed]) for i, (key, packed) in enumerate(commands)]
            results, _ = await self._run(units, None, timeout_s)
        return results if partial else _raise_failures(results)

    async def execute_durable(
        self, commands: Sequence[Routed], replicas: int, timeout_ms: int
    ) -> tuple[list[Any], int]:
        """`execute(partial=True)` plus `WAIT replicas timeout_ms` on each node
        after its writes; also returns how many commands that succeeded were
        not confirmed by `replicas` replicas within the timeout."""
        if self._cluster is None:
            return await self._standalone(commands, (replicas, timeout_ms), None)
        units = [_Unit(i, key, [packed]) for i, (key, packed) in enumerate(commands)]
        return await self._run(units, (replicas, timeout_ms), None)

    async def _standalone(
        self,
        commands: Sequence[Routed],
        durable: tuple[int, int] | None,
        timeout_s: float | None,
    ) -> tuple[list[Any], int]:
        """One Redis: all commands in one round trip, without per-command
        bookkeeping (the hot path); only replies that ask for a re-send go
        through the general loop."""
        frames = [packed for _, packed in commands]
        timeout = timeout_s or self.command_timeout_s
        if durable is not None:
            frames.append(resp.command(b"WAIT", durable[0], durable[1]))
            timeout += durable[1] / 1000
        if not frames:
            return [], 0
        try:
            replies = await self._roundtrip(None, frames, timeout)
        except Exception as exc:
            return [_as_redis_error(exc, None)] * len(commands), 0
        unconfirmed = 0
        if durable is not None:
            acks = replies.pop()
            if not isinstance(acks, int) or acks < durable[0]:
                unconfirmed = sum(1 for r in replies if not _failed(r))
        again = [
            _Unit(i, commands[i][0], [commands[i][1]])
            for i, r in enumerate(replies)
            if isinstance(r, hiredis.ReplyError) and _redirect_error(r, False) is not None
        ]
        if again:
            for unit in again:
                await self._classify(unit, replies[unit.index])
            retried, more = await self._run(again, durable, timeout_s)
            for unit, reply in zip(again, retried, strict=True):
                replies[unit.index] = reply
            unconfirmed += more
        return replies, unconfirmed

    async def transactions(
        self, blocks: Sequence[tuple[bytes | str, Sequence[bytes]]]
    ) -> list[Any]:
        """Each block (all its keys in the slot of its routing key) as one
        MULTI ... EXEC; the EXEC reply of each, in order (errors in place)."""
        units = [
            _Unit(i, key, [_MULTI, *cmds, _EXEC], tx=True) for i, (key, cmds) in enumerate(blocks)
        ]
        results, _ = await self._run(units, None, None)
        return _raise_failures(results)

    # --- routing ---------------------------------------------------------

    def _node_of(self, unit: _Unit) -> ClusterNode | None:
        if self._cluster is None:
            return None
        if unit.node is not None:
            return unit.node
        slot = keys.slot_of(_hash_tag(unit.key))
        return self._cluster.nodes_manager.get_node_from_slot(slot)

    def _node_at(self, error: AskError) -> ClusterNode:
        assert self._cluster is not None
        manager = self._cluster.nodes_manager
        node = manager.get_node(host=error.host, port=error.port)
        if node is None:
            node = ClusterNode(error.host, error.port, "primary", **manager.connection_kwargs)
            manager.set_nodes(manager.nodes_cache, {node.name: node})
        return node

    def _refresh_topology(self, failed: ClusterNode | None) -> None:
        """Re-read the slot map in the background (one refresh at a time)."""
        if self._cluster is None or (self._refresh is not None and not self._refresh.done()):
            return
        manager = self._cluster.nodes_manager
        if failed is not None:
            manager.move_node_to_end_of_cached_nodes(failed.name)

        async def refresh() -> None:
            REFRESHES.inc()
            try:
                await manager.initialize()
            except (RedisError, OSError) as exc:
                log.warning("cannot refresh the Redis Cluster topology: %s", exc)

        self._refresh = asyncio.create_task(refresh())

    # --- the loop --------------------------------------------------------

    async def _run(
        self, units: list[_Unit], durable: tuple[int, int] | None, timeout_s: float | None
    ) -> tuple[list[Any], int]:
        results: dict[int, Any] = {}
        unconfirmed = 0
        pending = units
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_s
        backoff = 0.01
        redirected = 0  # rounds that followed a redirect (waits are bounded by time)
        timeout = timeout_s or self.command_timeout_s
        while pending:
            groups: dict[str, tuple[ClusterNode | None, list[_Unit]]] = {}
            for unit in pending:
                try:
                    node = self._node_of(unit)
                except SlotNotCoveredError as exc:
                    self._refresh_topology(None)
                    results[unit.index] = RedisConnectionError(str(exc))
                    continue
                name = node.name if node is not None else ""
                groups.setdefault(name, (node, []))[1].append(unit)
            outcomes = await asyncio.gather(
                *(self._send(node, group, durable, timeout) for node, group in groups.values()),
                return_exceptions=True,
            )
            retry: list[_Unit] = []
            wait = now = False
            for (node, group), outcome in zip(groups.values(), outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, Exception):
                        raise outcome
                    self._refresh_topology(node)
                    failure = _as_redis_error(outcome, node)
                    for unit in group:
                        results[unit.index] = failure
                    continue
                replies, acks = outcome
                for unit, reply in zip(group, replies, strict=True):
                    verdict = await self._classify(unit, reply)
                    if verdict is None:
                        results[unit.index] = reply[-1] if unit.tx else reply
                        if durable is not None and acks < durable[0] and not _failed(reply):
                            unconfirmed += 1
                        continue
                    retry.append(unit)
                    wait = wait or verdict == "wait"
                    now = now or verdict == "now"
            if not retry:
                break
            redirected += now
            if redirected > _MAX_REDIRECTS or (wait and loop.time() + backoff > deadline):
                for unit in retry:
                    results[unit.index] = unit.last
                break
            if wait:
                await asyncio.sleep(backoff)
                backoff = min(_MAX_BACKOFF_S, backoff * 2)
            pending = retry
        return [results[unit.index] for unit in units], unconfirmed

    async def _classify(self, unit: _Unit, reply: Any) -> str | None:
        """None: done (the reply stands); "now": re-send at once; "wait": re-send
        after a backoff. Updates the unit's routing for the re-send."""
        error = _redirect_error(reply, unit.tx)
        if error is None:
            return None
        unit.last = reply[-1] if unit.tx and isinstance(reply, list) else reply
        text = str(error)
        word = text.split(" ", 1)[0]
        unit.asking = False
        if self._cluster is not None and word == "MOVED":
            REDIRECTS.labels("moved").inc()
            unit.node = None
            await self._cluster.nodes_manager.move_slot(MovedError(text.split(" ", 1)[1]))
            return "now"
        if self._cluster is not None and word == "ASK":
            REDIRECTS.labels("ask").inc()
            unit.node = self._node_at(AskError(text.split(" ", 1)[1]))
            unit.asking = True
            return "now"
        if word in _WAITED:
            RETRIES.labels(_WAITED[word]).inc()
            unit.node = None
            return "wait"
        if word == "NOSCRIPT" and not unit.tx and not unit.loaded:
            sha = resp.parse_command(unit.frames[0])[1]
            text_of = self._scripts.get(sha)
            if text_of is None:
                return None
            RETRIES.labels("noscript").inc()
            unit.load = resp.command(b"SCRIPT", b"LOAD", text_of)
            unit.loaded = True
            return "now"
        return None

    # --- one node, one round trip ------------------------------------------

    async def _send(
        self,
        node: ClusterNode | None,
        units: list[_Unit],
        durable: tuple[int, int] | None,
        timeout_s: float,
    ) -> tuple[list[Any], int]:
        """Send the units to one node in one write; per unit its reply (a
        transaction's: the list of its replies), and WAIT's replica count."""
        frames: list[bytes] = []
        spans: list[tuple[int, int]] = []
        for unit in units:
            if unit.load is not None:
                frames.append(unit.load)
                unit.load = None
            if unit.asking:
                frames.append(_ASKING)
            start = len(frames)
            frames.extend(unit.frames)
            spans.append((start, len(frames)))
        if durable is not None:
            frames.append(resp.command(b"WAIT", durable[0], durable[1]))
            timeout_s += durable[1] / 1000
        replies = await self._roundtrip(node, frames, timeout_s)
        out = [
            replies[start] if not unit.tx else replies[start:end]
            for unit, (start, end) in zip(units, spans, strict=True)
        ]
        acks = replies[-1] if durable is not None and isinstance(replies[-1], int) else 0
        return out, acks

    async def _roundtrip(
        self, node: ClusterNode | None, frames: list[bytes], timeout_s: float
    ) -> list[Any]:
        if node is None:
            return await self._roundtrip_on(node, frames, timeout_s)
        limit = self._per_node.get(node.name)
        if limit is None:
            limit = self._per_node[node.name] = asyncio.Semaphore(self._max_connections)
        async with limit:
            return await self._roundtrip_on(node, frames, timeout_s)

    async def _roundtrip_on(
        self, node: ClusterNode | None, frames: list[bytes], timeout_s: float
    ) -> list[Any]:
        payload = b"".join(frames)
        for attempt in (0, 1):
            try:
                conn = await self._acquire(node, fresh=attempt == 1)
            except BusyLoadingError as exc:
                return [hiredis.ReplyError(f"LOADING {exc}")] * len(frames)
            out: list[Any] = []
            try:
                async with asyncio.timeout(timeout_s):
                    await resp.roundtrip(conn, payload, len(frames), out)
                return out
            except (RedisConnectionError, OSError) as exc:
                await conn.disconnect(nowait=True)
                if attempt == 0 and not out:
                    RETRIES.labels("closed").inc()
                    continue
                raise RedisConnectionError(f"Redis connection lost: {exc}") from exc
            except TimeoutError as exc:
                await conn.disconnect(nowait=True)
                raise RedisTimeoutError(f"Redis did not answer within {timeout_s:g} s") from exc
            except BaseException:
                # a half-read reply stream cannot be reused: drop the connection
                await conn.disconnect(nowait=True)
                raise
            finally:
                await self._release(node, conn)
        raise AssertionError("unreachable")

    async def _acquire(self, node: ClusterNode | None, *, fresh: bool) -> Connection:
        if node is None:
            pool = self.client.connection_pool  # type: ignore[union-attr]
            conn: Connection = await pool.get_connection()
            if fresh:
                try:
                    await conn.disconnect()
                    await conn.connect()  # type: ignore[no-untyped-call]
                except BaseException:
                    await pool.release(conn)
                    raise
            return conn
        conn = node.acquire_connection()
        try:
            await node.disconnect_if_needed(conn)
            if fresh:
                await conn.disconnect()
            if not conn.is_connected:
                await conn.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            node.release(conn)
            raise
        return conn

    async def _release(self, node: ClusterNode | None, conn: Connection) -> None:
        if node is None:
            await self.client.connection_pool.release(conn)  # type: ignore[union-attr]
        else:
            node.release(conn)


def _hash_tag(key: bytes | str) -> str:
    text = key.decode() if isinstance(key, bytes) else key
    start = text.find("{")
    if start >= 0:
        end = text.find("}", start + 1)
        if end > start + 1:
            return text[start + 1 : end]
    return text


def _redirect_error(reply: Any, tx: bool) -> hiredis.ReplyError | None:
    """The reply (or, in a transaction, the first queued reply) that asks
    for a re-send, if any."""
    candidates = reply[1:-1] if tx and isinstance(reply, list) else [reply]
    if tx and isinstance(reply, list) and reply and resp.is_error(reply[0]):
        candidates = [reply[0], *candidates]
    for item in candidates:
        if isinstance(item, hiredis.ReplyError):
            word = str(item).split(" ", 1)[0]
            if word in ("MOVED", "ASK", "NOSCRIPT") or word in _WAITED:
                return item
    return None


def _failed(reply: Any) -> bool:
    return isinstance(reply, (hiredis.ReplyError, Exception))


def _as_redis_error(exc: Exception, node: ClusterNode | None) -> RedisError:
    where = f" ({node.name})" if node is not None else ""
    if isinstance(exc, RedisError):
        return type(exc)(f"{exc}{where}")
    return RedisConnectionError(f"{exc}{where}")


def _raise_failures(results: list[Any]) -> list[Any]:
    for item in results:
        if isinstance(item, Exception) and not isinstance(item, hiredis.ReplyError):
            raise item
    return results


def check(replies: Sequence[Any]) -> None:
    """Raise the first error among replies (as a redis-py exception)."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        if isinstance(reply, Exception):
            raise reply
