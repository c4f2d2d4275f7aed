"""A test-owned redis-server with its append-only file on, that a test stops
and starts again: it comes back with its data, and loads it for a while first.

Loading a few megabytes takes milliseconds, so the server is started with
Redis's own test knob `key-load-delay` (microseconds per key loaded from the
RDB part of the AOF) and told to answer clients while it loads every KiB
(`loading-process-events-interval-bytes`): with `fill(keys)` and a rewrite,
a restart answers `-LOADING` for about keys times delay (measured: 40,000 keys
at 50 µs load in 5.3 s on this machine).
"""

from __future__ import annotations

import time
from pathlib import Path

import redis

from stack import infra


class AofRedis(infra.RedisServer):
    """`infra.RedisServer` with its AOF on and loading slowed down; `start()`
    (again) returns once the port accepts connections (it may still be
    loading: see `wait_ready`), `stop()` is a SIGTERM (Redis flushes its AOF)."""

    def __init__(self, data_dir: Path, *, key_load_delay_us: int = 50) -> None:
        super().__init__(
            data_dir,
            config={
                "appendonly": "yes",
                "appendfsync": "everysec",
                "key-load-delay": str(key_load_delay_us),
                "loading-process-events-interval-bytes": "1024",
            },
            start_timeout_s=30.0,
        )

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def ready(self) -> bool:
        """PING answers PONG (not LOADING, not refused)."""
        try:
            with self.client() as r:
                return bool(r.ping())
        except redis.RedisError:
            return False

    def wait_ready(self, within_s: float = 60.0) -> float:
        """Until PING answers PONG; returns when (time.monotonic())."""
        deadline = time.monotonic() + within_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server (AOF) not ready within {within_s:g} s")
            time.sleep(0.02)
        return time.monotonic()

    def fill(self, keys: int) -> None:
        """`keys` filler keys, then an AOF rewrite (so that they load as RDB,
        where `key-load-delay` applies); returns when the rewrite is done."""
        with self.client() as r:
            pipe = r.pipeline(transaction=False)
            for i in range(keys):
                pipe.set(f"chaos:filler:{i}", b"x" * 32)
                if i % 5000 == 4999:
                    pipe.execute()
            pipe.execute()
            r.bgrewriteaof()
            deadline = time.monotonic() + 60
            while True:
                info = r.info("persistence")
                if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                    break
                assert time.monotonic() < deadline, "the AOF rewrite did not finish"
                time.sleep(0.05)
