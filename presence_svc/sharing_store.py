"""Postgres: sharing policies (the source of truth) and their timers.

Every change runs in one transaction that locks the user's `sharing_settings`
row, takes a new version from the `sharing_version` sequence, and calls the
`Mirror` (the Redis write and the event to friends) before it commits: the
changes of one user reach Redis in the order they commit, and a failure of
Redis rolls the change back (the caller sees UNAVAILABLE; nothing changed).
Expired per-friend rules are removed by the same path (`expire_due`), so a
timer ending is the same event as a manual change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from mesh.errors import NotFound
from mesh.sharing import DEFAULT, LEVEL_OF, PRECISE, Policy

Mirror = Callable[[str, Policy], Awaitable[None]]
"""Writes a committed-to-be policy to Redis and tells the user's friends."""

_BUMP = (
    "INSERT INTO sharing_settings (user_id, version) VALUES (%s, nextval('sharing_version')) "
    "ON CONFLICT (user_id) DO UPDATE SET version = nextval('sharing_version'), "
    "updated_at = clock_timestamp() RETURNING version"
)
DUE_BATCH = 500


def _ms(t: dt.datetime | None) -> int:
    return int(t.timestamp() * 1000) if t is not None else 0


class SharingStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    # --- reading --------------------------------------------------------------
    async def policy(self, user_id: str) -> Policy:
        async with self.pool.connection() as conn:
            return await _read(conn, user_id)

    async def all_policies(self) -> list[tuple[str, Policy]]:
        """Every stored policy (for reloading Redis): three scans, one
        repeatable-read snapshot."""
        async with self.pool.connection() as conn:
            await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
            try:
                async with conn.transaction():
                    cur = await conn.execute(
                        "SELECT user_id, audience, default_precision, version FROM sharing_settings"
                    )
                    settings = await cur.fetchall()
                    cur = await conn.execute("SELECT user_id, member_id FROM sharing_audience")
                    members: dict[str, list[str]] = {}
                    for uid, member in await cur.fetchall():
                        members.setdefault(uid, []).append(member)
                    cur = await conn.execute(
                        "SELECT user_id, friend_id, precision, expires_at FROM sharing_rules"
                    )
                    rules: dict[str, dict[str, tuple[int, int]]] = {}
                    for uid, fid, precision, expires in await cur.fetchall():
                        rules.setdefault(uid, {})[fid] = (_level(precision), _ms(expires))
            finally:
                await conn.set_isolation_level(None)
        return [
            (
                uid,
                Policy(
                    version,
                    audience,
                    frozenset(members.get(uid, ())),
                    _level(precision),
                    rules.get(uid, {}),
                ),
            )
            for uid, audience, precision, version in settings
        ]

    # --- changes ----------------------------------------------------------------
    async def set_audience(
        self, user_id: str, audience: int, members: Sequence[str], mirror: Mirror
    ) -> Policy:
        async def change(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(
                "UPDATE sharing_settings SET audience = %s WHERE user_id = %s", (audience, user_id)
            )
            await conn.execute("DELETE FROM sharing_audience WHERE user_id = %s", (user_id,))
            if members:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO sharing_audience (user_id, member_id) VALUES (%s, %s)",
                        [(user_id, m) for m in members],
                    )

        return await self._change(user_id, change, mirror)

    async def set_default(self, user_id: str, precision: int, mirror: Mirror) -> Policy:
        async def change(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(
                "UPDATE sharing_settings SET default_precision = %s WHERE user_id = %s",
                (precision, user_id),
            )

        return await self._change(user_id, change, mirror)

    async def set_rule(
        self,
        user_id: str,
        friend_id: str,
        precision: int,
        expires_at: dt.datetime | None,
        mirror: Mirror,
    ) -> Policy:
        async def change(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(
                "INSERT INTO sharing_rules (user_id, friend_id, precision, expires_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (user_id, friend_id) DO UPDATE "
                "SET precision = EXCLUDED.precision, expires_at = EXCLUDED.expires_at",
                (user_id, friend_id, precision, expires_at),
            )

        return await self._change(user_id, change, mirror)

    async def clear_rule(self, user_id: str, friend_id: str, mirror: Mirror) -> Policy:
        async def change(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(
                "DELETE FROM sharing_rules WHERE user_id = %s AND friend_id = %s",
                (user_id, friend_id),
            )

        return await self._change(user_id, change, mirror)

    async def _change(
        self,
        user_id: str,
        change: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]],
        mirror: Mirror,
    ) -> Policy:
        try:
            async with self.pool.connection() as conn, conn.transaction():
                await conn.execute(_BUMP, (user_id,))
                await change(conn)
                policy = await _read(conn, user_id)
                await mirror(user_id, policy)
                return policy
        except psycopg.errors.ForeignKeyViolation as exc:
            raise NotFound(
                f"user {user_id} does not exist (FriendService.CreateUser)",
                reason="USER_NOT_FOUND",
            ) from exc

    # --- account deletion -------------------------------------------------------
    async def forget(self, user_id: str, mirror: Mirror) -> int:
        """Account deletion: the user's own settings go (their list and rules
        with them), and the user leaves every other user's list and rules,
        each such user's change mirrored as any other. Returns rows deleted."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT user_id FROM sharing_audience WHERE member_id = %s "
                "UNION SELECT user_id FROM sharing_rules WHERE friend_id = %s",
                (user_id, user_id),
            )
            others = sorted({row[0] for row in await cur.fetchall()} - {user_id})
            cur = await conn.execute("DELETE FROM sharing_settings WHERE user_id = %s", (user_id,))
            deleted = max(cur.rowcount, 0)
        for other in others:

            async def change(conn: psycopg.AsyncConnection[Any], owner: str = other) -> None:
                for table, column in (
                    ("sharing_audience", "member_id"),
                    ("sharing_rules", "friend_id"),
                ):
                    cur = await conn.execute(
                        f"DELETE FROM {table} WHERE user_id = %s AND {column} = %s",
                        (owner, user_id),
                    )
                    nonlocal deleted
                    deleted += max(cur.rowcount, 0)

            await self._change(other, change, mirror)
        return deleted

    # --- timers -----------------------------------------------------------------
    async def expire_due(self, mirror: Mirror) -> int:
        """Remove the per-friend rules whose time has come, user by user, each
        as a change (new version, mirrored, then committed). Returns the users
        changed. Replicas may run it at once: a user locked by another is
        skipped, and one whose rules are gone meanwhile is left alone."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT user_id FROM sharing_rules "
                "WHERE expires_at <= clock_timestamp() LIMIT %s",
                (DUE_BATCH,),
            )
            due = [row[0] for row in await cur.fetchall()]
        changed = 0
        for user_id in due:
            async with self.pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    "SELECT 1 FROM sharing_settings WHERE user_id = %s FOR UPDATE SKIP LOCKED",
                    (user_id,),
                )
                if await cur.fetchone() is None:
                    continue
                cur = await conn.execute(
                    "DELETE FROM sharing_rules WHERE user_id = %s "
                    "AND expires_at <= clock_timestamp()",
                    (user_id,),
                )
                if not cur.rowcount:
                    continue
                await conn.execute(_BUMP, (user_id,))
                await mirror(user_id, await _read(conn, user_id))
                changed += 1
        return changed


async def _read(conn: psycopg.AsyncConnection[Any], user_id: str) -> Policy:
    cur = await conn.execute(
        "SELECT audience, default_precision, version FROM sharing_settings WHERE user_id = %s",
        (user_id,),
    )
    row = await cur.fetchone()
    if row is None:
        return DEFAULT
    audience, precision, version = row
    cur = await conn.execute(
        "SELECT member_id FROM sharing_audience WHERE user_id = %s", (user_id,)
    )
    members = frozenset(r[0] for r in await cur.fetchall())
    cur = await conn.execute(
        "SELECT friend_id, precision, expires_at FROM sharing_rules WHERE user_id = %s",
        (user_id,),
    )
    rules = {r[0]: (_level(r[1]), _ms(r[2])) for r in await cur.fetchall()}
    return Policy(version, audience, members, _level(precision), rules)


def _level(precision: int) -> int:
    """nearby.v1.Precision (stored) -> access level."""
    return LEVEL_OF.get(precision, PRECISE)
