"""The whole mesh behind a REAL Envoy, on free ports, for tests.

    from tests.support.edge_stack import edge_stack

    async with edge_stack(settings, fanout_replicas=2) as stack:
        stack.envoy_addr                  # "127.0.0.1:PORT": Envoy's gRPC listener
        stack.token("alice", admin=False) # a JWT this Envoy accepts (test-owned key)
        stack.auth("alice")               # [("authorization", "Bearer …")] call metadata
        stack.channel()                   # a grpc.aio channel to Envoy (close it)
        await stack.grpcurl("list")       # the real grpcurl against Envoy -> Grpcurl
        stack.backends["fanout_svc"]      # direct addresses of the backends
        await stack.set_serving("friend_svc", False)   # health NOT_SERVING (in-process)
        await stack.wait_hosts("friend_svc", healthy=False)  # Envoy's view (/clusters)
        await stack.stop_fanout(0)        # graceful stop of replica 0 (as on SIGTERM)
        stack.envoy.stats("cluster.fanout_svc.")       # Envoy counters

Arguments of `edge_stack`:
- `settings`: the test's Settings (redis_url, database_url, short timeouts...).
- `fanout_replicas`: fan-out processes behind the `fanout_svc` cluster.
- `services`: which services to run (default all four). A cluster whose service
  is not run points at a closed port, so Envoy marks it unhealthy.
- `processes`: False (default) runs each service in-process on the test's event
  loop (fast; `set_serving` works); True runs `python -m <svc>` subprocesses
  (real SIGTERM handling, separate cores).
- `health_interval_s`, `stream_idle_timeout_s`, and any other EdgeConfig field
  via `edge`: {...}.
- `per_service`: Settings changes for one service only, e.g.
  `{"location_svc": {"friend_cap": 2}}` (services that disagree, on purpose).
- `tls`: also a TLS listener (`stack.tls_addr`, dev CA `stack.ca_path`);
  `served_jwks`: Envoy fetches the JWKS by URL (remote_jwks) from a loopback
  server of the key's JWKS file (rotation); `mesh_tls`: mTLS Envoy -> backends.
- The per-user rate limit is raised to 1,000/s unless `edge` sets it: tests
  call faster than people do.

Envoy and every backend are stopped at the end, and the temporary folder
(key, config, logs) is removed. Never call blocking code while the stack is up
in in-process mode: the backends share the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from mesh.channels import CLIENT_OPTIONS
from mesh.server import Runner, ServiceApp
from mesh.settings import Settings
from stack import certs, envoy_config, infra, procs, tokens
from stack.edge import Envoy
from stack.jwks_server import JwksServer

ALL_SERVICES: tuple[str, ...] = ("friend_svc", "location_svc", "presence_svc", "fanout_svc")


def app_class(service: str) -> type[ServiceApp]:
    """The ServiceApp subclass defined in `<service>.app`."""
    module = importlib.import_module(f"{service}.app")
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, ServiceApp)
            and value is not ServiceApp
            and value.__module__ == module.__name__
        ):
            return value
    raise LookupError(f"{service}.app defines no ServiceApp")


def grpcurl_binary() -> str:
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which(
        "grpcurl"
    )
    if not found:
        raise FileNotFoundError("grpcurl is missing: install the dev extras (make test)")
    return found


@dataclass(frozen=True)
class Grpcurl:
    """What one grpcurl run printed; `code` is the gRPC status name ("OK", ...)."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def code(self) -> str:
        if self.exit_code == 0:
            return "OK"
        for line in self.stderr.splitlines():
            line = line.strip()
            if line.startswith("Code:"):
                return line.split(":", 1)[1].strip()
        return "UNKNOWN"

    @property
    def message(self) -> str:
        for line in self.stderr.splitlines():
            line = line.strip()
            if line.startswith("Message:"):
                return line.split(":", 1)[1].strip()
        return ""


@dataclass
class EdgeStack:
    settings: Settings
    envoy: Envoy
    envoy_addr: str
    key: tokens.SigningKey
    backends: dict[str, list[str]]
    runners: dict[str, list[Runner]] = field(default_factory=dict)
    children: dict[str, list[procs.Child]] = field(default_factory=dict)
    tls_addr: str = ""
    ca_path: Path | None = None
    home: Path | None = None

    @property
    def admin_url(self) -> str:
        return self.envoy.admin_url

    def token(
        self, user_id: str, *, admin: bool = False, ttl_s: float = 3600, now: float | None = None
    ) -> str:
        return self.key.sign(
            user_id,
            issuer=self.settings.jwt_issuer,
            audience=self.settings.jwt_audience,
            admin=admin,
            ttl_s=ttl_s,
            now=now,
        )

    def auth(self, user_id: str, *, admin: bool = False) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token(user_id, admin=admin)}")]

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.envoy_addr, options=CLIENT_OPTIONS)

    async def create_user(self, user_id: str) -> str:
        """An account for `user_id`, created through Envoy by an admin."""
        from nearby.v1 import friend_service_pb2 as fpb
        from nearby.v1 import friend_service_pb2_grpc as fpb_grpc

        async with self.channel() as ch:
            await fpb_grpc.FriendServiceStub(ch).CreateUser(
                fpb.CreateUserRequest(user_id=user_id, display_name=user_id),
                metadata=self.auth("operator", admin=True),
                timeout=10,
            )
        return user_id

    async def grpcurl(
        self,
        *args: str,
        token: str | None = None,
        data: str | None = None,
        headers: Sequence[str] = (),
        max_time_s: float = 30.0,
        tls: bool = False,
        target: str | None = None,
    ) -> Grpcurl:
        """Run the real grpcurl against Envoy: `grpcurl -plaintext [..] ADDR *args`
        (with `tls`: `-cacert CA` against the TLS listener)."""
        cmd = [grpcurl_binary(), "-max-time", str(int(max_time_s))]
        cmd += ["-cacert", str(self.ca_path)] if tls else ["-plaintext"]
        if token is not None:
            cmd += ["-H", f"authorization: Bearer {token}"]
        for h in headers:
            cmd += ["-H", h]
        if data is not None:
            cmd += ["-d", data]
        cmd += [target or (self.tls_addr if tls else self.envoy_addr), *args]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), max_time_s + 10)
        return Grpcurl(proc.returncode or 0, out.decode(), err.decode())

    async def set_serving(self, service: str, serving: bool, replica: int = 0) -> None:
        """Flip a backend's health for Envoy (in-process stacks only)."""
        runner = self.runners[service][replica]
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *runner.app.services):
            await runner.health.set(name, status)

    async def wait_hosts(self, cluster: str, *, healthy: bool, within_s: float = 20.0) -> None:
        """Until Envoy sees every host of `cluster` as healthy (or none)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while True:
            flags = await asyncio.to_thread(self.envoy.host_health, cluster)
            if flags and all(v == healthy for v in flags.values()):
                return
            if loop.time() > deadline:
                raise TimeoutError(f"{cluster} hosts in Envoy: {flags}, wanted healthy={healthy}")
            await asyncio.sleep(0.1)

    async def stop_fanout(self, replica: int) -> None:
        """Stop one fan-out replica the way SIGTERM does (drain, then exit)."""
        if "fanout_svc" in self.children:
            child = self.children["fanout_svc"][replica]
            await asyncio.to_thread(child.stop, self.settings.drain_s + 15)
        else:
            await self.runners["fanout_svc"][replica].stop()


@contextlib.asynccontextmanager
async def edge_stack(
    settings: Settings,
    *,
    fanout_replicas: int = 1,
    services: Sequence[str] = ALL_SERVICES,
    processes: bool = False,
    health_interval_s: float = 0.5,
    stream_idle_timeout_s: float | None = None,
    edge: dict[str, Any] | None = None,
    per_service: dict[str, dict[str, Any]] | None = None,
    tls: bool = False,
    served_jwks: bool = False,
    mesh_tls: bool = False,
) -> AsyncIterator[EdgeStack]:
    unknown = set(services) - set(ALL_SERVICES)
    if unknown:
        raise ValueError(f"unknown services {sorted(unknown)}")
    tmp = Path(tempfile.mkdtemp(prefix="nearby-edge-"))
    runners: dict[str, list[Runner]] = {}
    children: dict[str, list[procs.Child]] = {}
    envoy: Envoy | None = None
    jwks_server: JwksServer | None = None
    try:
        key = tokens.load_or_create(tmp / "key")
        ports = {name: [infra.free_port()] for name in ALL_SERVICES[:3]}
        ports["fanout_svc"] = [infra.free_port() for _ in range(fanout_replicas)]
        backends = {name: [f"127.0.0.1:{p}" for p in ps] for name, ps in ports.items()}
        settings = settings.replace(
            friend_addr=backends["friend_svc"][0],
            location_addr=backends["location_svc"][0],
            presence_addr=backends["presence_svc"][0],
            jwks_path=str(key.jwks_path),
        )
        dev_tls = certs.load_or_create(tmp) if tls or mesh_tls else None
        if tls and dev_tls is not None:
            settings = settings.replace(
                envoy_tls_port=infra.free_port(),
                tls_cert_path=str(dev_tls.server_cert),
                tls_key_path=str(dev_tls.server_key),
            )
        if mesh_tls and dev_tls is not None:
            settings = settings.replace(
                mesh_tls=True,
                mesh_tls_ca_path=str(dev_tls.ca),
                mesh_tls_cert_path=str(dev_tls.mesh_cert),
                mesh_tls_key_path=str(dev_tls.mesh_key),
            )
        if served_jwks:
            jwks_server = JwksServer(key.jwks_path).start()
            settings = settings.replace(jwks_url=jwks_server.url)
        for name in (s for s in ALL_SERVICES if s in services):
            own = settings.replace(**(per_service or {}).get(name, {}))
            if processes:
                children[name] = [
                    procs.spawn(
                        f"{name}#{i}" if name == "fanout_svc" else name,
                        procs.SERVICES[name],
                        own,
                        port,
                        infra.free_port(),
                        log_path=tmp / "logs" / f"{name}-{i}.log",
                    )
                    for i, port in enumerate(ports[name])
                ]
            else:
                cls = app_class(name)
                runners[name] = []
                for port in ports[name]:
                    runner = Runner(cls(own), "127.0.0.1", port, grace_s=2.0)
                    await runner.start()
                    runners[name].append(runner)
        if children:
            every = [c for cs in children.values() for c in cs]
            await asyncio.to_thread(procs.wait_healthy, every, 60.0)

        envoy_port, admin_port = infra.free_port(), infra.free_port()
        overrides: dict[str, Any] = {
            "listen_host": "127.0.0.1",
            "port": envoy_port,
            "admin_port": admin_port,
            "health_interval_s": health_interval_s,
            "health_timeout_s": max(health_interval_s, 0.5),
            "rate_limit_per_s": 1000.0,
            "rate_limit_burst": 1000,
        }
        if stream_idle_timeout_s is not None:
            overrides["stream_idle_timeout_s"] = stream_idle_timeout_s
        overrides.update(edge or {})
        cfg = envoy_config.from_settings(settings, fanout=backends["fanout_svc"], **overrides)
        config_path = envoy_config.write(cfg, tmp / "envoy.yaml")
        envoy = Envoy(config_path, admin_port, tmp / "envoy.log", concurrency=1).start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not await asyncio.to_thread(envoy.ready_once):
            if loop.time() > deadline:
                raise TimeoutError("Envoy was not ready within 30 s")
            await asyncio.sleep(0.05)
        stack = EdgeStack(
            settings, envoy, f"127.0.0.1:{envoy_port}", key, backends, runners, children
        )
        stack.home = tmp
        if tls and dev_tls is not None:
            stack.tls_addr, stack.ca_path = f"127.0.0.1:{cfg.tls_port}", dev_tls.ca
        for name in services:
            await stack.wait_hosts(name, healthy=True)
        yield stack
    finally:
        if envoy is not None:
            await asyncio.to_thread(envoy.stop)
        if jwks_server is not None:
            jwks_server.stop()
        for name in reversed(ALL_SERVICES):
            for runner in reversed(runners.get(name, [])):
                await runner.stop()
            for child in reversed(children.get(name, [])):
                await asyncio.to_thread(child.stop, settings.drain_s + 15)
        shutil.rmtree(tmp, ignore_errors=True)
