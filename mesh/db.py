"""Postgres: the connection pool and versioned schema migrations."""

from __future__ import annotations

import logging
import re
from importlib import resources

import psycopg
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("mesh.db")

# Any constant works; it only has to be the same for every replica.
_MIGRATION_LOCK = 0x6E656172  # "near"
RECONNECT_TIMEOUT_S = 2.0
_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


async def open_pool(
    url: str, *, min_size: int = 1, max_size: int = 10, wait_s: float = 2.0
) -> AsyncConnectionPool:
    """An open pool; fails fast with a clear message when Postgres is unreachable.

    `wait_s` bounds how long a call waits for a connection (psycopg_pool's
    default is 30 s, longer than any client deadline): while Postgres is down
    a call fails with PoolTimeout, which the kernel answers as UNAVAILABLE.
    """
    pool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=wait_s,
        # psycopg_pool retries a failed connection with a doubling delay
        # until this timeout (default 5 min): after a 30 s outage its next
        # attempt could come 30 s after Postgres is back. Given up sooner, a
        # new attempt starts with the next call that finds the pool short.
        reconnect_timeout=RECONNECT_TIMEOUT_S,
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=15)
    except Exception as exc:
        await pool.close()
        raise OSError(f"cannot connect to Postgres at {redact(url)}: {exc}") from exc
    return pool


def redact(url: str) -> str:
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", url)


def migration_files(package: str) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration in `package`/migrations."""
    found = []
    for entry in resources.files(package).joinpath("migrations").iterdir():
        m = _MIGRATION_FILE.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(pool: AsyncConnectionPool, component: str, package: str) -> list[str]:
    """Apply the component's pending migrations, each once, in order.

    Safe when several replicas start at once: an advisory lock held for the
    transaction serialises them; the later ones find nothing left to apply.
    """
    applied: list[str] = []
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   component text NOT NULL,
                   version integer NOT NULL,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (component, version))"""
        )
        cur = await conn.execute(
            "SELECT version FROM schema_migrations WHERE component = %s", (component,)
        )
        done = {row[0] for row in await cur.fetchall()}
        for version, name, sql in migration_files(package):
            if version in done:
                continue
            await conn.execute(sql.encode())
            await conn.execute(
                "INSERT INTO schema_migrations (component, version, name) VALUES (%s, %s, %s)",
                (component, version, name),
            )
            applied.append(name)
    if applied:
        log.info("applied migrations", extra={"component": component, "migrations": applied})
    return applied


__all__ = ["migrate", "migration_files", "open_pool", "psycopg"]
