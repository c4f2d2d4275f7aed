"""Which failures are outages of a backing store, and what a caller gets.

A Redis or Postgres that is down, restarting, loading its data or failing
over is not a bug in the call: the caller gets `UNAVAILABLE` with a retry
hint, which every gRPC client (and our SDKs) retries with backoff, instead
of `INTERNAL`. The kernel interceptor asks `as_unavailable` about any error
a servicer did not handle.
"""

from __future__ import annotations

import psycopg
from redis import exceptions as redis_errors

from mesh.errors import Unavailable

RETRY_AFTER_S = 1.0
#: error replies of a Redis that is (re)starting or failing over
_TRANSIENT_REPLIES = ("LOADING", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "READONLY")


def as_unavailable(exc: BaseException) -> Unavailable | None:
    """UNAVAILABLE for an outage of Redis or Postgres; None for anything else."""
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
        return _down("Redis")
    if isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES):
        return _down("Redis")
    if isinstance(exc, redis_errors.ClusterError):
        return _down("Redis")
    if isinstance(exc, psycopg.OperationalError):
        return _down("Postgres")
    if isinstance(exc, ConnectionError | TimeoutError):
        return _down("a backing service")
    return None


def _down(what: str) -> Unavailable:
    return Unavailable(
        f"{what} is unavailable right now; retry with backoff",
        reason="BACKEND_UNAVAILABLE",
        retry_after_s=RETRY_AFTER_S,
        backend=what,
    )
