"""Postgres side of the location history: binary COPY rows, batch writes,
reads for ListLocationHistory, and daily partitions with retention.

History rows travel through the Redis buffer already encoded as tuples of
Postgres' binary COPY format, so the writer only concatenates them: the hot
path pays one `struct.pack` per report and the writer does no per-row work.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("location_svc.store")

TABLE = "location_history"
DEFAULT_PARTITION = "location_history_default"
_PARTITION_RE = re.compile(r"^location_history_p(\d{8})$")
# Serialises partition maintenance of several replicas.
_MAINTENANCE_LOCK = 0x6C6F6368  # "loch"

# --- binary COPY format (https://www.postgresql.org/docs/current/sql-copy.html)
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"
_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z, the zero of timestamptz
_ROW_HEAD = struct.Struct("!hi").pack  # field count, length of user_id
_ROW_TAIL = struct.Struct("!iqidid").pack  # recorded_at (µs since 2000), lat, lng
_COLUMNS = "user_id, recorded_at, latitude, longitude"
_INT = struct.Struct("!i")
_INT64 = struct.Struct("!q")
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def encode_row(user_id: str, recorded_at_ms: int, latitude: float, longitude: float) -> bytes:
    """One `location_history` tuple in binary COPY format."""
    uid = user_id.encode()
    return (
        _ROW_HEAD(4, len(uid))
        + uid
        + _ROW_TAIL(8, (recorded_at_ms - _PG_EPOCH_MS) * 1000, 8, latitude, 8, longitude)
    )


_ROW_USER_LEN = struct.Struct("!i")
_ROW_AT = struct.Struct("!iq")
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def decode_key(row: bytes) -> tuple[str, dt.datetime]:
    """The key (user_id, recorded_at) of a row made by `encode_row`."""
    (n,) = _ROW_USER_LEN.unpack_from(row, 2)
    _, micros = _ROW_AT.unpack_from(row, 6 + n)
    return row[6 : 6 + n].decode(), _PG_EPOCH + dt.timedelta(microseconds=micros)


def copy_payload(rows: Sequence[bytes]) -> bytes:
    return COPY_SIGNATURE + b"".join(rows) + COPY_TRAILER


Recheck = Callable[[], Awaitable[Sequence[bytes]]]
"""Called inside a writer's transaction, under its shard's lock: the rows of
the batch that are still to be written (a deletion may have taken some)."""


async def write_batch(
    conn: psycopg.AsyncConnection[Any],
    rows: Sequence[bytes],
    *,
    shard: int | None = None,
    recheck: Recheck | None = None,
) -> int:
    """Commit `rows` to location_history exactly once; returns rows inserted.

    Fast path: COPY straight into the table, one transaction. A batch
    replayed after a crash (or a report repeated with the same timestamp) hits
    the primary key; that transaction is rolled back and the batch goes
    through a staging table and INSERT ... ON CONFLICT DO NOTHING, so a replay
    never creates duplicates.

    With `shard`, each transaction first takes that history shard's lock in
    shared mode and asks `recheck` which rows are still to be written: a
    deletion (`delete_rows` under the same lock, exclusive) either finishes
    before, and the recheck drops what it deleted from the buffer, or starts
    after the commit and deletes the committed rows.
    """

    async def prepare() -> Sequence[bytes]:
        if shard is None:
            return rows
        await lock_shard(conn, shard, shared=True)
        return rows if recheck is None else await recheck()

    try:
        async with conn.transaction(), conn.cursor() as cur:
            kept = await prepare()
            if not kept:
                return 0
            async with cur.copy(f"COPY {TABLE} ({_COLUMNS}) FROM STDIN (FORMAT BINARY)") as cp:
                await cp.write(copy_payload(kept))
            return len(kept)
    except psycopg.errors.UniqueViolation:
        pass  # rolled back: go through the staging table
    async with conn.transaction(), conn.cursor() as cur:
        kept = await prepare()
        if not kept:
            return 0
        payload = copy_payload(kept)
        await cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS history_staging "
            "(user_id text, recorded_at timestamptz, latitude float8, longitude float8) "
            "ON COMMIT DELETE ROWS"
        )
        async with cur.copy(f"COPY history_staging ({_COLUMNS}) FROM STDIN (FORMAT BINARY)") as cp:
            await cp.write(payload)
        await cur.execute(
            f"INSERT INTO {TABLE} ({_COLUMNS}) SELECT {_COLUMNS} FROM history_staging "
            "ON CONFLICT (user_id, recorded_at) DO NOTHING"
        )
        return max(cur.rowcount, 0)


# --- deletion ----------------------------------------------------------------

_SHARD_LOCK = 0x6C6F6800  # "loh\0" + history shard: writers shared, deletions exclusive


async def lock_shard(conn: psycopg.AsyncConnection[Any], shard: int, *, shared: bool) -> None:
    """The transaction-scoped lock of one history shard (its Redis stream)."""
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(fn)), (_SHARD_LOCK + shard,))


def row_key(row: bytes) -> tuple[bytes, int]:
    """(user id bytes, recorded_at in µs since 2000) of an `encode_row` tuple."""
    (n,) = _INT.unpack_from(row, 2)
    (us,) = _INT64.unpack_from(row, 10 + n)
    return row[6 : 6 + n], us


def pg_us(at: dt.datetime) -> int:
    """A time as binary COPY holds it: µs since 2000-01-01 UTC."""
    return (at - _PG_EPOCH) // dt.timedelta(microseconds=1)


async def delete_rows(
    conn: psycopg.AsyncConnection[Any],
    user_id: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
    buffered: Sequence[int] = (),
) -> int:
    """Delete a user's stored rows with recorded_at in [start, end); how many
    of them were not among `buffered` (times in µs since 2000 of entries just
    deleted from the buffer, which may have been stored already)."""
    where, params = _user_range(user_id, start, end)
    params.append([_PG_EPOCH + dt.timedelta(microseconds=us) for us in buffered])
    cur = await conn.execute(
        sql.SQL(
            "WITH d AS (DELETE FROM location_history WHERE {} RETURNING recorded_at) "
            "SELECT count(*) FILTER (WHERE NOT recorded_at = ANY(%s::timestamptz[])) FROM d"
        ).format(where),
        params,
    )
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


def _user_range(
    user_id: str, start: dt.datetime | None, end: dt.datetime | None
) -> tuple[sql.Composed, list[object]]:
    """WHERE of one user's rows with recorded_at in [start, end), and its
    parameters (either bound may be open)."""
    conds = [sql.SQL("user_id = %s")]
    params: list[object] = [user_id]
    if start is not None:
        conds.append(sql.SQL("recorded_at >= %s"))
        params.append(start)
    if end is not None:
        conds.append(sql.SQL("recorded_at < %s"))
        params.append(end)
    return sql.SQL(" AND ").join(conds), params


@dataclass(frozen=True, slots=True)
class HistoryRow:
    recorded_at: dt.datetime
    latitude: float
    longitude: float


async def list_history(
    pool: AsyncConnectionPool,
    user_id: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
    limit: int,
) -> list[HistoryRow]:
    """Newest first, recorded_at in [start, end); one index range scan."""
    where, params = _user_range(user_id, start, end)
    query = sql.SQL(
        "SELECT recorded_at, latitude, longitude FROM location_history WHERE {} "
        "ORDER BY recorded_at DESC LIMIT %s"
    ).format(where)
    params.append(limit)
    async with pool.connection() as conn:
        cur = await conn.execute(query, params)
        return [HistoryRow(r[0], r[1], r[2]) for r in await cur.fetchall()]


# --- partitions ------------------------------------------------------------


def partition_name(day: dt.date) -> str:
    return f"location_history_p{day:%Y%m%d}"


def _bound(day: dt.date) -> str:
    return f"{day.isoformat()} 00:00:00+00"


async def ensure_partition(conn: psycopg.AsyncConnection[Any], day: dt.date) -> bool:
    """Create the partition of `day` (UTC) unless it exists; True if created.

    Rows of that day already in the DEFAULT partition are moved into the new
    partition in the same transaction (Postgres refuses to create it otherwise).
    """
    name = partition_name(day)
    cur = await conn.execute("SELECT to_regclass(%s)", (name,))
    row = await cur.fetchone()
    if row is not None and row[0] is not None:
        return False
    lo, hi = _bound(day), _bound(day + dt.timedelta(days=1))
    ident = sql.Identifier(name)
    try:
        async with conn.transaction():
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE {} PARTITION OF location_history FOR VALUES FROM ({}) TO ({})"
                ).format(ident, sql.Literal(lo), sql.Literal(hi))
            )
        return True
    except psycopg.errors.CheckViolation:
        pass  # the default partition holds rows of that day: move them
    async with conn.transaction():
        await conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE location_history INCLUDING DEFAULTS)").format(ident)
        )
        await conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM location_history_default "
                "WHERE recorded_at >= %s AND recorded_at < %s RETURNING *) "
                "INSERT INTO {} SELECT * FROM moved"
            ).format(ident),
            (lo, hi),
        )
        await conn.execute(
            sql.SQL(
                "ALTER TABLE location_history ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})"
            ).format(ident, sql.Literal(lo), sql.Literal(hi))
        )
    log.info("moved rows of %s out of the default partition", day)
    return True


async def partitions(conn: psycopg.AsyncConnection[Any]) -> dict[dt.date, str]:
    """The daily partitions that exist, by day."""
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'location_history'::regclass"
    )
    found: dict[dt.date, str] = {}
    for (name,) in await cur.fetchall():
        m = _PARTITION_RE.match(name)
        if m:
            found[dt.datetime.strptime(m.group(1), "%Y%m%d").date()] = name
    return found


async def maintain(
    pool: AsyncConnectionPool, today: dt.date, ahead_days: int, retention_days: int
) -> tuple[list[str], list[str]]:
    """Create partitions today-1 .. today+ahead_days; drop those past retention.

    Returns (created, dropped) partition names. Safe with several replicas
    (advisory lock).
    """
    created: list[str] = []
    dropped: list[str] = []
    oldest_kept = today - dt.timedelta(days=retention_days)
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            await conn.execute("SELECT pg_advisory_lock(%s)", (_MAINTENANCE_LOCK,))
            for offset in range(-1, ahead_days + 1):
                day = today + dt.timedelta(days=offset)
                if await ensure_partition(conn, day):
                    created.append(partition_name(day))
            for day, name in sorted((await partitions(conn)).items()):
                if day < oldest_kept:
                    await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                    dropped.append(name)
            await conn.execute(
                "DELETE FROM location_history_default WHERE recorded_at < %s",
                (_bound(oldest_kept),),
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_MAINTENANCE_LOCK,))
            await conn.set_autocommit(False)
    if created or dropped:
        log.info(
            "history partitions",
            extra={"partitions_created": created, "partitions_dropped": dropped},
        )
    return created, dropped
