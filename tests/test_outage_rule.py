"""The one rule (mesh/outages.py) that decides which failures are outages of a
store (UNAVAILABLE, retry) and which are not (the call's own fault), for the
exceptions redis-py, psycopg and the Redis engine produce."""

from __future__ import annotations

import hiredis
import psycopg
import psycopg_pool
import pytest
from redis import exceptions as redis_errors

from mesh.outages import as_unavailable, outage_of


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        # error replies the engine leaves in place of a command, and check()'s
        (hiredis.ReplyError("LOADING Redis is loading the dataset in memory"), "Redis"),
        (hiredis.ReplyError("CLUSTERDOWN The cluster is down"), "Redis"),
        (hiredis.ReplyError("TRYAGAIN Multiple keys request during rehashing of slot"), "Redis"),
        (hiredis.ReplyError("MOVED 3999 127.0.0.1:6381"), "Redis"),
        (
            redis_errors.ResponseError("READONLY You can't write against a read only replica."),
            "Redis",
        ),
        (hiredis.ReplyError("WRONGTYPE Operation against a key holding the wrong kind"), None),
        (redis_errors.ResponseError("NOSCRIPT No matching script"), None),
        # redis-py's own classes (their messages have lost the code)
        (redis_errors.ConnectionError("Connection refused"), "Redis"),
        (redis_errors.BusyLoadingError("Redis is loading the dataset in memory"), "Redis"),
        (redis_errors.TimeoutError("Timeout reading from socket"), "Redis"),
        (redis_errors.ClusterDownError("The cluster is down"), "Redis"),
        (redis_errors.TryAgainError("Multiple keys request"), "Redis"),
        (redis_errors.DataError("Invalid input of type"), None),
        # Postgres down, or every pooled connection busy past POSTGRES_WAIT_S
        (psycopg.OperationalError("connection refused"), "Postgres"),
        (psycopg_pool.PoolTimeout("couldn't get a connection after 2.00 sec"), "Postgres"),
        (psycopg.errors.UniqueViolation("duplicate key"), None),
        (ConnectionResetError("reset by peer"), "a backing service"),
        (ValueError("bad"), None),
    ],
)
def test_outage_of(error: BaseException, outage: str | None) -> None:
    assert outage_of(error) == outage
    answer = as_unavailable(error)
    if outage is None:
        assert answer is None
    else:
        assert answer is not None and answer.metadata["backend"] == outage
