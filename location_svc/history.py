"""The history pipeline: Redis Streams `history:{k}` (12 shards) → Postgres.

Guarantees (see docs/location.md):
- an entry is acknowledged (XACK) only after the transaction holding it
  committed, so a crash anywhere leaves it pending; acknowledged entries are
  trimmed from the stream once a second (HistoryBuffer.trim);
- entries pending on a writer that stopped reading for HISTORY_CLAIM_IDLE_S
  are taken over with XAUTOCLAIM by any live writer (several replicas share
  the consumer group, each entry is delivered to one of them);
- a batch written twice (replay after a crash) creates no duplicates: the
  table's key is (user_id, recorded_at) and the fallback write is
  INSERT ... ON CONFLICT DO NOTHING;
- while Postgres is down, writers retry with backoff and never drop anything;
  the buffer grows up to HISTORY_BUFFER_MAX (see HistoryBuffer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError, ResponseError

from location_svc import metrics, store
from location_svc.lag import HistoryLag, group_states
from mesh import keys, resp
from mesh.redis import RedisEngine, check
from mesh.server import stop_task

log = logging.getLogger("location_svc.history")

MAX_BACKOFF_S = 5.0
STOP_TIMEOUT_S = 5.0
DEAD_CONSUMER_IDLE_MS = 3_600_000  # forget consumers with nothing pending after 1 h


async def ensure_groups(engine: RedisEngine, streams: list[str] | None = None) -> None:
    """Create the consumer group of each stream (from its first entry) unless
    it exists; one round trip per node."""
    streams = keys.history_streams() if streams is None else streams
    replies = await engine.execute(
        [
            (s, resp.command(b"XGROUP", b"CREATE", s, keys.HISTORY_GROUP, b"0", b"MKSTREAM"))
            for s in streams
        ]
    )
    check([r for r in replies if not resp.is_error(r, "BUSYGROUP")])


class HistoryBuffer:
    """Watches the size of the buffer (every second) and enforces its bound.

    At the bound new entries are not added: they are counted as dropped and
    logged, while reports keep succeeding. The live cache and fan-out matter
    more than history, and an unbounded buffer would take Redis down with it.
    The bound is checked once a second, so it can be overshot by one second
    of traffic.
    """

    def __init__(
        self,
        engine: RedisEngine,
        bound: int,
        interval_s: float = 1.0,
        pool: AsyncConnectionPool | None = None,
    ) -> None:
        self.engine = engine
        self.lag = HistoryLag(engine, pool)
        self.bound = bound
        self.interval_s = interval_s
        self.length = 0
        self.accepting = True
        self._warned = False
        self._dropped_since_log = 0
        self._last_drop_log = 0.0
        self._unreplicated_since_log = 0
        self._last_unreplicated_log = 0.0

    async def refresh(self) -> None:
        res = await self.engine.execute(
            [(stream, resp.command(b"XLEN", stream)) for stream in keys.history_streams()]
        )
        check(res)
        self.length = sum(res)
        metrics.HISTORY_LAG.set(await self.lag.measure())
        metrics.HISTORY_BUFFER.set(self.length)
        metrics.HISTORY_BUFFER_RATIO.set(self.length / self.bound)
        self.accepting = self.length < self.bound
        if self.length >= 0.8 * self.bound and not self._warned:
            self._warned = True
            log.warning(
                "history buffer at %d of %d entries: is Postgres reachable?",
                self.length,
                self.bound,
            )
        elif self.length < 0.7 * self.bound and self._warned:
            self._warned = False
            log.info("history buffer back to %d of %d entries", self.length, self.bound)

    def dropped(self, count: int) -> None:
        metrics.HISTORY_DROPPED.inc(count)
        self._dropped_since_log += count
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:
            log.error(
                "history buffer full (%d entries): %d history entries dropped; "
                "reports still succeed. Restore Postgres or raise HISTORY_BUFFER_MAX",
                self.length,
                self._dropped_since_log,
            )
            self._dropped_since_log = 0
            self._last_drop_log = now

    def unreplicated(self, count: int) -> None:
        """Entries answered before their replicas confirmed them (WAIT timed out)."""
        metrics.HISTORY_UNREPLICATED.inc(count)
        self._unreplicated_since_log += count
        now = time.monotonic()
        if now - self._last_unreplicated_log >= 10.0:
            log.warning(
                "%d history entries were not confirmed by a replica in time: a failover "
                "of their master would lose them (is a replica down or lagging?)",
                self._unreplicated_since_log,
            )
            self._unreplicated_since_log = 0
            self._last_unreplicated_log = now

    async def trim(self) -> int:
        """Delete the entries every writer is done with; returns how many.

        Entries before both the group's last-delivered id and its oldest
        pending (unacknowledged) entry were committed and acknowledged. One
        XTRIM MINID per stream costs far less than an XDEL per entry. The two
        ids are read in one MULTI, so an entry delivered meanwhile (newer than
        the last-delivered id read) is never trimmed.
        """
        trims: list[tuple[str, bytes]] = []
        for stream, last, pending in await group_states(self.engine):
            if pending[0]:
                min_id = _text(pending[1])
            else:
                ms, seq = _text(last).split("-")
                min_id = f"{ms}-{int(seq) + 1}"
            trims.append((stream, resp.command(b"XTRIM", stream, b"MINID", min_id)))
        replies = await self.engine.execute(trims)
        check(replies)
        return sum(int(r) for r in replies)

    async def run(self) -> None:
        while True:
            try:
                await self.trim()
                await self.refresh()
            except RedisError as exc:
                log.warning("cannot read the history buffer size: %s", exc)
            await asyncio.sleep(self.interval_s)


def _entry_id(value: bytes | str) -> tuple[int, int]:
    """A stream entry id as numbers (ms, seq), for ordering."""
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class HistoryWriter:
    """One consumer of the group; a task per stream shard."""

    def __init__(
        self,
        redis_url: str,
        database_url: str,
        batch_size: int,
        claim_idle_s: float,
        block_ms: int = 1000,
        linger_s: float = 0.2,
        *,
        cluster: bool = False,
        retry_s: float = 2.0,
    ) -> None:
        # Its own engine: blocking reads hold connections (one per shard task).
        self.engine = RedisEngine(
            redis_url,
            cluster=cluster,
            max_connections=2 * keys.HISTORY_SHARDS + 4,
            retry_s=retry_s,
        )
        self.database_url = database_url
        self.batch_size = batch_size
        self.claim_idle_ms = max(1, int(claim_idle_s * 1000))
        self.block_ms = block_ms
        self.linger_s = linger_s
        self.consumer = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._tasks: list[asyncio.Task[None]] = []
        self._outage = False
        streams = keys.history_streams()
        self._shards = {s: k for k, s in enumerate(streams)}
        self._deletes = {s: keys.history_deletes(k) for k, s in enumerate(streams)}

    async def start(self) -> None:
        await self.engine.open()
        await ensure_groups(self.engine)
        self._tasks = [
            asyncio.create_task(self._run(stream), name=f"history-writer-{k}")
            for k, stream in enumerate(keys.history_streams())
        ]

    async def stop(self) -> None:
        """Cancel the shard tasks and wait for them, but never for ever: a
        shutdown must finish within its grace period. An abandoned task's
        unacknowledged entries are reclaimed by the next writer."""
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*(stop_task(task) for task in tasks))
        await self.engine.aclose()

    async def _run(self, stream: str) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        backoff = 0.2
        next_claim = 0.0
        unacked: list[bytes] = []  # committed, acknowledged with the next read
        held: list[tuple[bytes, Any]] = []  # read, not committed yet: retried first
        seen: Any = None  # the shard's deletion counter when `held` was read
        try:
            while True:
                try:
                    if not held and time.monotonic() >= next_claim:
                        conn = await self._reclaim(stream, conn)
                        next_claim = time.monotonic() + self.claim_idle_ms / 4000
                    if not held:
                        held, seen = await self._read(stream, unacked)
                        unacked = []
                    if held:
                        conn = await self._write(stream, held, conn, seen)
                        unacked = [entry_id for entry_id, _ in held]
                        partial = len(held) < self.batch_size
                        held = []
                        if partial:
                            # A short batch means the buffer is drained: let the
                            # next one grow (a commit per handful of rows costs
                            # far more CPU than the rows; history is not urgent).
                            await asyncio.sleep(self.linger_s)
                    backoff = 0.2
                except ResponseError as exc:
                    if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):
                        # The stream or group vanished (Redis restarted without
                        # persistence, or was flushed): recreate the group.
                        log.warning("history stream %s or its group is gone: recreating", stream)
                        with contextlib.suppress(RedisError, OSError):
                            await ensure_groups(self.engine, [stream])
                        await asyncio.sleep(0.1)
                    else:
                        log.error("history writer: Redis refused a command: %s", exc)
                        await asyncio.sleep(backoff)
                        backoff = min(MAX_BACKOFF_S, backoff * 2)
                except (psycopg.Error, OSError, RedisError) as exc:
                    if not self._outage:
                        self._outage = True
                        log.error(
                            "history writer cannot write (%s); entries stay buffered, "
                            "retrying with backoff",
                            exc,
                        )
                    if conn is not None:
                        await conn.close()
                        conn = None
                    await asyncio.sleep(backoff)
                    backoff = min(MAX_BACKOFF_S, backoff * 2)
        finally:
            if unacked:  # stopping: acknowledge what was committed (else it is replayed)
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await asyncio.wait_for(self._ack(stream, unacked), STOP_TIMEOUT_S / 2)
            if conn is not None:
                with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                    await asyncio.wait_for(conn.close(), STOP_TIMEOUT_S / 2)

    async def _read(self, stream: str, ack: list[bytes]) -> tuple[list[tuple[bytes, Any]], Any]:
        """Acknowledge the last committed batch and read the next, in one round
        trip; also returns the shard's deletion counter, read before the entries."""
        commands = []
        if ack:
            commands.append((stream, resp.command("XACK", stream, keys.HISTORY_GROUP, *ack)))
        counter = self._deletes[stream]
        commands.append((counter, resp.command("GET", counter)))
        commands.append(
            (
                stream,
                resp.command(
                    "XREADGROUP",
                    "GROUP",
                    keys.HISTORY_GROUP,
                    self.consumer,
                    "COUNT",
                    self.batch_size,
                    "BLOCK",
                    self.block_ms,
                    "STREAMS",
                    stream,
                    ">",
                ),
            )
        )
        replies = await self.engine.execute(commands, timeout_s=self.block_ms / 1000 + 10)
        check(replies)
        seen, res = replies[-2], replies[-1]
        if not res:
            return [], seen
        # A map (RESP3) or a list (RESP2) of stream -> [[id, [field, value, ...]], ...].
        streams = res.items() if isinstance(res, dict) else res
        return [(entry[0], entry[1]) for _, entries in streams for entry in entries], seen

    async def _ack(self, stream: str, ids: Sequence[bytes]) -> None:
        await self.engine.client.xack(stream, keys.HISTORY_GROUP, *ids)

    async def _reclaim(
        self, stream: str, conn: psycopg.AsyncConnection[Any] | None
    ) -> psycopg.AsyncConnection[Any] | None:
        """Take over entries a dead writer read but never acknowledged.

        Also picks up this consumer's own pending entries left by a failed
        commit, since their idle time grows while we retry.
        """
        cursor: bytes | str = "0-0"
        counter = self._deletes[stream]
        while True:
            seen, res = await self.engine.execute(
                [
                    (counter, resp.command("GET", counter)),
                    (
                        stream,
                        resp.command(
                            "XAUTOCLAIM",
                            stream,
                            keys.HISTORY_GROUP,
                            self.consumer,
                            self.claim_idle_ms,
                            cursor,
                            "COUNT",
                            self.batch_size,
                        ),
                    ),
                ]
            )
            check([seen, res])
            cursor, entries = res[0], [(e[0], e[1]) for e in res[1]]
            if entries:
                metrics.HISTORY_RECLAIMED.inc(len(entries))
                log.info("reclaimed %d history entries from %s", len(entries), stream)
                conn = await self._write(stream, entries, conn, seen)
                await self._ack(stream, [entry_id for entry_id, _ in entries])
            if cursor in (b"0-0", "0-0"):
                break
        await self._forget_dead_consumers(stream)
        return conn

    async def _forget_dead_consumers(self, stream: str) -> None:
        for c in await self.engine.client.xinfo_consumers(stream, keys.HISTORY_GROUP):
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            if name != self.consumer and c["pending"] == 0 and c["idle"] > DEAD_CONSUMER_IDLE_MS:
                await self.engine.client.xgroup_delconsumer(stream, keys.HISTORY_GROUP, name)

    async def _write(
        self,
        stream: str,
        entries: Sequence[tuple[bytes, Any]],
        conn: psycopg.AsyncConnection[Any] | None,
        seen: Any,
    ) -> psycopg.AsyncConnection[Any]:
        """Commit the rows of raw stream entries ([b"r", row] fields; None if deleted).

        `seen` is the shard's deletion counter read before the entries: if it
        changed by the time the shard's lock is held, a deletion ran
        meanwhile, and only the entries still in the stream are written.
        """
        found = [(eid, f[1]) for eid, f in entries if f and f[0] == keys.HISTORY_ROW]
        rows = [row for _, row in found]
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(self.database_url, connect_timeout=5)

        async def recheck() -> Sequence[bytes]:
            counter = self._deletes[stream]
            (now,) = await self.engine.execute([(counter, resp.command("GET", counter))])
            check([now])
            if now == seen:
                return rows
            # (a counter that vanished means Redis lost its data: entries not
            # in the stream any more are not written either, as if deleted)
            ids = sorted((_entry_id(eid), eid) for eid, _ in found)
            (present,) = await self.engine.execute(
                [(stream, resp.command("XRANGE", stream, ids[0][1], ids[-1][1]))]
            )
            check([present])
            still = {entry[0] for entry in present}
            kept = [row for eid, row in found if eid in still]
            metrics.HISTORY_SKIPPED.inc(len(rows) - len(kept))
            return kept

        if rows:
            inserted = await store.write_batch(
                conn, rows, shard=self._shards[stream], recheck=recheck
            )
            metrics.HISTORY_ROWS.inc(inserted)
            metrics.HISTORY_BATCHES.labels("copy" if inserted == len(rows) else "merge").inc()
        if self._outage:
            self._outage = False
            log.warning("history writer recovered: writing buffered entries")
        return conn
