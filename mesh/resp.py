"""RESP for the hot paths: packing commands, and a lean pipeline.

redis-py's pipeline spends ~15 µs of Python per command (argument encoding,
a timeout context and a parser call per reply), more than everything else a
report costs. Here commands are packed once as RESP bytes, sent in one write
on a pooled redis-py connection (so connecting, AUTH, SELECT and HELLO stay
redis-py's job), and all replies are parsed in bulk by hiredis. Error replies
come back as `hiredis.ReplyError` values in place, like
`execute(raise_on_error=False)`.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

_READ_SIZE = 1 << 16


def command(*args: bytes | str | int | float) -> bytes:
    """One RESP command (an array of bulk strings).

    hiredis packs it in C: 1.1 µs for the 11-argument report call against
    2.1 µs for the same bytes joined in Python from pre-packed parts.
    """
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # stub: 1-tuple
    return packed


def is_error(reply: Any, prefix: str = "") -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(prefix)


async def execute(redis: aioredis.Redis, commands: list[bytes]) -> list[Any]:
    """Send packed commands in one write; their replies, in order."""
    if not commands:
        return []
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        reader, writer = conn._reader, conn._writer
        if reader is None or writer is None:
            raise RedisConnectionError("Redis connection is not open")
        writer.write(b"".join(commands))
        await writer.drain()
        parser = hiredis.Reader()
        out: list[Any] = []
        want = len(commands)
        while len(out) < want:
            data = await reader.read(_READ_SIZE)
            if not data:
                raise RedisConnectionError("Redis closed the connection")
            parser.feed(data)
            reply = parser.gets()
            while reply is not False:
                out.append(reply)
                reply = parser.gets()
        return out
    except BaseException:
        # A half-read reply stream cannot be reused: drop the connection.
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
