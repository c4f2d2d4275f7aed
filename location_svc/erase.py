"""Deleting a user's locations: stored history, buffered history, the cache.

A deletion from history must also catch the reports still on their way to
Postgres, including the ones a writer has already read from the buffer and
is about to commit. The protocol, per history shard (one Redis stream):

1. the deletion takes the shard's Postgres lock exclusively, for its whole
   transaction (store.lock_shard);
2. it bumps the shard's deletion counter and deletes the user's matching
   entries from the stream (XDEL, whether delivered to a writer or not);
3. it deletes the matching stored rows, and commits.

A writer reads the counter with each batch and takes the same lock, shared,
in the transaction that commits the batch. Either it got the lock first: its
rows are committed before step 3 runs and step 3 deletes them. Or the
deletion did: the writer then sees the counter changed and writes only the
entries still in the stream. A deleted entry is never written afterwards.
"""

from __future__ import annotations

import datetime as dt

from psycopg_pool import AsyncConnectionPool

from location_svc import metrics, store
from mesh import keys, resp
from mesh.redis import RedisEngine, check

_PAGE = 1000


class Eraser:
    def __init__(self, pool: AsyncConnectionPool, engine: RedisEngine) -> None:
        self.pool = pool
        self.engine = engine

    async def delete_history(
        self, user_id: str, start: dt.datetime | None, end: dt.datetime | None
    ) -> int:
        """Delete the user's history with recorded_at in [start, end) (None: open)."""
        shard = keys.shard_of(user_id, keys.HISTORY_SHARDS)
        async with self.pool.connection() as conn, conn.transaction():
            await store.lock_shard(conn, shard, shared=False)
            buffered = await self._purge_buffer(shard, user_id, start, end)
            stored = await store.delete_rows(conn, user_id, start, end, buffered)
        # a location counts once, whether it was buffered, stored, or both
        deleted = len(buffered) + stored
        metrics.HISTORY_ERASED.inc(deleted)
        return deleted

    async def delete_user(self, user_id: str) -> int:
        """Everything location_svc keeps about a user: the account marker
        (first: no report of the user is recorded from then on), history, the
        cached location, the user's entry in the presence index."""
        acct = keys.account(user_id)
        check(await self.engine.execute([(acct, resp.command(b"DEL", acct))]))
        deleted = await self.delete_history(user_id, None, None)
        loc, index = keys.location(user_id), keys.presence_index_of(user_id)
        replies = await self.engine.execute(
            [(loc, resp.command(b"DEL", loc)), (index, resp.command(b"ZREM", index, user_id))]
        )
        check(replies)
        return deleted + sum(int(r) for r in replies)

    async def _purge_buffer(
        self, shard: int, user_id: str, start: dt.datetime | None, end: dt.datetime | None
    ) -> list[int]:
        """Bump the shard's deletion counter, then XDEL the user's matching
        entries (the buffer is small: trimmed every second while Postgres is
        up); the times (µs since 2000) of the entries deleted."""
        stream, counter = keys.history_stream(shard), keys.history_deletes(shard)
        check(await self.engine.execute([(counter, resp.command(b"INCR", counter))]))
        uid = user_id.encode()
        lo = store.pg_us(start) if start is not None else None
        hi = store.pg_us(end) if end is not None else None
        cursor: bytes = b"-"
        deleted: list[int] = []
        while True:
            (page,) = await self.engine.execute(
                [(stream, resp.command(b"XRANGE", stream, cursor, b"+", b"COUNT", _PAGE))]
            )
            check([page])
            doomed: list[bytes] = []
            times: list[int] = []
            for entry_id, fields in page:
                if not fields or fields[0] != keys.HISTORY_ROW:
                    continue
                owner, us = store.row_key(fields[1])
                if owner == uid and (lo is None or us >= lo) and (hi is None or us < hi):
                    doomed.append(entry_id)
                    times.append(us)
            if doomed:
                (n,) = await self.engine.execute([(stream, resp.command(b"XDEL", stream, *doomed))])
                check([n])
                # one trimmed meanwhile was stored: it still counts once
                deleted += times
            if len(page) < _PAGE:
                return deleted
            cursor = b"(" + page[-1][0]
