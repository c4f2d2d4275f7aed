"""`nearby run` (`make run`): the whole stack in the foreground.

Order: Redis and Postgres (the ones at REDIS_URL / DATABASE_URL when reachable,
else private ones with their data in NEARBY_HOME; with `--redis-cluster N` a
private Redis Cluster unless REDIS_CLUSTER=1 names one), the `nearby` database,
friend/location/presence and N fan-out replicas (each `python -m <svc>` in its
own process group, waited on until its gRPC health is SERVING), then Envoy.
It runs from any folder of the checkout: the services start in the checkout's
root and a relative NEARBY_HOME is taken from there (stack/paths.py).

One Ctrl-C or SIGTERM, however many processes of the group it reaches, is one
graceful stop (stack/signals.py): the fan-out replicas drain first, while
Envoy still carries their Reconnect to the clients, then Envoy, the other
services and the private servers stop; a second signal more than a second
later kills what is left. Once everything is up, a process that exits
unexpectedly (killed, crashed, or a replica that drained after a SIGTERM from
outside) is restarted with backoff, up to a cap, while the rest keeps running
(stack/supervisor.py). Problems that stop the start (a port in use, a missing
binary, an unreachable database, a service that dies while starting) are
reported as one line and stop everything.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psycopg
import redis

from mesh import redis_checks
from mesh.settings import Settings
from stack import (
    devtoken,
    edge_run,
    envoy_browser,
    envoy_config,
    infra,
    mappage,
    paths,
    procs,
    prometheus,
    tokens,
)
from stack.edge import Envoy, envoy_binary
from stack.jwks_server import JwksServer
from stack.signals import SignalBurst, Verdict
from stack.supervisor import Supervisor


class StartError(Exception):
    """A problem the user must fix; its message is the one line we print."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"Envoy's gRPC port for clients (ENVOY_PORT, default {defaults.envoy_port})",
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help=f"Envoy's admin port, loopback (ENVOY_ADMIN_PORT, default {defaults.envoy_admin_port})",
    )
    parser.add_argument(
        "--fanout-replicas",
        type=int,
        default=None,
        help="fan-out processes behind Envoy (FANOUT_REPLICAS, default one per CPU core)",
    )
    parser.add_argument(
        "--redis-cluster",
        type=int,
        default=None,
        metavar="MASTERS",
        help="run on a private Redis Cluster of MASTERS masters with a replica each "
        "(unless REDIS_CLUSTER=1 and REDIS_URL name a cluster)",
    )
    parser.add_argument(
        "--prometheus",
        nargs="?",
        type=int,
        const=prometheus.DEFAULT_PORT,
        default=None,
        metavar="PORT",
        help="also run Debian's prometheus scraping every process of the stack, on "
        f"127.0.0.1:PORT (default {prometheus.DEFAULT_PORT}; `make deps-prometheus` installs it)",
    )
    parser.add_argument(
        "--listen",
        default="0.0.0.0",
        help="interface of Envoy's client listener (default 0.0.0.0; backends stay on loopback)",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        default=None,
        help="a development stack (DEV_MODE=1): dev login at POST /dev/token, CORS for "
        "the map page (refused with JWKS_PATH set)",
    )


# ----------------------------------------------------------------------------
# checks


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(wanted: list[tuple[str, int, str, str]]) -> None:
    """(host, port, what, how to change it): fail on the first one in use."""
    seen: dict[int, str] = {}
    for host, port, what, fix in wanted:
        if port in seen:
            raise StartError(f"port {port} is wanted twice ({seen[port]} and {what}): {fix}")
        seen[port] = what
        if not _port_free(host, port):
            raise StartError(
                f"port {port} ({what}) is already in use: stop what listens there "
                f"(`ss -ltnp 'sport = :{port}'`) or {fix}"
            )


def check_modules() -> None:
    import importlib.util

    root = paths.checkout()
    for spec in procs.SERVICES.values():
        try:
            found = importlib.util.find_spec(f"{spec.module}.__main__") is not None
        except ModuleNotFoundError:
            found = False
        # the services start in the checkout's root, where `python -m` finds them
        found = found or (root is not None and (root / spec.module / "__main__.py").is_file())
        if not found:
            raise StartError(
                f"`python -m {spec.module}` is not available: run `make run` once in the "
                "checkout to install the project (or reinstall with `pip install -e .`)"
            )


def raise_fd_limit() -> None:
    """Thousands of streams need thousands of sockets: lift the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def check_dev(settings: Settings) -> None:
    """The browser settings: origins that are origins, and dev mode (it mints
    tokens with the local dev key) only for a stack whose Envoy trusts that
    key (JWKS_PATH unset), never next to a real issuer."""
    try:
        envoy_browser.origins(settings)
    except ValueError as exc:
        raise StartError(str(exc)) from exc
    if settings.dev_mode and settings.jwks_path:
        raise StartError(
            f"dev mode (--dev, DEV_MODE=1) is refused with JWKS_PATH={settings.jwks_path}: "
            "its dev login would sign tokens with the local dev key for an Envoy that trusts "
            "another issuer; unset JWKS_PATH for a dev stack, or run without --dev"
        )


# ----------------------------------------------------------------------------
# infrastructure


def _redis_reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def _pg_error(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _dbname(url: str) -> str:
    name = psycopg.conninfo.conninfo_to_dict(url).get("dbname")
    return str(name or "nearby")


@dataclass
class Stack:
    """Everything `nearby run` started; stop() ends it, the fan-out first."""

    redis_server: infra.RedisServer | None = None
    redis_cluster: infra.RedisCluster | None = None
    postgres_server: infra.PostgresServer | None = None
    children: list[procs.Child] = field(default_factory=list)
    envoy: Envoy | None = None
    #: dev mode only: the dev login behind Envoy's /dev/token
    dev_token: devtoken.DevTokenServer | None = None
    #: dev mode only: the map page (web/dist) on MAP_PORT
    map_page: mappage.MapPageServer | None = None
    #: restarts the children and Envoy once everything is up
    supervisor: Supervisor | None = None
    #: `--prometheus`: the Prometheus scraping the stack
    prometheus: prometheus.Prometheus | None = None
    #: serves the dev JWKS to Envoy (remote_jwks), so a rotated key needs no restart
    jwks_server: JwksServer | None = None

    def stop(self, settings: Settings, say: Callable[[str], None]) -> list[str]:
        """Stops everything; returns the processes that did not exit with 0
        ("name (code N)"), a killed one included."""
        grace = settings.shutdown_grace_s + 5
        if self.prometheus is not None:
            say("stopping Prometheus")
            self.prometheus.stop()
        fanouts = [c for c in self.children if c.spec.module == "fanout_svc"]
        others = [c for c in self.children if c.spec.module != "fanout_svc"]
        running = [c for c in fanouts if c.exit_code() is None]
        if running:
            # before Envoy: a draining replica's Reconnect reaches the clients through it
            say(f"stopping {len(running)} fan-out replica(s) (drain)")
            _parallel([functools.partial(c.stop, settings.drain_s + grace) for c in running])
        if self.envoy is not None and self.envoy.running:
            say("stopping Envoy")
            self.envoy.stop()
        if self.dev_token is not None:
            self.dev_token.stop()
        if self.map_page is not None:
            self.map_page.stop()
        for child in reversed(others):
            if child.exit_code() is None:
                say(f"stopping {child.name}")
            child.stop(grace)
        codes = {c.name: c.exit_code() for c in self.children}
        if self.envoy is not None and self.envoy.proc is not None:
            codes["Envoy"] = self.envoy.proc.returncode
        given_up = {w.name for w in self.supervisor.given_up} if self.supervisor else set()
        unclean = [
            f"{name} (given up)" if name in given_up else f"{name} (code {code})"
            for name, code in codes.items()
            if code != 0 or name in given_up
        ]
        if self.postgres_server is not None:
            say("stopping the private Postgres")
            self.postgres_server.stop()
        if self.redis_server is not None:
            say("stopping the private Redis")
            self.redis_server.stop()
        if self.redis_cluster is not None:
            say("stopping the private Redis Cluster")
            self.redis_cluster.stop()
        if self.jwks_server is not None:
            self.jwks_server.stop()
        return unclean

    def kill(self) -> None:
        """A deliberate second signal: no more grace."""
        for child in self.children:
            child.signal(signal.SIGKILL)
        if self.envoy is not None and self.envoy.proc is not None:
            procs.signal_group(self.envoy.proc.pid, signal.SIGKILL)


def _parallel(jobs: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def resolve_redis(
    settings: Settings, home: Path, explicit: bool, stack: Stack, say: Callable[[str], None]
) -> str:
    if _redis_reachable(settings.redis_url):
        say(f"using Redis at {settings.redis_url}")
        return settings.redis_url
    if explicit:
        raise StartError(
            f"REDIS_URL={settings.redis_url} is not reachable: start that Redis, fix REDIS_URL, "
            "or unset it to let `nearby run` start a private one"
        )
    try:
        infra.find_binary("redis-server")
    except FileNotFoundError as exc:
        raise StartError(str(exc)) from exc
    say(f"starting a private Redis (data in {home / 'redis'})")
    stack.redis_server = infra.RedisServer(home / "redis")
    try:
        stack.redis_server.start()
    except (OSError, RuntimeError) as exc:
        raise StartError(
            f"could not start a private Redis: {exc} (see {home / 'redis' / 'redis.log'})"
        ) from exc
    return stack.redis_server.url


def resolve_redis_cluster(
    settings: Settings,
    home: Path,
    explicit: bool,
    masters: int,
    stack: Stack,
    say: Callable[[str], None],
) -> str:
    """The cluster named by REDIS_CLUSTER=1 + REDIS_URL (checked), else a
    private one of `masters` masters and a replica each (fresh on each run)."""
    if settings.redis_cluster and explicit:
        problem = redis_checks.cluster_problem(settings.redis_url)
        if problem is not None:
            raise StartError(problem)
        say(f"using the Redis Cluster at {settings.redis_url}")
        return settings.redis_url
    if masters < 3:
        raise StartError(f"--redis-cluster {masters}: a Redis Cluster needs at least 3 masters")
    try:
        for binary in ("redis-server", "redis-cli"):
            infra.find_binary(binary)
    except FileNotFoundError as exc:
        raise StartError(str(exc)) from exc
    folder = home / "redis-cluster"
    shutil.rmtree(folder, ignore_errors=True)
    say(f"starting a private Redis Cluster: {masters} masters + {masters} replicas ({folder})")
    stack.redis_cluster = infra.RedisCluster(folder, masters=masters, replicas=1)
    try:
        stack.redis_cluster.start()
    except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        raise StartError(
            f"could not start a private Redis Cluster: {exc} (logs: {folder}/<port>/redis.log)"
        ) from exc
    problem = redis_checks.cluster_problem(stack.redis_cluster.url)
    if problem is not None:
        raise StartError(problem)
    return stack.redis_cluster.url


def resolve_postgres(
    settings: Settings, home: Path, explicit: bool, stack: Stack, say: Callable[[str], None]
) -> str:
    url = settings.database_url
    name = _dbname(url)
    admin = infra.database_url(url, "postgres")
    problem = _pg_error(admin)
    if problem is None:
        say(f"using Postgres at {admin.rsplit('/', 1)[0]}")
    elif explicit:
        raise StartError(
            f"DATABASE_URL={url} is not reachable ({problem}): start that server, fix "
            "DATABASE_URL, or unset it to let `nearby run` start a private Postgres"
        )
    else:
        try:
            for binary in ("initdb", "postgres"):
                infra.find_binary(binary)
        except FileNotFoundError as exc:
            raise StartError(str(exc)) from exc
        say(f"starting a private Postgres (data in {home / 'postgres'})")
        home.mkdir(parents=True, exist_ok=True)
        stack.postgres_server = infra.PostgresServer(home / "postgres")
        try:
            stack.postgres_server.start()
        except (OSError, RuntimeError, subprocess.CalledProcessError, psycopg.Error) as exc:
            stderr = getattr(exc, "stderr", None)
            lines = stderr.decode(errors="replace").strip().splitlines() if stderr else []
            detail = lines[-1] if lines else str(exc)
            raise StartError(
                f"could not start a private Postgres in {home / 'postgres'}: {detail} "
                "(as root it runs as the `postgres` user, which must be able to reach that "
                "folder; or set DATABASE_URL)"
            ) from exc
        admin = stack.postgres_server.url
        url = infra.database_url(admin, name)
    try:
        infra.create_database(admin, name)
    except psycopg.Error as exc:
        raise StartError(f"cannot create database {name!r}: {str(exc).strip()}") from exc
    return url


# ----------------------------------------------------------------------------
# the run


def _relative_command(name: str) -> str:
    """How to call a venv tool from the current folder."""
    tool = Path(sys.executable).parent / name
    if not tool.exists():
        return name
    rel = os.path.relpath(tool)
    return str(tool) if rel.startswith("..") else rel


def banner(settings: Settings, stack: Stack, listen: str, home: Path, redis_url: str) -> str:
    redis_line = f"  Redis         {redis_url}"
    if settings.redis_cluster:
        redis_line = f"  Redis Cluster {redis_url}  (a seed node)"
    host = "localhost"
    nearby, grpcurl = _relative_command("nearby"), _relative_command("grpcurl")
    if home != paths.home(Settings()):  # another shell would not find it by itself
        nearby = f"NEARBY_HOME={home} {nearby}"
    lines = [
        "",
        "nearby is running (Ctrl-C stops everything)",
        f"  Envoy gRPC    {host}:{settings.envoy_port}  (listening on {listen}; clients, JWT)",
        f"  Envoy admin   http://127.0.0.1:{settings.envoy_admin_port}/  (loopback only)",
        *edge_run.banner_lines(settings, host),
    ]
    if settings.dev_mode:
        lines.append(
            f"  dev login     POST http://{host}:{settings.envoy_port}/dev/token  "
            f"(dev mode; CORS: {', '.join(envoy_browser.origins(settings))})"
        )
        lines.append(f"  map page      http://{host}:{settings.map_port}/  (dev mode)")
    for child in stack.children:
        lines.append(
            f"  {child.name:<13} 127.0.0.1:{child.port}  "
            f"metrics http://127.0.0.1:{child.metrics_port}/metrics"
        )
    lines += [
        redis_line,
        f"  Postgres      {settings.database_url}",
        f"  logs          {home / 'logs'}/",
        "",
        "Try, from another shell in this folder:",
        f"  {grpcurl} -plaintext {host}:{settings.envoy_port} list",
        f"  ADMIN=$({nearby} token operator --admin)",
        f'  {grpcurl} -plaintext -H "authorization: Bearer $ADMIN" '
        '-d \'{"user_id":"alice","display_name":"Alice"}\' '
        f"{host}:{settings.envoy_port} nearby.v1.FriendService/CreateUser",
        f"  TOKEN=$({nearby} token alice)",
        f'  {grpcurl} -plaintext -H "authorization: Bearer $TOKEN" '
        f"{host}:{settings.envoy_port} nearby.v1.FriendService/ListFriends",
        "",
    ]
    return "\n".join(lines)


def start_prometheus(
    stack: Stack, settings: Settings, home: Path, port: int, say: Callable[[str], None]
) -> None:
    """`--prometheus`: Debian's prometheus on `port`, its config and data in
    NEARBY_HOME/prometheus, scraping every process of the stack."""
    if not _port_free("127.0.0.1", port):
        raise StartError(f"Prometheus: port {port} is in use (pass --prometheus OTHER_PORT)")
    targets = prometheus.targets_of(stack.children, settings.envoy_admin_port)
    try:
        stack.prometheus = prometheus.Prometheus(home / "prometheus", targets, port)
        stack.prometheus.start()
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        raise StartError(f"Prometheus: {exc}") from exc
    say(f"Prometheus on {stack.prometheus.url}/ ({len(targets)} targets)")


def main(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(f"nearby: {line}", flush=True)

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"nearby run: {exc}", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {}
    if args.port is not None:
        overrides["envoy_port"] = args.port
    if args.admin_port is not None:
        overrides["envoy_admin_port"] = args.admin_port
    if args.fanout_replicas is not None:
        if args.fanout_replicas < 1:
            print("nearby run: --fanout-replicas must be at least 1", file=sys.stderr)
            return 2
        overrides["fanout_replicas"] = args.fanout_replicas
    if getattr(args, "dev", None):
        overrides["dev_mode"] = True
    settings = settings.replace(**overrides)
    replicas = envoy_config.replica_count(settings)
    home = paths.home(settings)
    stack = Stack()
    stopping = threading.Event()
    burst = SignalBurst()
    killed = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of the main thread, maybe inside a
        # print(): write the line with one system call instead.
        verdict = burst.receive()
        if verdict is Verdict.NOW and not killed.is_set():
            killed.set()
            os.write(sys.stdout.fileno(), b"nearby: stopping now (second signal)\n")
            stack.kill()
        stopping.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        code = _run(
            settings,
            args.listen,
            replicas,
            home,
            stack,
            stopping,
            say,
            args.redis_cluster,
            args.prometheus,
        )
    except StartError as exc:
        print(f"nearby run: {exc}", file=sys.stderr, flush=True)
        code = 2
    finally:
        unclean = stack.stop(settings, say)
        for s, handler in old.items():
            signal.signal(s, handler)
    if killed.is_set():
        return code or 1
    if unclean:
        say(f"stopped; not cleanly: {', '.join(unclean)}")
        return code or 1
    if code == 0:
        say("stopped; every process exited cleanly")
    return code


def _run(
    settings: Settings,
    listen: str,
    replicas: int,
    home: Path,
    stack: Stack,
    stopping: threading.Event,
    say: Callable[[str], None],
    cluster_masters: int | None = None,
    prometheus_port: int | None = None,
) -> int:
    check_modules()
    try:
        envoy_binary()
    except FileNotFoundError as exc:
        raise StartError(str(exc)) from exc
    loopback = "127.0.0.1"
    services = [("friend_svc", settings.friend_port, "FRIEND_PORT")]
    services += [("location_svc", settings.location_port, "LOCATION_PORT")]
    services += [("presence_svc", settings.presence_port, "PRESENCE_PORT")]
    services += [
        (f"fanout_svc#{i}", settings.fanout_port + i, "FANOUT_PORT") for i in range(replicas)
    ]
    wanted = [
        (listen, settings.envoy_port, "Envoy gRPC listener", "pass --port"),
        (loopback, settings.envoy_admin_port, "Envoy admin", "pass --admin-port"),
    ]
    wanted += edge_run.wanted_ports(settings, listen)
    for name, port, var in services:
        wanted.append((settings.bind_host, port, name, f"set {var}"))
        wanted.append((settings.bind_host, port + 1000, f"{name} metrics", f"set {var}"))
    check_dev(settings)
    if settings.dev_mode:
        wanted.append((loopback, settings.dev_token_port, "dev login", "set DEV_TOKEN_PORT"))
        wanted.append((loopback, settings.map_port, "map page", "set MAP_PORT"))
    check_ports(wanted)
    raise_fd_limit()

    explicit = {k: bool(os.environ.get(k)) for k in ("REDIS_URL", "DATABASE_URL")}
    if cluster_masters is not None or settings.redis_cluster:
        redis_url = resolve_redis_cluster(
            settings, home, explicit["REDIS_URL"], cluster_masters or 3, stack, say
        )
        settings = settings.replace(redis_cluster=True)
    else:
        redis_url = resolve_redis(settings, home, explicit["REDIS_URL"], stack, say)
    if stopping.is_set():
        return 0
    database_url = resolve_postgres(settings, home, explicit["DATABASE_URL"], stack, say)
    if stopping.is_set():
        return 0
    jwks_path = settings.jwks_path
    if not jwks_path:
        jwks_path = str(tokens.load_or_create(home).jwks_path)
    elif not Path(jwks_path).is_file():
        raise StartError(f"JWKS_PATH={jwks_path} does not exist: point it at the issuer's JWKS")
    settings, stack.jwks_server = edge_run.secure(settings, home)
    settings = settings.replace(
        nearby_home=str(home),
        redis_url=redis_url,
        database_url=database_url,
        friend_addr=f"{loopback}:{settings.friend_port}",
        location_addr=f"{loopback}:{settings.location_port}",
        presence_addr=f"{loopback}:{settings.presence_port}",
        jwks_path=jwks_path,
    )

    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    say(f"starting friend, location, presence and {replicas} fan-out replica(s)")
    for name, port, _ in services:
        log_path = logs / f"{name.replace('#', '-')}.log"
        log_path.unlink(missing_ok=True)
        spec = procs.SERVICES[name.split("#")[0]]
        stack.children.append(
            procs.spawn(
                name,
                spec,
                settings,
                port,
                port + 1000,
                log_path=log_path,
                die_with_parent=True,
                cwd=paths.checkout(),
            )
        )
    try:
        procs.wait_healthy(stack.children, timeout=90, cancelled=stopping.is_set)
        if stopping.is_set():
            return 0
    except procs.ChildFailed as exc:
        if stopping.is_set():
            return 0
        raise StartError(f"{exc} (log: {exc.child.log_path})") from exc
    if settings.dev_mode:
        try:
            server = devtoken.DevTokenServer(tokens.load_or_create(home), settings)
        except OSError as exc:
            raise StartError(
                f"the dev login cannot listen on 127.0.0.1:{settings.dev_token_port} ({exc}): "
                "set DEV_TOKEN_PORT"
            ) from exc
        stack.dev_token = server.start()
        try:
            stack.map_page = mappage.MapPageServer(settings).start()
        except OSError as exc:
            raise StartError(
                f"the map page cannot listen on 127.0.0.1:{settings.map_port} ({exc}): set MAP_PORT"
            ) from exc

    cfg = envoy_config.from_settings(
        settings,
        fanout=[c.addr for c in stack.children if c.spec.module == "fanout_svc"],
        listen_host=listen,
    )
    config_path = envoy_config.write(cfg, home / "envoy.yaml")
    (logs / "envoy.log").unlink(missing_ok=True)
    say(f"starting Envoy ({config_path})")
    stack.envoy = Envoy(
        config_path, settings.envoy_admin_port, logs / "envoy.log", die_with_parent=True
    ).start()
    deadline = time.monotonic() + 30
    try:
        while not stack.envoy.ready_once():
            if stopping.is_set():
                return 0
            if time.monotonic() > deadline:
                raise TimeoutError("Envoy was not ready within 30 s")
            time.sleep(0.05)
    except (RuntimeError, TimeoutError) as exc:
        raise StartError(f"{exc} (log: {logs / 'envoy.log'})") from exc
    if prometheus_port is not None:
        start_prometheus(stack, settings, home, prometheus_port, say)
    print(banner(settings, stack, listen, home, redis_url), flush=True)

    stack.supervisor = Supervisor(say)
    for child in stack.children:
        stack.supervisor.watch(child.name, child, child.log_path)
    stack.supervisor.watch("Envoy", stack.envoy, logs / "envoy.log")
    while not stopping.wait(0.2):
        stack.supervisor.poll(stopping.is_set)
    say("stopping (signal)")
    return 0
