"""Private Redis, Redis Cluster and Postgres servers, for `make run` and the tests.

Each server gets its own free port and data folder so that runs never
collide; stop() ends it. The folder stays (a temporary one is removed by
whoever made it).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self, TypeVar

import psycopg

from stack.procs import dying_with_parent

log = logging.getLogger("stack.infra")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1", *, below: int | None = None) -> int:
    """A port that is free now, below the kernel's ephemeral range, and not
    handed out before by this process.

    A port from the ephemeral range (what binding port 0 gives) can be taken
    by any outgoing connection of this machine between the moment it is
    chosen and the moment a server binds it; with hundreds of connections to
    Postgres and Redis open, that happened (a service failing to start with
    "address already in use"). Outgoing connections never use ports below
    the ephemeral range. `below` lowers the ceiling further (a Redis Cluster
    node's bus port, +10000, must stay below the ephemeral range too).
    """
    high = min(_ephemeral_low() if below is None else below, 65536) - 1
    low = max(1024, high - 12000)
    for _ in range(500):
        port = random.randint(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:  # the low range is crowded: fall back to the kernel's pick
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(
    host: str,
    port: int,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    what: str = "process",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            kind = CrashedAtStart if proc.returncode < 0 else RuntimeError
            raise kind(f"{what} exited with code {proc.returncode} before listening")
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s")


class CrashedAtStart(RuntimeError):
    """A server process died by a signal before it listened."""


T = TypeVar("T")


def once_more_if_crashed(start: Callable[[], T], what: str) -> T:
    """Start a server; if it died by a signal (not an error exit) before it
    listened, start it once more. On a crowded machine redis-server and
    postgres were seen to die with SIGSEGV at start, rarely and without a
    log line; an error exit (a bad flag, a port taken) is not retried."""
    try:
        return start()
    except CrashedAtStart as exc:
        log.warning("%s crashed while starting (%s): starting it once more", what, exc)
        return start()


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; reaps the process."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def find_binary(name: str) -> str:
    """A binary from PATH or, for Postgres, from the versioned Debian folder."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    raise FileNotFoundError(
        f"`{name}` is not installed: install Redis/PostgreSQL, or point "
        "REDIS_URL/DATABASE_URL at running servers"
    )


class RedisServer:
    """A private redis-server (no persistence unless `config` says so) on its
    own port; `config` adds or overrides redis.conf directives."""

    DEFAULTS: dict[str, str] = {"save": "", "appendonly": "no"}

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        config: Mapping[str, str] | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.config = {**self.DEFAULTS, **(config or {})}
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        return once_more_if_crashed(self._start, "redis-server")

    def _start(self) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv, preexec = dying_with_parent(
            [
                find_binary("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                *(arg for name, value in self.config.items() for arg in (f"--{name}", value)),
                "--dir",
                str(self.data_dir),
                "--logfile",
                str(self.data_dir / "redis.log"),
            ]
        )
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # own process group: a terminal's Ctrl-C reaches only the owner,
            # which stops this server last (after the services using it)
            start_new_session=True,
            preexec_fn=preexec,
        )
        wait_port("127.0.0.1", self.port, self.start_timeout_s, self.proc, "redis-server")
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class PostgresServer:
    """A private PostgreSQL cluster (initdb on first start) on its own port.

    Postgres refuses to run as root; when we are root, the cluster is owned by
    and run as the `postgres` system user.
    """

    def __init__(self, data_dir: Path, port: int | None = None, *, fast: bool = False) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.fast = fast  # fsync off: for tests only
        self.proc: subprocess.Popen[bytes] | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _chown(self, path: Path) -> None:
        if self._user:
            pw = pwd.getpwnam(self._user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.data_dir)
        subprocess.run(
            [
                find_binary("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            user=self._user,
        )

    def start(self) -> PostgresServer:
        return once_more_if_crashed(self._start, "postgres")

    def _start(self) -> PostgresServer:
        self.init()
        args = [
            find_binary("postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.data_dir),
            "-c",
            "max_connections=200",
        ]
        if self.fast:
            args += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - owned by the process
        argv, preexec = dying_with_parent(args)
        self.proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=log,
            user=self._user,
            start_new_session=True,
            preexec_fn=preexec,
        )
        log.close()
        wait_port("127.0.0.1", self.port, 30, self.proc, "postgres")
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: abort transactions, disconnect clients)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def create_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn, contextlib.suppress(psycopg.Error):
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_url(base_url: str, name: str) -> str:
    """`base_url` with its database name replaced by `name`."""
    head, _, tail = base_url.rpartition("/")
    query = ""
    if "?" in tail:
        tail, query = tail.split("?", 1)
        query = "?" + query
    return f"{head}/{name}{query}"


class RedisCluster:
    """A private Redis Cluster: `masters` masters with `replicas` replicas each.

    Every node is a `redis-server --cluster-enabled yes` on its own port (its
    cluster bus on port + 10000) and data folder below `data_dir`, with the
    append-only file on so that a restarted node comes back with its data.
    Nodes can be killed, restarted and added, for failover and resharding
    tests; `stop()` ends them all.
    """

    def __init__(self, data_dir: Path, masters: int = 3, replicas: int = 1) -> None:
        self.data_dir = data_dir
        self.masters = masters
        self.replicas = replicas
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        #: ports of nodes that are part of the cluster, in the order they joined
        self._joined: list[int] = []

    @staticmethod
    def _ports(n: int, taken: set[int] | None = None) -> list[int]:
        """Free ports whose cluster bus port (+10000) is valid and free too."""
        taken = set(taken or ())
        ports: list[int] = []
        while len(ports) < n:
            # the bus port (+10000) must be below the ephemeral range as well:
            # an outgoing connection took one there between pick and bind
            p = free_port(below=_ephemeral_low() - 10000)
            bus_clash = p - 10000 in taken or p + 10000 in taken  # a bus port of ours
            if (
                p + 10000 < 65536
                and p not in taken
                and not bus_clash
                and not port_open("127.0.0.1", p + 10000)
            ):
                ports.append(p)
                taken.add(p)
                _HANDED_OUT.add(p + 10000)  # nobody else in this process gets our bus port
        return ports

    @property
    def ports(self) -> list[int]:
        return sorted(self.procs)

    @property
    def url(self) -> str:
        """A seed node's URL (any node leads a cluster client to all of them)."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def node_url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}"

    def _spawn(self, port: int) -> None:
        once_more_if_crashed(lambda: self._spawn_once(port), f"redis-server :{port}")

    def _spawn_once(self, port: int) -> None:
        d = self.data_dir / str(port)
        d.mkdir(parents=True, exist_ok=True)
        argv, preexec = dying_with_parent(
            [
                find_binary("redis-server"),
                *("--port", str(port), "--bind", "127.0.0.1"),
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", "1000"),
                # a replica may take over however long it was cut off (a
                # private cluster prefers availability; production may not)
                *("--cluster-replica-validity-factor", "0"),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"),
                *("--dir", str(d), "--logfile", str(d / "redis.log")),
            ]
        )
        self.procs[port] = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=preexec,
        )
        wait_port("127.0.0.1", port, 10, self.procs[port], f"redis-server :{port}")

    def cli(self, *args: str, port: int | None = None, timeout: float = 60) -> str:
        """Run redis-cli against a node (the first one by default); its stdout."""
        cmd = [find_binary("redis-cli")]
        if port is not None or args[:1] != ("--cluster",):
            cmd += ["-p", str(port or self.ports[0])]
        res = subprocess.run(
            [*cmd, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if res.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)} failed: {res.stderr or res.stdout}")
        return res.stdout

    def start(self, timeout: float = 60) -> RedisCluster:
        n = self.masters * (1 + self.replicas)
        for port in self._ports(n):
            self._spawn(port)
        if self.masters >= 3:
            self.cli(
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            )
        else:
            self._create_small(timeout)
        self._joined = self.ports
        self.wait_ok(timeout)
        return self

    def _create_small(self, timeout: float) -> None:
        """`redis-cli --cluster create` refuses fewer than 3 masters: give each
        master its share of the slots, introduce the nodes, attach replicas."""
        ports = self.ports
        masters, replicas = ports[: self.masters], ports[self.masters :]
        for i, port in enumerate(masters):
            lo, hi = 16384 * i // self.masters, 16384 * (i + 1) // self.masters - 1
            answer = self.cli("cluster", "addslotsrange", str(lo), str(hi), port=port).strip()
            if answer != "OK":  # redis-cli exits 0 on an error reply
                raise RuntimeError(f"CLUSTER ADDSLOTSRANGE on :{port} answered {answer}")
        for port in ports[1:]:
            self.cli("cluster", "meet", "127.0.0.1", str(port), port=ports[0])
        deadline = time.monotonic() + timeout
        for i, port in enumerate(replicas):
            master = masters[i % self.masters]
            master_id = self.cli("cluster", "myid", port=master).strip()
            while True:  # the replica must have heard of its master by gossip first
                answer = self.cli("cluster", "replicate", master_id, port=port).strip()
                if answer == "OK":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"CLUSTER REPLICATE on :{port} answered {answer}")
                time.sleep(0.1)

    def info(self, port: int) -> dict[str, str]:
        out = self.cli("cluster", "info", port=port)
        return dict(line.strip().split(":", 1) for line in out.splitlines() if ":" in line.strip())

    def nodes(self, port: int | None = None) -> list[dict[str, str]]:
        """CLUSTER NODES as seen by a live node that has joined (a node just
        started by `add_master` knows only itself): id, port, role, master_id, slots."""
        joined = self._joined or self.ports
        alive = [p for p in joined if self.procs[p].poll() is None]
        out = self.cli("cluster", "nodes", port=port or alive[0])
        nodes = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            flags = parts[2].split(",")
            nodes.append(
                {
                    "id": parts[0],
                    "port": parts[1].split("@")[0].rsplit(":", 1)[1],
                    "role": "master" if "master" in flags else "replica",
                    "failed": "yes" if ("fail" in flags or "fail?" in flags) else "no",
                    "master_id": parts[3],
                    "slots": " ".join(parts[8:]),
                }
            )
        return nodes

    def master_ports(self) -> list[int]:
        return sorted(
            int(n["port"])
            for n in self.nodes()
            if n["role"] == "master" and n["failed"] == "no" and n["slots"]
        )

    def wait_ok(self, timeout: float = 60) -> None:
        """Until every live node reports cluster_state:ok and agrees on the slots."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [p for p in self.ports if self.procs[p].poll() is None]
            try:
                if all(self.info(p).get("cluster_state") == "ok" for p in alive) and all(
                    self._replica_synced(p) for p in alive
                ):
                    self.cli("--cluster", "check", f"127.0.0.1:{alive[0]}")
                    return
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def _replica_synced(self, port: int) -> bool:
        """A master, or a replica whose link to a live master is up."""
        info = dict(
            line.strip().split(":", 1)
            for line in self.cli("info", "replication", port=port).splitlines()
            if ":" in line
        )
        if info.get("role") != "slave":
            return True
        master = int(info.get("master_port", "0"))
        if master in self.procs and self.procs[master].poll() is not None:
            return True  # its master is down: nothing to sync from
        return info.get("master_link_status") == "up"

    def flush(self) -> None:
        """FLUSHALL on every master (replicas follow)."""
        for port in self.master_ports():
            self.cli("flushall", port=port)

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash: no shutdown, no final save)."""
        proc = self.procs[port]
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again on its port and data folder."""
        self.kill(port)
        self._spawn(port)

    def replicas_of(self, master_port: int) -> list[int]:
        nodes = self.nodes()
        mid = next(n["id"] for n in nodes if n["port"] == str(master_port))
        return [int(n["port"]) for n in nodes if n["master_id"] == mid]

    def fail_master(self, port: int, timeout: float = 30) -> int:
        """SIGKILL a master and wait until one of its replicas took over its
        slots (the cluster is ok again); returns the new master's port."""
        replicas = self.replicas_of(port)
        if not replicas:
            raise RuntimeError(f"master :{port} has no replica to fail over to")
        self.kill(port)
        deadline = time.monotonic() + timeout
        while True:
            try:
                alive = [p for p in self.ports if self.procs[p].poll() is None]
                if all(self.info(p).get("cluster_state") == "ok" for p in alive):
                    for n in self.nodes():
                        if int(n["port"]) in replicas and n["role"] == "master" and n["slots"]:
                            return int(n["port"])
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica of :{port} took over within {timeout:.0f}s")
            time.sleep(0.1)

    def add_master(self) -> int:
        """Start one more node and join it as an empty master; its port."""
        (port,) = self._ports(1, set(self.procs))
        self._spawn(port)
        self.cli(
            "--cluster", "add-node", f"127.0.0.1:{port}", f"127.0.0.1:{self.master_ports()[0]}"
        )
        self._joined.append(port)
        self.wait_ok()
        return port

    def reshard(self, from_port: int, to_port: int, slots: int) -> None:
        """Move `slots` slots (with their keys) from one master to another, live."""
        ids = {n["port"]: n["id"] for n in self.nodes()}
        self.cli(
            "--cluster",
            "reshard",
            f"127.0.0.1:{from_port}",
            *("--cluster-from", ids[str(from_port)], "--cluster-to", ids[str(to_port)]),
            *("--cluster-slots", str(slots), "--cluster-yes"),
            timeout=120,
        )
        self.wait_ok()

    def rebalance(self) -> None:
        """Spread the slots evenly over every master, empty ones included."""
        self.cli(
            "--cluster",
            "rebalance",
            f"127.0.0.1:{self.master_ports()[0]}",
            "--cluster-use-empty-masters",
            "--cluster-yes",
            timeout=180,
        )
        self.wait_ok()

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process(proc, timeout=5)
