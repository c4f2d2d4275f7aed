"""Chaos: the stores fail under load, and the mesh run by `nearby run` rides it out.

One real `nearby run` (supervising launcher, real Envoy, one fan-out replica)
runs on a Postgres and a Redis of this module alone (`AofRedis`: append-only
file on, restartable), and every scenario injects its fault for real:

1. Postgres stopped for `PG_DOWN_S` under a steady load of reports through
   Envoy: every accepted report is in the history exactly once; friend and
   history RPCs answer UNAVAILABLE within `FAIL_WITHIN_S` while it is down
   and work again within `BACK_WITHIN_S` of its return.
2. location_svc SIGKILLed under that load while its history writer holds
   entries: the launcher restarts it; every accepted report is in the
   history exactly once; the dead writer's pending entries are replayed
   (reclaimed after HISTORY_CLAIM_IDLE_S) and the history lag metric is
   back to the live traffic's.
3. Redis restarted (SIGTERM, AOF flushed) under `STREAMS` SDK sessions, and
   loading its AOF for a few seconds: unary calls answer UNAVAILABLE during
   the outage and the loading; no stream ends; every stream gets a fresh
   snapshot within `RESYNC_WITHIN_S` of Redis answering PING again, and sees
   the next move.

Sizes: `make test` runs short versions; `make chaos` the full ones
(NEARBY_CHAOS_PG_DOWN_S=30, NEARBY_CHAOS_STREAMS=100). Figures are printed
(-s) and recorded in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import timestamp_pb2
from nearby import FriendMoved, NearbyClient, Reconnecting, Snapshot
from nearby.v1 import friend_service_pb2 as fpb
from nearby.v1 import friend_service_pb2_grpc, geo_pb2, location_service_pb2_grpc
from nearby.v1 import location_service_pb2 as lpb

from fanout_svc.subscriber import RedisSubscriber
from mesh.internal.v1 import events_pb2
from mesh.internal.v1 import location_ingest_service_pb2 as li
from mesh.internal.v1 import location_ingest_service_pb2_grpc as li_grpc
from mesh.settings import Settings
from stack import infra, tokens
from tests.support.aof_redis import AofRedis
from tests.support.chaos import HOME, Watcher, befriend, create_users, east, until
from tests.support.fanout import location as first_location
from tests.support.frozen import FrozenClient
from tests.support.nearby_run import (
    children,
    free_block,
    kill_tree,
    pid_on_port,
    run,
    run_env,
    stack_args,
)

PG_DOWN_S = float(os.environ.get("NEARBY_CHAOS_PG_DOWN_S", "3"))
STREAMS = int(os.environ.get("NEARBY_CHAOS_STREAMS", "30"))
FAIL_WITHIN_S = 2.0
"""A friend or history call answers UNAVAILABLE this fast while Postgres is down."""
BACK_WITHIN_S = 5.0
"""... and works again this soon after Postgres accepts connections again."""
RESYNC_WITHIN_S = 10.0
"""Every stream has a fresh snapshot this soon after Redis answers PING again."""
CLAIM_IDLE_S = 3.0
FILLER_KEYS = 20_000  # at 50 µs each: Redis loads for a few seconds after its restart
REPORTERS = 10
FROZEN = int(os.environ.get("NEARBY_CHAOS_FROZEN", "10"))
MOVERS = 10
ROUND_S = 0.025
STALL_S = 2.0
FROZEN_END_S = 60.0
"""The fan-out ends every frozen stream this soon after it connected: the time
to fill the edge's buffers at this push rate, FANOUT_STALL_S, the watchdog's tick."""
IDLE_S = 6.0
"""STREAM_IDLE_TIMEOUT_S of this stack: Envoy resets a frozen client's stream
(whose end it cannot deliver: the client's window is full) this long after
the last byte moved on it (HEARTBEAT_S is 2 s so that live streams are never
idle that long)."""
PER_STREAM_MIB = 0.5
SLACK_MIB = 24.0
"""Envoy's and the fan-out's RSS grow by less than PER_STREAM_MIB per frozen
stream plus SLACK_MIB (allocator noise) while the frozen clients are there."""

pytestmark = pytest.mark.timeout(900)


@dataclass
class Stack:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    out: Path
    pg: infra.PostgresServer
    redis: AofRedis
    database_url: str
    channel: grpc.aio.Channel = field(init=False)
    sign: Callable[..., str] = field(init=False)
    _internal: grpc.aio.Channel | None = None

    def __post_init__(self) -> None:
        self.port = int(self.env["CHAOS_ENVOY_PORT"])
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        settings = Settings()
        key = tokens.load_or_create(Path(self.env["NEARBY_HOME"]))
        self.sign = lambda user, admin=False: key.sign(
            user, issuer=settings.jwt_issuer, audience=settings.jwt_audience, admin=admin
        )

    def auth(self, user: str, admin: bool = False) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.sign(user, admin)}"),)

    def said(self, line: str) -> bool:
        return line in self.out.read_text()

    def metric(self, service_port: int, name: str) -> float:
        url = f"http://127.0.0.1:{service_port + 1000}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        raise LookupError(name)

    @property
    def internal(self) -> grpc.aio.Channel:
        """A channel straight to location_svc (its internal ingest service)."""
        if self._internal is None:
            self._internal = grpc.aio.insecure_channel(f"127.0.0.1:{self.location_port}")
        return self._internal

    def stalled(self) -> float:
        """Streams the fan-out replica ended because their writes stalled."""
        url = f"http://127.0.0.1:{int(self.env['FANOUT_PORT']) + 1000}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith('nearby_fanout_fell_behind_total{why="stalled"}'):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    @property
    def location_port(self) -> int:
        return int(self.env["LOCATION_PORT"])

    async def users(self, names: list[str], friend_of: str | None = None) -> None:
        await create_users(self.channel, self.auth, names, friend_of)

    async def report(self, user: str, meters: float, at_ms: int | None = None) -> Any:
        lat, lng = east(meters)
        req = lpb.ReportLocationRequest(position=geo_pb2.LatLng(latitude=lat, longitude=lng))
        if at_ms is not None:
            req.recorded_at.CopyFrom(timestamp_pb2.Timestamp(seconds=at_ms // 1000))
            req.recorded_at.nanos = (at_ms % 1000) * 1_000_000
        return await location_service_pb2_grpc.LocationServiceStub(self.channel).ReportLocation(
            req, metadata=self.auth(user), timeout=10
        )

    async def history_keys(self, prefix: str) -> list[tuple[str, int]]:
        async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
            cur = await conn.execute(
                "SELECT user_id, (extract(epoch FROM recorded_at) * 1000)::bigint "
                "FROM location_history WHERE user_id LIKE %s",
                (prefix + "%",),
            )
            return [(u, int(t)) for u, t in await cur.fetchall()]


def _tmp_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="nearby-chaos-"))
    os.chmod(root, 0o755)  # the private Postgres may run as the postgres user
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def chaos_root() -> Iterator[Path]:
    yield from _tmp_root()


@pytest.fixture(scope="module")
async def stack(chaos_root: Path) -> AsyncIterator[Stack]:
    pg = infra.PostgresServer(chaos_root / "pg", fast=True).start()
    redis = AofRedis(chaos_root / "redis").start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        infra.create_database(pg.url, "nearby")
        database_url = infra.database_url(pg.url, "nearby")
        env = run_env(redis.url, database_url, chaos_root / "home", fanout_replicas=1)
        port, admin = free_block(1), free_block(1)
        env.update(
            CHAOS_ENVOY_PORT=str(port),
            MIN_REPORT_INTERVAL_S="0",
            HISTORY_CLAIM_IDLE_S=str(CLAIM_IDLE_S),
            POSTGRES_WAIT_S="1",
            FANOUT_STALL_S=str(STALL_S),
            STREAM_IDLE_TIMEOUT_S=str(IDLE_S),
            HEARTBEAT_S="2",
            LOG_LEVEL="WARNING",
        )
        out = chaos_root / "out.txt"
        proc = run(stack_args(port, admin, 1), env, out)
        await until("nearby run is up", lambda: "nearby is running" in out.read_text(), 180)
        s = Stack(proc, env, out, pg, redis, database_url)
        await s.users(["ops"])
        yield s
        await s.channel.close()
        if s._internal is not None:
            await s._internal.close()
        # killed, not stopped: the graceful stop is tested elsewhere
        # (test_edge_run.py), and it takes seconds
    finally:
        if proc is not None:
            kill_tree(proc)
        redis.stop()
        pg.stop()


class Load:
    """`REPORTERS` users reporting through Envoy, each one report at a time
    with its own increasing recorded_at: what was accepted, what was tried."""

    def __init__(self, stack: Stack, prefix: str) -> None:
        self.stack = stack
        self.users = [f"{prefix}{i:02d}" for i in range(REPORTERS)]
        self.accepted: set[tuple[str, int]] = set()
        self.tried: set[tuple[str, int]] = set()
        self.failures: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.stack.users(self.users)
        self._tasks = [asyncio.create_task(self._run(u)) for u in self.users]

    async def _run(self, user: str) -> None:
        last = 0
        step = 0
        while True:
            at = max(int(time.time() * 1000) - 50, last + 1)
            last = at
            step += 1
            self.tried.add((user, at))
            try:
                res = await self.stack.report(user, 100 + step % 500, at)
            except grpc.aio.AioRpcError as exc:
                self.failures[exc.code().name] = self.failures.get(exc.code().name, 0) + 1
                await asyncio.sleep(0.1)
                continue
            if res.disposition == lpb.REPORT_DISPOSITION_ACCEPTED:
                self.accepted.add((user, at))
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def all_in_history(self, within_s: float) -> list[tuple[str, int]]:
        """Waits until every accepted report is in the history; returns the rows.
        Asserts no row is duplicated and none is one that was never sent."""
        deadline = time.monotonic() + within_s
        while True:
            rows = await self.stack.history_keys(self.users[0][:-2])
            if self.accepted <= set(rows):
                break
            missing = len(self.accepted - set(rows))
            assert time.monotonic() < deadline, f"{missing} accepted reports not in history"
            await asyncio.sleep(0.2)
        assert len(rows) == len(set(rows)), "a history row is duplicated"
        assert set(rows) <= self.tried, "a history row no one reported"
        return rows


async def elapsed_error(call: Callable[[], Awaitable[Any]]) -> tuple[float, grpc.StatusCode]:
    started = time.monotonic()
    try:
        await call()
    except grpc.aio.AioRpcError as exc:
        return time.monotonic() - started, exc.code()
    return time.monotonic() - started, grpc.StatusCode.OK


async def test_postgres_outage_under_load(stack: Stack) -> None:
    load = Load(stack, "pg")
    await load.start()
    friends = friend_service_pb2_grpc.FriendServiceStub(stack.channel)
    locations = location_service_pb2_grpc.LocationServiceStub(stack.channel)
    user = load.users[0]

    def list_friends() -> Awaitable[Any]:
        return friends.ListFriends(fpb.ListFriendsRequest(), metadata=stack.auth(user), timeout=10)

    def history() -> Awaitable[Any]:
        return locations.ListLocationHistory(
            lpb.ListLocationHistoryRequest(), metadata=stack.auth(user), timeout=10
        )

    try:
        await until("reports are accepted", lambda: len(load.accepted) >= 20, 30)
        await list_friends()
        await history()
        await asyncio.to_thread(stack.pg.stop)
        down_at = time.monotonic()
        during: list[float] = []
        accepted_before = len(load.accepted)
        while time.monotonic() - down_at < PG_DOWN_S:
            for call in (list_friends, history):
                took, code = await elapsed_error(call)
                assert code == grpc.StatusCode.UNAVAILABLE, f"{code.name} while Postgres is down"
                assert took < FAIL_WITHIN_S, f"UNAVAILABLE after {took:.2f} s"
                during.append(took)
            await asyncio.sleep(0.3)
        accepted_during = len(load.accepted) - accepted_before
        await asyncio.to_thread(stack.pg.start)
        back_at = time.monotonic()
        recovery: list[float] = []
        for call in (list_friends, history):
            while True:
                took, code = await elapsed_error(call)
                if code == grpc.StatusCode.OK:
                    break
                assert code == grpc.StatusCode.UNAVAILABLE, code.name
                assert time.monotonic() - back_at < BACK_WITHIN_S, "still failing"
                await asyncio.sleep(0.1)
            recovery.append(time.monotonic() - back_at)
        await asyncio.sleep(2.0)  # the load goes on after the outage
    finally:
        await load.stop()
    assert accepted_during > 0, "reports must keep succeeding while Postgres is down"
    rows = await load.all_in_history(60)
    print(
        f"\nPostgres down {PG_DOWN_S:g} s: {len(load.accepted)} reports accepted "
        f"({accepted_during} during the outage), {len(rows)} history rows, 0 lost, 0 duplicated; "
        f"friend/history calls UNAVAILABLE in p50 {statistics.median(during):.3f} s, "
        f"max {max(during):.3f} s; working again {max(recovery):.2f} s after Postgres was back; "
        f"report failures {load.failures}"
    )


def writer_of(pid: int, consumers: list[dict[str, Any]]) -> dict[str, Any] | None:
    wanted = f"{os.uname().nodename}-{pid}-".encode()
    return next((c for c in consumers if c["name"].startswith(wanted)), None)


async def pending_of(stack: Stack, pid: int) -> int:
    from mesh import keys

    total = 0
    with stack.redis.client() as r:
        for stream in keys.history_streams():
            consumers: Any = r.xinfo_consumers(stream, keys.HISTORY_GROUP)
            c = writer_of(pid, consumers)
            total += int(c["pending"]) if c else 0
    return total


async def test_location_svc_killed_under_load(stack: Stack) -> None:
    load = Load(stack, "lk")
    await load.start()
    try:
        await until("reports are accepted", lambda: len(load.accepted) >= 20, 30)
        pid = await asyncio.to_thread(pid_on_port, stack.proc.pid, stack.location_port)
        reclaimed_before = 0.0
        # kill it while its writer holds entries (read, not acknowledged)
        deadline = time.monotonic() + 30
        while not await pending_of(stack, pid):
            assert time.monotonic() < deadline, "the writer never held entries"
            await asyncio.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        held = await pending_of(stack, pid)
        assert held > 0
        await until(
            "the launcher restarts location_svc",
            lambda: (
                stack.said("nearby: location_svc was killed by signal 9; restarting")
                and stack.said("nearby: location_svc is serving again")
            ),
            60,
        )
        serving_after = time.monotonic() - killed_at
        accepted_at_restart = len(load.accepted)
        await until(
            "reports are accepted again", lambda: len(load.accepted) > accepted_at_restart, 30
        )

        async def replayed() -> bool:
            return not await pending_of(stack, pid)

        deadline = time.monotonic() + CLAIM_IDLE_S + 30
        while not await replayed():
            assert time.monotonic() < deadline, "the dead writer's entries were not replayed"
            await asyncio.sleep(0.1)
        replay_after = time.monotonic() - killed_at
        # the claim moves them in Redis first; the new process counts them
        # when its reply arrives
        await until(
            f"the new location_svc counts the {held} entries it reclaimed",
            lambda: (
                stack.metric(stack.location_port, "location_history_reclaimed_total")
                >= reclaimed_before + held
            ),
            10,
        )

        def lag() -> float:
            return stack.metric(stack.location_port, "location_history_lag_seconds")

        await until("the history lag is the live traffic's", lambda: lag() < 3.0, 10)
        await asyncio.sleep(1.0)
    finally:
        await load.stop()
    rows = await load.all_in_history(60)
    print(
        f"\nlocation_svc SIGKILL: serving again {serving_after:.2f} s after the kill; its "
        f"writer held {held} entries, replayed {replay_after:.2f} s after the kill "
        f"(HISTORY_CLAIM_IDLE_S={CLAIM_IDLE_S:g}); {len(load.accepted)} accepted, "
        f"{len(rows)} rows, 0 lost, 0 duplicated; report failures {load.failures}"
    )


async def test_redis_restart_with_aof_under_streams(stack: Stack) -> None:
    await asyncio.to_thread(stack.redis.fill, FILLER_KEYS)
    mover = "rmover"
    viewers = [f"rv{i:03d}" for i in range(STREAMS)]
    await stack.users([mover])
    await stack.users(viewers, friend_of=mover)
    await stack.report(mover, 1000)
    clients = [
        NearbyClient(
            f"127.0.0.1:{stack.port}", secure=False, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(4)
    ]
    watchers = [Watcher(clients[i % len(clients)], u, stack.sign(u)) for i, u in enumerate(viewers)]
    try:
        await until(
            "every stream has its snapshot with the friend",
            lambda: all(w.saw_friend_at(1000) for w in watchers),
            60,
        )
        fault_at = time.monotonic()
        await asyncio.to_thread(stack.redis.stop)
        took, code = await elapsed_error(lambda: stack.report(mover, 1100))
        assert code == grpc.StatusCode.UNAVAILABLE, code.name
        down_calls = [took]
        await asyncio.to_thread(stack.redis.start)
        ready = asyncio.create_task(asyncio.to_thread(stack.redis.wait_ready))
        loading_calls: list[float] = []
        while not ready.done():
            took, code = await elapsed_error(lambda: stack.report(mover, 1100))
            if code == grpc.StatusCode.OK:
                break  # it just finished loading
            assert code == grpc.StatusCode.UNAVAILABLE, code.name
            loading_calls.append(took)
        ready_at = await ready
        assert loading_calls, "Redis did not load long enough to be tested while loading"

        def fresh(w: Watcher) -> float | None:
            return next(
                (at for at, e in w.events if at >= fault_at and isinstance(e, Snapshot)), None
            )

        await until(
            "every stream has a fresh snapshot",
            lambda: all(fresh(w) for w in watchers),
            RESYNC_WITHIN_S + (ready_at - fault_at),
        )
        delays = [(fresh(w) or 0.0) - ready_at for w in watchers]
        assert max(delays) < RESYNC_WITHIN_S
        ended = [
            w.user
            for w in watchers
            if any(at >= fault_at and isinstance(e, Reconnecting) for at, e in w.events)
        ]
        assert not ended, f"streams ended: {ended}"
        for w in watchers:
            assert not w.task.done(), f"session of {w.user} ended: {w.task!r}"
        await stack.report(mover, 700)
        await until(
            "every stream sees the next move",
            lambda: all(w.saw_friend_at(700) for w in watchers),
            30,
        )
    finally:
        for w in watchers:
            w.task.cancel()
        await asyncio.gather(*(w.task for w in watchers), return_exceptions=True)
        for c in clients:
            await c.close()
    print(
        f"\nRedis restart with AOF under {STREAMS} streams: loading took "
        f"{ready_at - fault_at:.2f} s from the stop; calls while down/loading UNAVAILABLE in max "
        f"{max(down_calls + loading_calls):.2f} s ({len(loading_calls)} during the loading); "
        f"fresh snapshot after Redis was ready: p50 {statistics.median(delays):.2f} s, "
        f"max {max(delays):.2f} s; 0 streams ended"
    )


async def test_the_hub_subscribes_only_once_redis_has_loaded(stack: Stack) -> None:
    """The pub/sub connection a hub opens to a Redis that is loading its AOF
    (SUBSCRIBE would be accepted already) is handed over only once PING
    answers PONG, so the resync that follows finds the cached locations."""
    await asyncio.to_thread(stack.redis.stop)
    await asyncio.to_thread(stack.redis.start)
    assert not await asyncio.to_thread(stack.redis.ready), "no loading to wait for"
    sub = RedisSubscriber(stack.redis.url)

    async def connect() -> float:
        await sub.connect(lambda c, d: None, lambda c: None, lambda e: None)
        return time.monotonic()

    connecting = asyncio.create_task(connect())

    def last_loading() -> float:
        """When PING last answered LOADING (polling until it answers PONG)."""
        seen = time.monotonic()
        while not stack.redis.ready():
            seen = time.monotonic()
            time.sleep(0.01)
        return seen

    loading_until = await asyncio.to_thread(last_loading)
    connected_at = await asyncio.wait_for(connecting, 30)
    sub.close()
    assert connected_at > loading_until, "connected while Redis was still loading"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(pid)


def envoy_pid(launcher: int) -> int:
    return next(
        p
        for p in children(launcher)
        if b"envoy" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]
    )


async def test_frozen_clients_through_envoy(stack: Stack) -> None:
    """`FROZEN` raw HTTP/2 clients that never grant flow-control credit, each
    a friend of `MOVERS` users who move every `ROUND_S`, next to one healthy
    SDK session friend of the same movers: each frozen stream is ended by the
    fan-out's stall watchdog (FANOUT_STALL_S) once the edge's buffers are
    full, Envoy's and the fan-out's memory stay bounded, and the healthy
    session keeps getting every move."""
    movers = [f"fm{i:02d}-" + "n" * 56 for i in range(MOVERS)]  # 61 characters: long updates
    frozen_users = [f"fz{i:03d}" for i in range(FROZEN)]
    healthy = "fhealthy"
    await stack.users([*movers, *frozen_users, healthy])
    # each frozen user and the healthy one: a friend of every mover
    await befriend(
        stack.channel, stack.auth, [(u, m) for u in [*frozen_users, healthy] for m in movers]
    )
    location = li_grpc.LocationIngestServiceStub(stack.internal)
    rounds: list[float] = []

    async def move_all() -> None:
        r = len(rounds)
        lat, lng = east(1000 + 2 * r)
        now = int(time.time() * 1000)
        rounds.append(time.monotonic())
        await location.ReportLocations(
            li.ReportLocationsRequest(
                reports=[
                    li.LocationReport(
                        user_id=m,
                        fix=events_pb2.PositionFix(latitude=lat, longitude=lng, recorded_at_ms=now),
                    )
                    for m in movers
                ]
            ),
            timeout=10,
        )

    client = NearbyClient(f"127.0.0.1:{stack.port}", secure=False)
    watcher = Watcher(client, healthy, stack.sign(healthy))
    fanout_port = int(stack.env["FANOUT_PORT"])
    fanout = await asyncio.to_thread(pid_on_port, stack.proc.pid, fanout_port)
    envoy = await asyncio.to_thread(envoy_pid, stack.proc.pid)
    frozen = [FrozenClient(stack.port, stack.sign(u), first_location(*HOME)) for u in frozen_users]
    try:
        await move_all()
        await until("the healthy session has its snapshot", lambda: watcher.saw_friend_at(1000), 30)
        for _ in range(20):
            await move_all()
            await asyncio.sleep(ROUND_S)
        before_rounds = len(rounds)
        rss_before = (rss_mib(envoy), rss_mib(fanout))
        stalled_before = await asyncio.to_thread(stack.stalled)
        for f in frozen:
            await f.open()
        opened_at = time.monotonic()
        peak = list(rss_before)

        async def flood_until(what: str, done: Callable[[], bool], within_s: float) -> float:
            deadline = time.monotonic() + within_s
            while not done():
                assert time.monotonic() < deadline, f"not within {within_s:g} s: {what}"
                await move_all()
                peak[:] = [max(peak[0], rss_mib(envoy)), max(peak[1], rss_mib(fanout))]
                await asyncio.sleep(ROUND_S)
            return time.monotonic()

        fanout_done = await flood_until(
            "the fan-out ends every frozen stream",
            lambda: stack.stalled() - stalled_before >= FROZEN,
            FROZEN_END_S,
        )
        edge_done = await flood_until(
            "Envoy ends every frozen client's stream",
            lambda: all(f.ended_at is not None for f in frozen),
            IDLE_S + 10,
        )
        during_rounds = len(rounds)
        ended = sorted((f.ended_at or 0.0) - fanout_done for f in frozen)
        hows = {f.how for f in frozen}
        for _ in range(5):
            await move_all()
            await asyncio.sleep(ROUND_S)
        await until(
            "the healthy session sees the last move",
            lambda: watcher.saw_friend_at(1000 + 2 * (len(rounds) - 1)),
            10,
        )
        assert not watcher.task.done(), "the healthy session ended"
        lat_before = latencies(watcher, rounds, 1, before_rounds)
        lat_during = latencies(watcher, rounds, before_rounds, during_rounds)
    finally:
        for f in frozen:
            await f.close()
        watcher.task.cancel()
        await asyncio.gather(watcher.task, return_exceptions=True)
        await client.close()
    await asyncio.sleep(2.0)
    rss_after = (rss_mib(envoy), rss_mib(fanout))
    growth = (peak[0] - rss_before[0], peak[1] - rss_before[1])
    assert growth[0] < FROZEN * PER_STREAM_MIB + SLACK_MIB, f"Envoy grew {growth[0]:.1f} MiB"
    assert growth[1] < FROZEN * PER_STREAM_MIB + SLACK_MIB, f"the fan-out grew {growth[1]:.1f} MiB"
    assert statistics.median(lat_during) < 1.0, "the healthy session's moves came late"
    print(
        f"\n{FROZEN} frozen HTTP/2 clients through Envoy ({MOVERS} movers every {ROUND_S:g} s): "
        f"the fan-out ended all {fanout_done - opened_at:.1f} s after they connected "
        f"(FANOUT_STALL_S {STALL_S:g}), Envoy their streams ({', '.join(sorted(hows))}) "
        f"{edge_done - fanout_done:.1f} s after that (STREAM_IDLE_TIMEOUT_S {IDLE_S:g}; "
        f"per client p50 {statistics.median(ended):.1f} s); received per client "
        f"max {max(f.received for f in frozen)} bytes; "
        f"RSS Envoy {rss_before[0]:.0f} -> peak {peak[0]:.0f} -> {rss_after[0]:.0f} MiB, "
        f"fan-out {rss_before[1]:.0f} -> peak {peak[1]:.0f} -> {rss_after[1]:.0f} MiB; "
        f"healthy session push latency p50 {statistics.median(lat_before) * 1000:.0f} ms before, "
        f"{statistics.median(lat_during) * 1000:.0f} ms during"
    )


def latencies(w: Watcher, rounds: list[float], first: int, last: int) -> list[float]:
    """From each round's send to the healthy session's FriendMoved at its distance."""
    out = []
    for r in range(first, last):
        meters = 1000 + 2 * r
        at = next(
            (
                t
                for t, e in w.events
                if t >= rounds[r]
                and isinstance(e, FriendMoved)
                and abs(e.friend.distance_meters - meters) < 0.5
            ),
            None,
        )
        if at is not None:
            out.append(at - rounds[r])
    assert out, "the healthy session saw none of these moves"
    return out
