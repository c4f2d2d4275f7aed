"""Starts what a scenario needs on free loopback ports and stops it all again.

A `Harness` owns one private Postgres (a fresh database per scenario), a
private Redis per scenario, the services as subprocesses (`python -m
friend_svc` ... with the environment variables of mesh/settings.py) and,
when asked, Envoy. Everything it starts is stopped by `close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procstat import Proc
from mesh.settings import Settings
from stack import infra, procs
from stack.procs import Child

SERVICES = ("friend_svc", "location_svc", "presence_svc", "fanout_svc")

# Benchmark defaults on top of the services' own: quiet logs, no rate cap
# (load generators report faster than a phone would).
BENCH_ENV: dict[str, str] = {
    "LOG_LEVEL": "WARNING",
    "MIN_REPORT_INTERVAL_S": "0",
}


def with_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    """`settings` with the variables in `env` applied (parsed as from_env does)."""
    parsed = Settings.from_env(env)
    names = {f.metadata["env"]: f.name for f in dataclasses.fields(Settings)}
    return settings.replace(**{names[k]: getattr(parsed, names[k]) for k in env if k in names})


def measured(child: Child) -> Proc:
    """A child as a process to measure (CPU, RSS)."""
    return Proc(child.name, child.proc.pid)


@dataclass
class Mesh:
    """A running mesh: service addresses, the processes to measure and the
    settings its services were started with."""

    redis_url: str
    database_url: str
    settings: Settings
    children: dict[str, Child] = field(default_factory=dict)
    envoy: Any = None  # stack.edge.Envoy when started
    envoy_port: int = 0

    def addr(self, name: str) -> str:
        return self.children[name].addr

    @property
    def fanouts(self) -> list[Child]:
        return [c for n, c in self.children.items() if n.startswith("fanout")]


class Harness:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        # Postgres runs as the `postgres` user when we are root: it must reach its folder
        self.root.chmod(0o755)
        self.logs = root / "logs"
        self.logs.mkdir(exist_ok=True)
        self._children: list[Child] = []
        self._redis: list[infra.RedisServer | infra.RedisCluster] = []
        self._pg: infra.PostgresServer | None = None
        self._envoys: list[Any] = []
        self.signer: Any = None

    # --- infrastructure ---------------------------------------------------
    def redis(self, *extra: str) -> tuple[str, Proc]:
        """A fresh private Redis: its URL and its process to measure."""
        server = infra.RedisServer(self.root / f"redis-{len(self._redis)}").start()
        self._redis.append(server)
        assert server.proc is not None
        if extra:
            import redis

            r = redis.Redis.from_url(server.url)
            for i in range(0, len(extra), 2):
                r.config_set(extra[i], extra[i + 1])
            r.close()
        return server.url, Proc("redis", server.proc.pid)

    def redis_cluster(self, masters: int) -> tuple[str, list[Proc]]:
        """A fresh private Redis Cluster of `masters` masters, no replicas: a
        seed node's URL and one process to measure per master (`redis-<port>`)."""
        cluster = infra.RedisCluster(self.root / f"redis-{len(self._redis)}", masters, replicas=0)
        self._redis.append(cluster)
        cluster.start()
        return cluster.url, [
            Proc(f"redis-{port}", cluster.procs[port].pid) for port in cluster.master_ports()
        ]

    def postgres(self) -> infra.PostgresServer:
        """The suite's private Postgres (default durability: fsync on)."""
        if self._pg is None:
            self._pg = infra.PostgresServer(self.root / "pg").start()
        return self._pg

    def database(self, prefix: str = "bench") -> str:
        pg = self.postgres()
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        infra.create_database(pg.url, name)
        return infra.database_url(pg.url, name)

    def postgres_proc(self) -> Proc:
        pg = self.postgres()
        assert pg.proc is not None
        return Proc("postgres", pg.proc.pid, tree=True)

    # --- processes (stack.procs: the same way `nearby run` starts them) ----
    def spawn(
        self,
        name: str,
        module: str,
        args: list[str],
        *,
        health_service: str,
        port: int,
        wait: float = 30.0,
    ) -> Child:
        """`python -m module *args` (a server on `port` with grpc.health.v1),
        waited for until SERVING."""
        log = self.logs / f"{name}.log"
        argv = [sys.executable, "-m", module, *args]
        proc = procs.start(argv, os.environ, log, die_with_parent=True)
        child = Child(name, procs.ServiceSpec(module, health_service), port, 0, log, proc)
        self._children.append(child)
        procs.wait_healthy([child], wait)
        return child

    def mesh_settings(
        self, redis_url: str, database_url: str, env: Mapping[str, str] | None = None
    ) -> Settings:
        """The settings of a benchmark mesh: BENCH_ENV, then `env`, on free ports."""
        ports = {s: infra.free_port() for s in ("friend", "location", "presence", "fanout")}
        return Settings.from_env(
            {
                **os.environ,
                **BENCH_ENV,
                "REDIS_URL": redis_url,
                "DATABASE_URL": database_url,
                **{f"{s.upper()}_PORT": str(p) for s, p in ports.items()},
                **{f"{s.upper()}_ADDR": f"127.0.0.1:{p}" for s, p in ports.items()},
                **(env or {}),
            }
        )

    def start_mesh(
        self,
        redis_url: str,
        database_url: str,
        *,
        fanout_replicas: int = 1,
        env: Mapping[str, str] | None = None,
        services: tuple[str, ...] = SERVICES,
        cluster: bool = False,
    ) -> Mesh:
        """The services as subprocesses (stack.procs), all started at once and
        waited for until healthy. `cluster`: `redis_url` is a seed node of a
        Redis Cluster (REDIS_CLUSTER=1)."""
        extra = {**(env or {}), **({"REDIS_CLUSTER": "1"} if cluster else {})}
        settings = self.mesh_settings(redis_url, database_url, extra)
        mesh = Mesh(redis_url, database_url, settings)
        own_port = {
            "friend_svc": settings.friend_port,
            "location_svc": settings.location_port,
            "presence_svc": settings.presence_port,
        }
        started = []
        for svc in services:
            if svc == "fanout_svc":
                for _ in range(fanout_replicas):
                    started.append(self.add_fanout(mesh, wait=False))
                continue
            name = svc.removesuffix("_svc")
            child = self._service(name, svc, settings, own_port[svc])
            mesh.children[name] = child
            started.append(child)
        procs.wait_healthy(started, 90)
        return mesh

    def add_fanout(
        self, mesh: Mesh, env: Mapping[str, str] | None = None, *, wait: bool = True
    ) -> Child:
        """One more fan-out replica of `mesh` (its settings, changed by `env`)."""
        settings = with_env(mesh.settings, env or {})
        i = len(mesh.fanouts)
        while f"fanout-{i}" in mesh.children:
            i += 1
        child = self._service(f"fanout-{i}", "fanout_svc", settings, infra.free_port())
        mesh.children[child.name] = child
        if wait:
            procs.wait_healthy([child], 90)
        return child

    def _service(self, name: str, svc: str, settings: Settings, port: int) -> Child:
        child = procs.spawn(
            name,
            procs.SERVICES[svc],
            settings,
            port,
            infra.free_port(),
            log_path=self.logs / f"{name}.log",
            die_with_parent=True,
        )
        self._children.append(child)
        return child

    def start_envoy(self, mesh: Mesh, concurrency: int = 1) -> Any:
        """Envoy in front of `mesh` (the edge's own config builder), waited for
        until every fan-out replica is healthy. Returns the stack.edge.Envoy."""
        envoy, port = self.envoy(
            [c.addr for c in mesh.fanouts],
            friend=mesh.addr("friend"),
            location=mesh.addr("location"),
            presence=mesh.addr("presence"),
            concurrency=concurrency,
        )
        mesh.envoy, mesh.envoy_port = envoy, port
        return envoy

    def envoy(
        self,
        fanouts: list[str],
        *,
        friend: str = "",
        location: str = "",
        presence: str = "",
        concurrency: int = 1,
    ) -> tuple[Any, int]:
        """An Envoy (the edge's config) routing Connect streams to `fanouts`,
        ready once every one of them is healthy: (stack.edge.Envoy, its port).
        Backends not given point at the first fan-out address (never called)."""
        from stack import tokens
        from stack.edge import Envoy
        from stack.envoy_config import EdgeConfig, write

        key = tokens.load_or_create(self.root / "keys")
        port, admin = infra.free_port(), infra.free_port()
        cfg = EdgeConfig(
            friend=friend or fanouts[0],
            location=location or fanouts[0],
            presence=presence or fanouts[0],
            fanout=tuple(fanouts),
            jwks_path=str(key.jwks_path),
            listen_host="127.0.0.1",
            port=port,
            admin_port=admin,
        )
        path = write(cfg, self.root / f"envoy-{port}.yaml")
        envoy = Envoy(path, admin, self.logs / "envoy.log", concurrency=concurrency).start()
        self._envoys.append(envoy)
        envoy.wait_ready(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = envoy.host_health("fanout_svc")
            if health and all(health.values()):
                break
            time.sleep(0.1)
        else:
            raise TimeoutError("Envoy did not see the fan-out replicas healthy within 30 s")
        self.signer = key
        return envoy, port

    def token(self, user_id: str) -> str:
        """A JWT the harness's Envoy accepts (after start_envoy)."""
        from stack.envoy_config import EdgeConfig

        d = EdgeConfig()
        return str(self.signer.sign(user_id, issuer=d.issuer, audience=d.audience, ttl_s=7200))

    def stop(self, child: Child, timeout: float = 15.0) -> None:
        child.stop(timeout)
        with contextlib.suppress(ValueError):
            self._children.remove(child)

    def stop_envoy(self, mesh: Mesh) -> None:
        if mesh.envoy is not None:
            mesh.envoy.stop()
            with contextlib.suppress(ValueError):
                self._envoys.remove(mesh.envoy)
            mesh.envoy = None

    def stop_mesh(self, mesh: Mesh) -> None:
        self.stop_envoy(mesh)
        # fan-out first (it calls the others), then the rest
        for name in sorted(mesh.children, key=lambda n: (not n.startswith("fanout"), n)):
            self.stop(mesh.children[name])
        mesh.children.clear()

    def close(self) -> None:
        for envoy in self._envoys:
            envoy.stop()
        for child in reversed(self._children):
            child.stop(10)
        self._children.clear()
        for r in self._redis:
            r.stop()
        self._redis.clear()
        if self._pg is not None:
            self._pg.stop()
            self._pg = None

    def stop_redis(self) -> None:
        for r in self._redis:
            r.stop()
        self._redis.clear()


@contextlib.contextmanager
def harness(root: Path) -> Iterator[Harness]:
    h = Harness(root)
    try:
        yield h
    finally:
        h.close()


def wait_until(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate()` until true or `timeout` seconds passed."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class LoadClient:
    """Drives one `bench.loadgen` subprocess (JSON lines over its stdin/stdout)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, h: Harness, target: str, per_channel: int = 500) -> LoadClient:
        log = open(h.logs / "loadgen.log", "ab")  # noqa: SIM115, ASYNC230 - owned by the child
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.loadgen",
            "--target",
            target,
            "--per-channel",
            str(per_channel),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            limit=16 * 1024 * 1024,
        )
        log.close()
        return cls(proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def call(self, wait_s: float = 300.0, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), wait_s)
        if not line:
            raise RuntimeError(f"load generator exited (code {self.proc.returncode})")
        out: dict[str, Any] = json.loads(line)
        return out

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call(wait_s=30, cmd="close")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 10)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def metric(child: Child, name: str, **labels: str) -> float:
    """Sum of the samples of Prometheus metric `name` (matching `labels`) that
    `child` exposes on its /metrics port; 0 when absent."""
    import urllib.request

    url = f"http://127.0.0.1:{child.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric_name, _, label_text = head.partition("{")
        if metric_name != name:
            continue
        got = dict(
            (k, v.strip('"'))
            for k, _, v in (p.partition("=") for p in label_text.rstrip("}").split(",") if p)
        )
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total
