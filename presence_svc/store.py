"""Postgres: ghost-mode settings (the source of truth; Redis holds a mirror)."""

from __future__ import annotations

import datetime as dt

from psycopg_pool import AsyncConnectionPool


class VisibilityStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def set_hidden(self, user_id: str, hidden: bool) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO user_visibility (user_id, hidden) VALUES (%s, %s) "
                "ON CONFLICT (user_id) DO UPDATE "
                "SET hidden = EXCLUDED.hidden, updated_at = clock_timestamp()",
                (user_id, hidden),
            )

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
