"""Where a user id still appears: in every table of the database and in every
Redis key (its name or its value), whatever feature put it there.

Nothing here knows the schema or the key patterns: tables come from the
catalog (every migration of every service, partitions included) and keys
from SCAN on every master, so data that a later feature adds and that a
deletion forgets shows up without this module changing.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql


async def tables(database_url: str) -> list[str]:
    """Every ordinary table of the public schema (partitions too, not the
    partitioned parents: their rows are their partitions')."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY c.relname"
        )
        return [row[0] for row in await cur.fetchall()]


async def pg_traces(database_url: str, needle: str) -> dict[str, int]:
    """Rows, per table, whose text form (every column) contains `needle`."""
    found: dict[str, int] = {}
    names = await tables(database_url)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for name in names:
            cur = await conn.execute(
                sql.SQL("SELECT count(*) FROM {} t WHERE strpos(t::text, %s) > 0").format(
                    sql.Identifier(name)
                ),
                (needle,),
            )
            row = await cur.fetchone()
            assert row is not None
            if row[0]:
                found[name] = row[0]
    return found


async def pg_dump(database_url: str) -> dict[str, list[str]]:
    """Every row of every table, as sorted text (to compare before/after)."""
    out: dict[str, list[str]] = {}
    names = await tables(database_url)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for name in names:
            cur = await conn.execute(
                sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(name))
            )
            out[name] = sorted(row[0] for row in await cur.fetchall())
    return out


async def redis_values(client: Any) -> dict[bytes, Any]:
    """Every key of every master, with its whole value by type."""
    out: dict[bytes, Any] = {}
    async for key in client.scan_iter(count=1000):
        kind = await client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        value: Any
        if kind == "string":
            value = await client.get(key)
        elif kind == "hash":
            value = sorted((await client.hgetall(key)).items())
        elif kind == "zset":
            value = await client.zrange(key, 0, -1)
        elif kind == "set":
            value = sorted(await client.smembers(key))
        elif kind == "list":
            value = await client.lrange(key, 0, -1)
        elif kind == "stream":
            value = [(eid, sorted(fields.items())) for eid, fields in await client.xrange(key)]
        else:
            value = kind  # vanished meanwhile ("none") or a type we do not read
        out[key] = value
    return out


def mentions(value: Any, needle: bytes) -> bool:
    if isinstance(value, bytes):
        return needle in value
    if isinstance(value, str):
        return needle.decode() in value
    if isinstance(value, list | tuple):
        return any(mentions(v, needle) for v in value)
    return False


async def redis_traces(client: Any, needle: str) -> dict[bytes, str]:
    """Keys whose name or value contains `needle`, and where ("name"/"value")."""
    raw = needle.encode()
    found: dict[bytes, str] = {}
    for key, value in (await redis_values(client)).items():
        if raw in key:
            found[key] = "name"
        elif mentions(value, raw):
            found[key] = "value"
    return found
