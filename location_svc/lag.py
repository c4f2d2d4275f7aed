"""`location_history_lag_seconds`: the age of the oldest history entry that
is not in Postgres yet.

The stream itself cannot say that. An entry stays in its stream after it was
committed and acknowledged while an older entry is still pending (the trim
cannot pass the oldest pending entry), and a pending entry may be committed
already: a writer acknowledges a batch with its next read, so a writer
killed between the two leaves a committed batch pending until another writer
reclaims it (`HISTORY_CLAIM_IDLE_S` later) and writes it again (a no-op).
The age of the oldest entry in the stream, or of the oldest pending entry,
would read the dead writer's age all that time while the table is current.

So, per stream, the oldest entry not yet in Postgres is the oldest of:

- the first entry no writer has read yet (after the group's last-delivered id);
- the oldest pending entry that is not found in location_history. A pending
  entry idle less than `VERIFY_AFTER_S` is in a live writer's hands and is
  counted as not written (it is that young anyway); an older one is looked
  up in Postgres by its key (user_id, recorded_at). What was found stays
  found (`_Cursor`): rows are never deleted while their entry is pending.

When Postgres cannot be asked (it is down), pending entries count as not
written: the metric then over-reads, never under-reads.
"""

from __future__ import annotations

import datetime as dt
import logging
import struct
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from location_svc.store import decode_key
from mesh import keys, resp
from mesh.redis import RedisEngine, check

log = logging.getLogger("location_svc.lag")

VERIFY_AFTER_S = 2.0
"""Pending entries idle at least this long are looked up in Postgres."""
CHUNK = 500
"""Pending entries read per stream and refresh, oldest first."""
LOOKUP_TIMEOUT_S = 0.5
"""The Postgres lookup may take this long (the buffer's refresh loop waits for it)."""

_FOUND = (
    "SELECT k.u, k.t FROM unnest(%s::text[], %s::timestamptz[]) AS k(u, t) "
    "WHERE EXISTS (SELECT 1 FROM location_history h WHERE h.user_id = k.u AND h.recorded_at = k.t)"
)


def id_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


@dataclass(slots=True)
class _Cursor:
    """Every entry pending on a stream up to `last` is known to be in Postgres.

    A stream's pending list only grows at its end (new deliveries have ids
    above the last-delivered id), so the known prefix stays known."""

    last: bytes | None = None

    def after(self) -> bytes:
        return b"(" + self.last if self.last is not None else b"-"


class HistoryLag:
    """Measures the lag once per call of `measure` (the buffer's refresh)."""

    def __init__(
        self,
        engine: RedisEngine,
        pool: AsyncConnectionPool | None,
        verify_after_s: float = VERIFY_AFTER_S,
    ) -> None:
        self.engine = engine
        self.pool = pool
        self.verify_after_ms = int(verify_after_s * 1000)
        self._cursors = {s: _Cursor() for s in keys.history_streams()}
        self._lookup_failed = False

    async def measure(self) -> float:
        """Seconds since the oldest entry not in Postgres was added (0: none)."""
        now = int(time.time() * 1000)
        oldest: list[int] = []
        firsts: list[tuple[str, bytes]] = []
        stuck: list[str] = []
        for stream, last, pending in await group_states(self.engine):
            firsts.append((stream, resp.command(b"XRANGE", stream, b"(" + last, b"+", b"COUNT", 1)))
            cursor = self._cursors[stream]
            if not pending[0]:
                cursor.last = None
                continue
            if now - id_ms(pending[1]) < self.verify_after_ms:
                oldest.append(id_ms(pending[1]))  # young: in a live writer's hands
            else:
                stuck.append(stream)
        replies = await self.engine.execute(
            firsts
            + [
                (
                    s,
                    resp.command(
                        b"XPENDING", s, keys.HISTORY_GROUP, self._cursors[s].after(), b"+", CHUNK
                    ),
                )
                for s in stuck
            ]
        )
        check(replies)
        for entries in replies[: len(firsts)]:
            if entries:
                oldest.append(id_ms(entries[0][0]))
        if stuck:
            oldest += await self._oldest_unwritten(stuck, replies[len(firsts) :], now)
        return max(0.0, (now - min(oldest)) / 1000) if oldest else 0.0

    async def _oldest_unwritten(self, streams: list[str], chunks: list[Any], now: int) -> list[int]:
        """Per stream, the id time of its oldest pending entry not in Postgres;
        advances the cursors over the entries found there."""
        # (stream, entry id) of the entries to look up, per stream oldest first
        asked: dict[str, list[bytes]] = {}
        young: dict[str, bytes] = {}
        for stream, chunk in zip(streams, chunks, strict=True):
            ids: list[bytes] = []
            for entry_id, _consumer, idle, _deliveries in chunk:
                if int(idle) < self.verify_after_ms:
                    young[stream] = entry_id
                    break
                ids.append(entry_id)
            asked[stream] = ids
        found = await self._found(asked)
        out: list[int] = []
        for stream in streams:
            cursor = self._cursors[stream]
            unwritten: bytes | None = None
            for entry_id in asked[stream]:
                if entry_id not in found:
                    unwritten = entry_id
                    break
                cursor.last = entry_id
            if unwritten is not None:
                out.append(id_ms(unwritten))
            elif stream in young:
                out.append(id_ms(young[stream]))
            elif len(asked[stream]) == CHUNK:
                out.append(id_ms(asked[stream][-1]))  # more beyond the chunk: the next refresh
        return out

    async def _found(self, asked: dict[str, list[bytes]]) -> set[bytes]:
        """The entry ids among `asked` whose rows are in location_history (or
        that hold no row); empty when Postgres cannot be asked."""
        pairs = [(s, i) for s, ids in asked.items() for i in ids]
        if not pairs or self.pool is None:
            return set()
        entries = await self.engine.execute(
            [(s, resp.command(b"XRANGE", s, i, i)) for s, i in pairs], partial=True
        )
        by_key: dict[tuple[str, dt.datetime], bytes] = {}
        found: set[bytes] = set()
        for (_, entry_id), reply in zip(pairs, entries, strict=True):
            if isinstance(reply, Exception):
                continue
            row = _row(reply)
            if row is None:
                found.add(entry_id)  # deleted or empty: nothing to write
                continue
            try:
                by_key[decode_key(row)] = entry_id
            except (struct.error, UnicodeDecodeError):
                found.add(entry_id)  # not a row the writer could write either
        if not by_key:
            return found
        users = [u for u, _ in by_key]
        times = [t for _, t in by_key]
        try:
            async with self.pool.connection(timeout=LOOKUP_TIMEOUT_S) as conn:
                cur = await conn.execute(_FOUND, (users, times))
                rows = await cur.fetchall()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            if not self._lookup_failed:
                log.warning("history lag: cannot look pending entries up in Postgres: %s", exc)
            self._lookup_failed = True
            return found
        self._lookup_failed = False
        for user, at in rows:
            entry = by_key.get((user, at))
            if entry is not None:
                found.add(entry)
        return found


async def group_states(engine: RedisEngine) -> list[tuple[str, bytes, Any]]:
    """(stream, last-delivered id, XPENDING summary) of the writers' group on
    each history stream that has one; both read in one MULTI per stream."""
    streams = keys.history_streams()
    execs = await engine.transactions(
        [
            (
                s,
                [
                    resp.command(b"XINFO", b"GROUPS", s),
                    resp.command(b"XPENDING", s, keys.HISTORY_GROUP),
                ],
            )
            for s in streams
        ]
    )
    out: list[tuple[str, bytes, Any]] = []
    for stream, replies in zip(streams, execs, strict=True):
        if not isinstance(replies, list) or any(isinstance(r, Exception) for r in replies):
            continue  # no stream or no group yet
        groups, pending = replies
        last = last_delivered(groups)
        if last is not None:
            out.append((stream, last, pending))
    return out


def last_delivered(groups: Any) -> bytes | None:
    """The writers' group's last-delivered id, from an XINFO GROUPS reply
    (each group a map in RESP3, a flat list in RESP2)."""
    for group in groups:
        fields = (
            group if isinstance(group, dict) else dict(zip(group[0::2], group[1::2], strict=True))
        )
        if fields[b"name"] == keys.HISTORY_GROUP.encode():
            last: bytes = fields[b"last-delivered-id"]
            return last
    return None


def _row(reply: Any) -> bytes | None:
    """The COPY row of one `XRANGE id id` reply, if it holds one."""
    if not isinstance(reply, list) or not reply:
        return None
    fields = reply[0][1]
    if not fields or fields[0] != keys.HISTORY_ROW:
        return None
    row: bytes = fields[1]
    return row
