"""A service that starts while Redis or Postgres is unreachable waits for it.

Under a supervisor (systemd, `nearby run` restarting a process that died) a
process may start in the middle of a store outage. Exiting at once would
only count against the supervisor's restart cap (5 quick failed starts and
`nearby run` gives up on it; systemd marks the unit failed), so the service
waits up to `STARTUP_WAIT_S` for the store, saying so in one log line, then
exits with its one-line error if the store is still not there. Errors that
waiting cannot fix (a cluster URL given for a standalone Redis, a bad
password, a missing database) end the start at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import psycopg

from mesh.outages import outage_of

log = logging.getLogger("mesh.startup")

FIRST_RETRY_S = 0.25
MAX_RETRY_S = 2.0


async def wait_for_store(what: str, attempt: Callable[[], Awaitable[None]], wait_s: float) -> None:
    """Run `attempt` until it succeeds; while it fails with an outage of the
    store (the cause of its OSError), try again with backoff for up to
    `wait_s`. The last failure is raised as it is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay = FIRST_RETRY_S
    waiting = False
    while True:
        try:
            await attempt()
        except OSError as exc:
            cause = exc.__cause__ or exc
            if outage_of(cause) is None or loop.time() + delay > deadline:
                raise
            if not waiting:
                waiting = True
                log.warning("%s; waiting up to %g s for %s", exc, wait_s, what)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)
            continue
        if waiting:
            log.info("%s is reachable: starting", what)
        return


async def probe_postgres(url: str, shown: str) -> None:
    """One connection to Postgres (OSError, caused by the psycopg error, when
    it cannot be made). An answer of the server itself (a bad password, a
    missing database) is no outage: `wait_for_store` does not wait for it."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=2)
    except psycopg.OperationalError as exc:
        if exc.sqlstate is not None:
            raise OSError(f"Postgres at {shown} refused the connection: {exc}") from None
        raise OSError(f"cannot connect to Postgres at {shown}: {exc}") from exc
    await conn.close()
