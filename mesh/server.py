"""Start, serve and stop one service process the same way for every service.

A service is a `ServiceApp`: it opens its resources, registers its servicers
and closes them again. The kernel adds health, reflection (listing every
nearby service, so grpcurl can describe the whole API through any backend),
the interceptor, keepalive and backlog options, `/metrics`, signal handling
and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server
from psycopg_pool import AsyncConnectionPool

from mesh import db, logs, startup, tracing
from mesh import redis as mesh_redis
from mesh import tls as mesh_tls
from mesh.interceptor import KernelInterceptor
from mesh.protos import all_service_names
from mesh.settings import Settings

log = logging.getLogger("mesh.server")

# Agree with Envoy's and clients' HTTP/2 keepalive pings: grpc's defaults
# answer a ping on an idle connection more often than every 5 min with
# GOAWAY "too_many_pings". The pending-request limits default to 1000/3000 and
# make a reconnect storm fail with INTERNAL. SO_REUSEPORT is off so that a port
# already in use is an error, not two servers silently sharing it.
SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
)


class ServiceApp(ABC):
    """One service: what it serves and what it owns.

    Resources opened with `open_redis`, `open_postgres` and `spawn` are closed
    by the default `close()` in reverse order (tasks first, then pools).
    """

    #: name used in logs and metrics, e.g. "friend_svc"
    name: str
    #: full names of the gRPC services this app serves (for health)
    services: Sequence[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.resources = contextlib.AsyncExitStack()

    async def open(self) -> None:
        """Open pools and start background tasks (before serving)."""

    @abstractmethod
    def register(self, server: grpc.aio.Server) -> None:
        """Add this app's servicers to the server."""

    async def drain(self) -> None:
        """Called after health turned NOT_SERVING, before the server stops."""

    async def close(self) -> None:
        """Stop background tasks and close pools (after the server stopped)."""
        await self.resources.aclose()

    async def open_redis(self, max_connections: int = 64) -> mesh_redis.RedisEngine:
        """The checked Redis engine of the settings (one Redis or a cluster),
        closed by close()."""
        engine = mesh_redis.RedisEngine(
            self.settings.redis_url,
            cluster=self.settings.redis_cluster,
            max_connections=max_connections,
            retry_s=self.settings.redis_retry_s,
        )
        self.resources.push_async_callback(engine.aclose)
        await startup.wait_for_store("Redis", engine.open, self.settings.startup_wait_s)
        return engine

    async def open_postgres(self, package: str | None = None) -> AsyncConnectionPool:
        """An open Postgres pool, closed by close(); with `package`, its
        migrations (`<package>/migrations/NNNN_*.sql`) are applied first."""
        url = self.settings.database_url
        await startup.wait_for_store(
            "Postgres",
            lambda: startup.probe_postgres(url, db.redact(url)),
            self.settings.startup_wait_s,
        )
        pool = await db.open_pool(url, wait_s=self.settings.postgres_wait_s)
        self.resources.push_async_callback(pool.close)
        if package is not None:
            await db.migrate(pool, package, package)
        return pool

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A background task, cancelled (and awaited) by close()."""
        task = asyncio.create_task(coro, name=name)
        self.resources.push_async_callback(stop_task, task)
        return task


async def stop_task(task: asyncio.Task[Any], attempts: int = 5) -> None:
    """Cancel a task and wait for it, cancelling again if it swallowed the
    request (a client library may turn a cancellation that hits it mid-call
    into its own error, which a retry loop then catches); bounded, so that a
    shutdown always finishes."""
    for _ in range(attempts):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if done:
            if not task.cancelled() and task.exception() is not None:
                log.error("task %s failed: %r", task.get_name(), task.exception())
            return
    log.error("task %s did not stop after %d cancellations; abandoned", task.get_name(), attempts)


class Runner:
    """Runs one ServiceApp on a grpc.aio server (also used in-process by tests)."""

    def __init__(self, app: ServiceApp, host: str, port: int, grace_s: float = 10.0) -> None:
        self.app, self.host, self.port, self.grace_s = app, host, port, grace_s
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        try:
            await self.app.open()
        except BaseException:
            await self.app.close()
            raise
        server = grpc.aio.server(
            interceptors=[*tracing.server_interceptors(), KernelInterceptor()],
            options=SERVER_OPTIONS,
        )
        self.app.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [*all_service_names(), health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        try:
            creds = mesh_tls.server_credentials(self.app.settings)  # MESH_TLS: mTLS only
            if creds is not None:
                self.port = server.add_secure_port(f"{self.host}:{self.port}", creds)
            else:
                self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError as exc:
            await self.app.close()
            raise OSError(
                f"{self.app.name}: cannot listen on {self.host}:{self.port} "
                "(port in use? set its *_PORT variable)"
            ) from exc
        await server.start()
        self.server = server
        for name in ("", *self.app.services):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving on %s:%d", self.app.name, self.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Graceful: NOT_SERVING, app drain, stop accepting, finish in-flight calls, close."""
        if self.server is None or self._stopped.is_set():
            return
        self._stopped.set()
        await self.health.enter_graceful_shutdown()
        await self.app.drain()
        await self.server.stop(self.grace_s)
        await self.app.close()
        log.info("%s stopped", self.app.name)

    async def wait(self) -> None:
        await self._stopped.wait()


def main(app_factory: Callable[[Settings], ServiceApp], port_of: Callable[[Settings], int]) -> None:
    """`python -m <svc>`: serve until SIGTERM/SIGINT, then shut down gracefully."""
    settings = Settings.from_env()
    app = app_factory(settings)
    logs.setup(app.name, settings.log_level)
    try:
        tracing.setup(app.name, settings)
    except ValueError as exc:
        log.error("%s: %s", app.name, exc)
        raise SystemExit(2) from exc
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def run() -> None:
        port = int(os.environ.get("PORT", "") or port_of(settings))
        runner = Runner(app, settings.bind_host, port, settings.shutdown_grace_s)

        def serve_metrics() -> None:
            metrics_port = settings.metrics_port or runner.port + 1000
            try:
                start_http_server(metrics_port, addr=settings.bind_host)
            except OSError as exc:
                raise OSError(
                    f"{app.name}: cannot serve /metrics on {settings.bind_host}:{metrics_port} "
                    f"({exc.strerror}); set METRICS_PORT"
                ) from exc
            log.info(
                "%s metrics on http://%s:%d/metrics", app.name, settings.bind_host, metrics_port
            )

        # /metrics is up before health says SERVING (so whoever waits for
        # health can scrape at once), unless the gRPC port is picked at bind.
        if port:
            serve_metrics()
        await runner.start()
        if not port:
            serve_metrics()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("%s shutting down", app.name)
        await runner.stop()

    try:
        asyncio.run(run())
    except OSError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc
    finally:
        tracing.shutdown()
