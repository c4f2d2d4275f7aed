"""Which failures are outages of a backing store, and what a caller gets.

A Redis or Postgres that is down, restarting, loading its data, failing over
or resharding is not a bug in the call: the caller gets `UNAVAILABLE` with a
retry hint, which every gRPC client (and our SDKs) retries with backoff,
instead of `INTERNAL`. This is the one rule for it: `outage_of` says whose
outage a failure is, for a raised exception as for an error reply the Redis
engine left in place of one command (`RedisEngine.execute(partial=True)`).
The kernel interceptor asks `as_unavailable` about any error a servicer did
not handle.
"""

from __future__ import annotations

import hiredis
import psycopg
from redis import exceptions as redis_errors

from mesh.errors import Unavailable

RETRY_AFTER_S = 1.0
#: error replies of a Redis that is (re)starting, failing over or resharding
#: (the engine waits these out for REDIS_RETRY_S; what is left is an outage)
TRANSIENT_REPLIES = (
    "LOADING",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MASTERDOWN",
    "READONLY",
    "MOVED",
    "ASK",
)


def outage_of(error: BaseException) -> str | None:
    """ "Redis", "Postgres" or "a backing service" when `error` means that store
    is out of reach for now; None for anything else (a bug, bad input)."""
    if isinstance(error, _REDIS_OUTAGES):
        return "Redis"
    if isinstance(error, hiredis.ReplyError | redis_errors.ResponseError):
        # an error reply with its code (the engine's, or check()'s ResponseError)
        return "Redis" if str(error).split(" ", 1)[0] in TRANSIENT_REPLIES else None
    if isinstance(error, psycopg.OperationalError):
        return "Postgres"
    if isinstance(error, ConnectionError | TimeoutError):
        return "a backing service"
    return None


#: redis-py's own exceptions for those replies (their messages lose the code),
#: and an unreachable or silent server
_REDIS_OUTAGES = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterError,
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,
    redis_errors.AskError,
)


def as_unavailable(exc: BaseException) -> Unavailable | None:
    """UNAVAILABLE for an outage of Redis or Postgres; None for anything else."""
    what = outage_of(exc)
    if what is None:
        return None
    return Unavailable(
        f"{what} is unavailable right now; retry with backoff",
        reason="BACKEND_UNAVAILABLE",
        retry_after_s=RETRY_AFTER_S,
        backend=what,
    )
