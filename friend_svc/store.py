"""Postgres storage of users, friend requests and friendships.

Every change runs in one transaction, so an error leaves nothing half
written. Transactions that change a relation between two users first lock
both users' rows, always in user-id order: concurrent calls about the same
users run one after the other (no lost cap check, no duplicate friendship,
no A→B and B→A request pair) and can never deadlock each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from mesh.errors import AlreadyExists, FailedPrecondition, NotFound


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    display_name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Friend:
    """A friend as one user sees them."""

    user: User
    since: datetime


@dataclass(frozen=True, slots=True)
class FriendRequest:
    from_user: User
    to_user: User
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Accepted:
    """Outcome of an accepted request: both users and the friendship's start."""

    accepter: User
    requester: User
    since: datetime


RequestPosition = tuple[datetime, str]
"""Keyset position in a request list: (created_at, the other user's id)."""

_USER_COLS = "user_id, display_name, created_at"
_LIVE = "deleting_since IS NULL"
"""A user being deleted (migration 0002) is invisible to every call."""


def _user(row: Sequence[Any], at: int = 0) -> User:
    return User(row[at], row[at + 1], row[at + 2])


def user_not_found(user_id: str, *, caller: bool = False) -> NotFound:
    if caller:
        return NotFound(
            f"your user '{user_id}' does not exist: an operator must create it with CreateUser",
            reason="CALLER_NOT_FOUND",
            userId=user_id,
        )
    return NotFound(f"user '{user_id}' does not exist", reason="USER_NOT_FOUND", userId=user_id)


class FriendStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    # --- users ----------------------------------------------------------

    async def create_user(self, user_id: str, display_name: str) -> User:
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"""INSERT INTO users (user_id, display_name) VALUES (%s, %s)
                    ON CONFLICT (user_id) DO NOTHING RETURNING {_USER_COLS}""",
                (user_id, display_name),
            )
            row = await cur.fetchone()
        if row is None:
            raise AlreadyExists(
                f"user id '{user_id}' is taken: choose another or leave it empty to get a new one",
                reason="USER_ALREADY_EXISTS",
                userId=user_id,
            )
        return _user(row)

    async def get_user(self, user_id: str, *, caller: bool = False) -> User:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_USER_COLS} FROM users WHERE user_id = %s AND {_LIVE}", (user_id,)
            )
            row = await cur.fetchone()
        if row is None:
            raise user_not_found(user_id, caller=caller)
        return _user(row)

    # --- friend requests --------------------------------------------------

    async def send_request(self, from_id: str, to_id: str) -> FriendRequest:
        async with self.pool.connection() as conn, conn.transaction():
            users = await _lock_users(conn, caller=from_id, other=to_id)
            cur = await conn.execute(
                "SELECT 1 FROM friendships WHERE user_id = %s AND friend_id = %s",
                (from_id, to_id),
            )
            if await cur.fetchone() is not None:
                raise FailedPrecondition(
                    f"you and '{to_id}' are already friends",
                    reason="ALREADY_FRIENDS",
                    userId=to_id,
                )
            cur = await conn.execute(
                "SELECT 1 FROM friend_requests WHERE from_id = %s AND to_id = %s", (to_id, from_id)
            )
            if await cur.fetchone() is not None:
                raise FailedPrecondition(
                    f"'{to_id}' has already sent you a friend request: accept it with "
                    "AcceptFriendRequest instead",
                    reason="REVERSE_REQUEST_PENDING",
                    userId=to_id,
                )
            cur = await conn.execute(
                """INSERT INTO friend_requests (from_id, to_id) VALUES (%s, %s)
                   ON CONFLICT (from_id, to_id) DO NOTHING RETURNING created_at""",
                (from_id, to_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise AlreadyExists(
                    f"you already sent '{to_id}' a friend request; it is still pending",
                    reason="FRIEND_REQUEST_ALREADY_EXISTS",
                    userId=to_id,
                )
        return FriendRequest(users[from_id], users[to_id], row[0])

    async def accept_request(self, from_id: str, to_id: str, cap: int) -> Accepted:
        """`to_id` accepts the request of `from_id`; both get a friend, within `cap`."""
        async with self.pool.connection() as conn, conn.transaction():
            users = await _lock_users(conn, caller=to_id, other=from_id)
            # Only one concurrent accept can delete the row; the others find it gone.
            cur = await conn.execute(
                "DELETE FROM friend_requests WHERE from_id = %s AND to_id = %s RETURNING 1",
                (from_id, to_id),
            )
            if await cur.fetchone() is None:
                raise _no_request(from_id)
            cur = await conn.execute(
                """SELECT user_id, count(*) FROM friendships
                   WHERE user_id = ANY(%s) GROUP BY user_id""",
                ([to_id, from_id],),
            )
            counts: dict[str, int] = {row[0]: row[1] for row in await cur.fetchall()}
            if counts.get(to_id, 0) >= cap:
                raise FailedPrecondition(
                    f"you already have {cap} friends, the maximum: remove a friend first",
                    reason="FRIEND_CAP_REACHED",
                    userId=to_id,
                    cap=str(cap),
                )
            if counts.get(from_id, 0) >= cap:
                raise FailedPrecondition(
                    f"'{from_id}' already has {cap} friends, the maximum: they must remove "
                    "a friend before this request can be accepted",
                    reason="FRIEND_CAP_REACHED",
                    userId=from_id,
                    cap=str(cap),
                )
            cur = await conn.execute(
                """INSERT INTO friendships (user_id, friend_id)
                   VALUES (%s, %s), (%s, %s) RETURNING created_at""",
                (to_id, from_id, from_id, to_id),
            )
            row = await cur.fetchone()
            assert row is not None
        return Accepted(accepter=users[to_id], requester=users[from_id], since=row[0])

    async def decline_request(self, from_id: str, to_id: str) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "DELETE FROM friend_requests WHERE from_id = %s AND to_id = %s RETURNING 1",
                (from_id, to_id),
            )
            if await cur.fetchone() is None:
                raise _no_request(from_id)

    async def list_requests(
        self, user_id: str, *, incoming: bool, after: RequestPosition | None, limit: int
    ) -> tuple[list[FriendRequest], bool]:
        """Newest first; returns the page and whether more follow."""
        own, other = ("to_id", "from_id") if incoming else ("from_id", "to_id")
        keyset: sql.Composable = sql.SQL("")
        params: list[Any] = [user_id]
        if after is not None:
            keyset = sql.SQL("AND (r.created_at, r.{other}) < (%s, %s)").format(
                other=sql.Identifier(other)
            )
            params += [after[0], after[1]]
        query = sql.SQL(
            """SELECT r.created_at,
                      f.user_id, f.display_name, f.created_at,
                      t.user_id, t.display_name, t.created_at
               FROM friend_requests r
               JOIN users f ON f.user_id = r.from_id AND f.deleting_since IS NULL
               JOIN users t ON t.user_id = r.to_id AND t.deleting_since IS NULL
               WHERE r.{own} = %s {keyset}
               ORDER BY r.created_at DESC, r.{other} DESC
               LIMIT %s"""
        ).format(own=sql.Identifier(own), other=sql.Identifier(other), keyset=keyset)
        params.append(limit + 1)
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
            if not rows and after is None:
                await _require_user(conn, user_id, caller=True)
        page = [FriendRequest(_user(r, 1), _user(r, 4), r[0]) for r in rows[:limit]]
        return page, len(rows) > limit

    # --- friendships -----------------------------------------------------

    async def remove_friend(self, user_id: str, friend_id: str) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await _lock_users(conn, caller=user_id, other=friend_id)
            cur = await conn.execute(
                """DELETE FROM friendships
                   WHERE (user_id = %s AND friend_id = %s) OR (user_id = %s AND friend_id = %s)
                   RETURNING 1""",
                (user_id, friend_id, friend_id, user_id),
            )
            if not await cur.fetchall():
                raise NotFound(
                    f"you and '{friend_id}' are not friends",
                    reason="NOT_FRIENDS",
                    userId=friend_id,
                )

    async def list_friends(
        self, user_id: str, *, after: str | None, limit: int
    ) -> tuple[list[Friend], bool]:
        """Ordered by friend id; returns the page and whether more follow."""
        keyset = sql.SQL("AND f.friend_id > %s" if after is not None else "")
        params: list[Any] = [user_id] + ([after] if after is not None else []) + [limit + 1]
        query = sql.SQL(
            """SELECT f.created_at, u.user_id, u.display_name, u.created_at
               FROM friendships f
               JOIN users u ON u.user_id = f.friend_id AND u.deleting_since IS NULL
               WHERE f.user_id = %s {keyset}
               ORDER BY f.friend_id
               LIMIT %s"""
        ).format(keyset=keyset)
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
            if not rows and after is None:
                await _require_user(conn, user_id, caller=True)
        page = [Friend(_user(r, 1), r[0]) for r in rows[:limit]]
        return page, len(rows) > limit

    async def all_friends(self, user_id: str) -> list[User]:
        """Every friend of a user, ordered by id (bounded by the friend cap)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """SELECT u.user_id, u.display_name, u.created_at
                   FROM friendships f
                   JOIN users u ON u.user_id = f.friend_id AND u.deleting_since IS NULL
                   WHERE f.user_id = %s ORDER BY f.friend_id""",
                (user_id,),
            )
            rows = await cur.fetchall()
            if not rows:
                await _require_user(conn, user_id, caller=False)
        return [_user(r) for r in rows]

    async def existing(self, user_ids: Sequence[str]) -> list[str]:
        """The ids among these that have an account (not being deleted)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT user_id FROM users WHERE user_id = ANY(%s) AND {_LIVE}", (list(user_ids),)
            )
            return [r[0] for r in await cur.fetchall()]

    # --- account deletion (friend_svc/erasure.py runs the steps) ----------

    async def mark_deleting(self, user_id: str) -> None:
        """Step 1: the user becomes invisible to every call of this service.

        Waits for transactions that hold the user's row (a friendship being
        added), so none can complete after this. NOT_FOUND if there is no such
        user; a user marked already (a retry) stays marked.
        """
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                """UPDATE users SET deleting_since = coalesce(deleting_since, now())
                   WHERE user_id = %s RETURNING 1""",
                (user_id,),
            )
            if await cur.fetchone() is None:
                raise user_not_found(user_id)

    async def friend_ids(self, user_id: str) -> list[str]:
        """Every friend id of a user, whatever their state."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT friend_id FROM friendships WHERE user_id = %s ORDER BY friend_id",
                (user_id,),
            )
            return [row[0] for row in await cur.fetchall()]

    async def purge_user(self, user_id: str) -> int:
        """Last step: the user's friendships and requests (both directions)
        and the user row, in one transaction; rows deleted."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT 1 FROM users WHERE user_id = %s FOR UPDATE", (user_id,)
            )
            if await cur.fetchone() is None:
                return 0
            cur = await conn.execute(
                "DELETE FROM friendships WHERE user_id = %s RETURNING friend_id", (user_id,)
            )
            friends = [row[0] for row in await cur.fetchall()]
            deleted = len(friends)
            # the reverse rows, by primary key (friend_id alone has no index)
            cur = await conn.execute(
                "DELETE FROM friendships WHERE user_id = ANY(%s) AND friend_id = %s",
                (friends, user_id),
            )
            deleted += max(cur.rowcount, 0)
            cur = await conn.execute(
                "DELETE FROM friend_requests WHERE from_id = %s OR to_id = %s",
                (user_id, user_id),
            )
            deleted += max(cur.rowcount, 0)
            cur = await conn.execute("DELETE FROM users WHERE user_id = %s", (user_id,))
            return deleted + max(cur.rowcount, 0)

    async def unfinished_deletions(self, older_than_s: float) -> list[str]:
        """Users marked for deletion longer than `older_than_s` ago."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """SELECT user_id FROM users
                   WHERE deleting_since < now() - make_interval(secs => %s)
                   ORDER BY deleting_since LIMIT 100""",
                (older_than_s,),
            )
            return [row[0] for row in await cur.fetchall()]


async def _lock_users(conn: AsyncConnection[Any], *, caller: str, other: str) -> dict[str, User]:
    """Lock both users' rows in id order; NOT_FOUND if either does not exist
    (or is being deleted).

    FOR NO KEY UPDATE excludes the other transactions of this module but not
    the KEY SHARE locks that foreign-key checks take.
    """
    cur = await conn.execute(
        f"""SELECT {_USER_COLS} FROM users WHERE user_id = ANY(%s) AND {_LIVE}
            ORDER BY user_id FOR NO KEY UPDATE""",
        (sorted({caller, other}),),
    )
    users = {row[0]: _user(row) for row in await cur.fetchall()}
    if caller not in users:
        raise user_not_found(caller, caller=True)
    if other not in users:
        raise user_not_found(other)
    return users


async def _require_user(conn: AsyncConnection[Any], user_id: str, *, caller: bool) -> None:
    cur = await conn.execute(f"SELECT 1 FROM users WHERE user_id = %s AND {_LIVE}", (user_id,))
    if await cur.fetchone() is None:
        raise user_not_found(user_id, caller=caller)


def _no_request(from_id: str) -> NotFound:
    return NotFound(
        f"there is no pending friend request from '{from_id}' to you",
        reason="FRIEND_REQUEST_NOT_FOUND",
        userId=from_id,
    )
