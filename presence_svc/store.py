"""Postgres: ghost-mode settings (the source of truth; Redis holds a mirror)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

from psycopg_pool import AsyncConnectionPool


class VisibilityStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def set_hidden(
        self, user_id: str, hidden: bool, until: dt.datetime | None = None
    ) -> None:
        """until: ghost mode ends by itself then (timers.py); None: until turned off."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO user_visibility (user_id, hidden, hidden_until) VALUES (%s, %s, %s) "
                "ON CONFLICT (user_id) DO UPDATE SET hidden = EXCLUDED.hidden, "
                "hidden_until = EXCLUDED.hidden_until, updated_at = clock_timestamp()",
                (user_id, hidden, until if hidden else None),
            )

    async def visibility(self, user_id: str) -> tuple[bool, dt.datetime | None]:
        """(hidden, when ghost mode ends by itself or None)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT hidden, hidden_until FROM user_visibility WHERE user_id = %s", (user_id,)
            )
            row = await cur.fetchone()
            return (bool(row[0]), row[1] if row[0] else None) if row else (False, None)

    async def expire_due(self, show: Callable[[str], Awaitable[None]]) -> int:
        """End the ghost modes whose timer is up: per user, under the row's
        lock, Redis first (`show`: the same as a manual SetVisibility(VISIBLE))
        and then the row, so a crash in between only repeats the Redis part;
        a replica skips rows another one holds. Returns the users shown."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT user_id FROM user_visibility WHERE hidden "
                "AND hidden_until <= clock_timestamp() LIMIT 500"
            )
            due = [row[0] for row in await cur.fetchall()]
        shown = 0
        for user_id in due:
            async with self.pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    "SELECT 1 FROM user_visibility WHERE user_id = %s AND hidden "
                    "AND hidden_until <= clock_timestamp() FOR UPDATE SKIP LOCKED",
                    (user_id,),
                )
                if await cur.fetchone() is None:
                    continue
                await show(user_id)
                await conn.execute(
                    "UPDATE user_visibility SET hidden = false, hidden_until = NULL, "
                    "updated_at = clock_timestamp() WHERE user_id = %s",
                    (user_id,),
                )
                shown += 1
        return shown

    async def is_hidden(self, user_id: str) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT hidden FROM user_visibility WHERE user_id = %s", (user_id,)
            )
            row = await cur.fetchone()
            return bool(row and row[0])

    async def delete(self, user_id: str) -> int:
        """Forget the user's setting (account deletion); rows deleted."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("DELETE FROM user_visibility WHERE user_id = %s", (user_id,))
            return max(cur.rowcount, 0)

    async def now(self) -> dt.datetime:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT clock_timestamp()")
            row = await cur.fetchone()
            assert row is not None
            value: dt.datetime = row[0]
            return value

    async def hidden_users(self) -> list[str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT user_id FROM user_visibility WHERE hidden")
            return [row[0] for row in await cur.fetchall()]

    async def changed_since(self, since: dt.datetime) -> list[tuple[str, bool]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT user_id, hidden FROM user_visibility WHERE updated_at >= %s", (since,)
            )
            return [(row[0], bool(row[1])) for row in await cur.fetchall()]
